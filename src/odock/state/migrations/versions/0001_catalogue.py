"""Catalogue and usage ledger: organisations, teams, users, keys, providers, models, grants, usage records.

Revision ID: 0001_catalogue
Revises:
Create Date: 2026-07-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from odock.state.schema import JsonType, UTCDateTime

revision: str = "0001_catalogue"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(40)


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    ]


def upgrade() -> None:
    """Create the catalogue tables and the single catalogue_version row."""
    op.create_table(
        "organisations",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("policies", JsonType, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_organisations"),
        sa.UniqueConstraint("name", name="uq_organisations_name"),
    )
    op.create_table(
        "teams",
        sa.Column("id", ID, nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("policies", JsonType, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_teams"),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            ondelete="CASCADE",
            name="fk_teams_organisation_id_organisations",
        ),
        sa.UniqueConstraint("organisation_id", "name", name="uq_teams_organisation_id_name"),
    )
    op.create_table(
        "users",
        sa.Column("id", ID, nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            ondelete="CASCADE",
            name="fk_users_organisation_id_organisations",
        ),
        sa.UniqueConstraint("organisation_id", "email", name="uq_users_organisation_id_email"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_preview", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=True),
        sa.Column("user_id", ID, nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revealed", sa.Boolean(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("policies", JsonType, nullable=False),
        sa.Column("rotation_count", sa.Integer(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            ondelete="CASCADE",
            name="fk_api_keys_organisation_id_organisations",
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_api_keys_team_id_teams"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.UniqueConstraint("organisation_id", "name", name="uq_api_keys_organisation_id_name"),
    )
    op.create_table(
        "key_rotations",
        sa.Column("id", ID, nullable=False),
        sa.Column("api_key_id", ID, nullable=False),
        sa.Column("rotated_at", UTCDateTime(), nullable=False),
        sa.Column("previous_preview", sa.String(64), nullable=False),
        sa.Column("previous_expires_at", UTCDateTime(), nullable=True),
        sa.Column("new_expires_at", UTCDateTime(), nullable=True),
        sa.Column("rotated_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_key_rotations"),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], ondelete="CASCADE", name="fk_key_rotations_api_key_id_api_keys"
        ),
    )
    op.create_index("ix_key_rotations_api_key_id", "key_rotations", ["api_key_id"])
    op.create_table(
        "providers",
        sa.Column("id", ID, nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("base_url", sa.String(2000), nullable=False),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column("api_key_preview", sa.String(32), nullable=True),
        sa.Column("timeout_ms", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("config", JsonType, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_providers"),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            ondelete="CASCADE",
            name="fk_providers_organisation_id_organisations",
        ),
        sa.UniqueConstraint("organisation_id", "name", name="uq_providers_organisation_id_name"),
    )
    op.create_table(
        "models",
        sa.Column("id", ID, nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slug", sa.String(300), nullable=False),
        sa.Column("provider_id", ID, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("capabilities", JsonType, nullable=False),
        sa.Column("pricing", JsonType, nullable=False),
        sa.Column("policies", JsonType, nullable=False),
        sa.Column("config", JsonType, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            ondelete="CASCADE",
            name="fk_models_organisation_id_organisations",
        ),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.id"], name="fk_models_provider_id_providers"),
        sa.UniqueConstraint("organisation_id", "name", name="uq_models_organisation_id_name"),
    )
    op.create_index("ix_models_provider_id", "models", ["provider_id"])
    op.create_table(
        "key_model_grants",
        sa.Column("api_key_id", ID, nullable=False),
        sa.Column("model_id", ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", "model_id", name="pk_key_model_grants"),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            ondelete="CASCADE",
            name="fk_key_model_grants_api_key_id_api_keys",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], ondelete="CASCADE", name="fk_key_model_grants_model_id_models"
        ),
    )
    op.create_index("ix_key_model_grants_model_id", "key_model_grants", ["model_id"])
    version = op.create_table(
        "catalogue_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalogue_version"),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=True),
        sa.Column("user_id", ID, nullable=True),
        sa.Column("api_key_id", ID, nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("model_slug", sa.String(300), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("provider_request_id", sa.String(300), nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        sa.Column("pricing", JsonType, nullable=True),
        sa.Column("raw_usage", JsonType, nullable=True),
        sa.Column("routing", JsonType, nullable=True),
        sa.Column("metadata", JsonType, nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_usage_records"),
    )
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])
    op.create_index(
        "ix_usage_records_organisation_id_created_at", "usage_records", ["organisation_id", "created_at"]
    )
    op.create_index("ix_usage_records_api_key_id_created_at", "usage_records", ["api_key_id", "created_at"])


def downgrade() -> None:
    """Drop everything this revision created."""
    for table in (
        "usage_records",
        "catalogue_version",
        "key_model_grants",
        "models",
        "providers",
        "key_rotations",
        "api_keys",
        "users",
        "teams",
        "organisations",
    ):
        op.drop_table(table)
