"""Governance: budgets, quotas, their durable windows, settled charges and threshold events.

Revision ID: 0002_governance
Revises: 0001_catalogue
Create Date: 2026-07-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from odock.state.schema import JsonType, UTCDateTime

revision: str = "0002_governance"
down_revision: str | None = "0001_catalogue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(40)


def _schedule() -> list[sa.Column[object]]:
    return [
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner_type", sa.String(16), nullable=False),
        sa.Column("owner_id", sa.String(64), nullable=False),
        sa.Column("organisation_id", sa.String(64), nullable=True),
    ]


def upgrade() -> None:
    """Create the governance tables."""
    op.create_table(
        "budgets",
        sa.Column("id", ID, nullable=False),
        *_schedule(),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=True),
        sa.Column("end_at", UTCDateTime(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("thresholds", JsonType, nullable=False),
        sa.Column("rollover", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
    )
    op.create_index("ix_budgets_owner", "budgets", ["owner_type", "owner_id"])
    op.create_table(
        "quotas",
        sa.Column("id", ID, nullable=False),
        *_schedule(),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=True),
        sa.Column("end_at", UTCDateTime(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("rollover", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quotas"),
    )
    op.create_index("ix_quotas_owner", "quotas", ["owner_type", "owner_id"])
    op.create_table(
        "governance_windows",
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("definition_id", ID, nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=False),
        sa.Column("end_at", UTCDateTime(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("window_key", name="pk_governance_windows"),
    )
    op.create_index("ix_governance_windows_definition", "governance_windows", ["definition_id", "start_at"])
    op.create_table(
        "governance_charges",
        sa.Column("reservation_id", sa.String(128), nullable=False),
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("reservation_id", "window_key", name="pk_governance_charges"),
    )
    op.create_table(
        "budget_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("budget_id", ID, nullable=False),
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("used_nanos", sa.BigInteger(), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_events"),
        sa.UniqueConstraint("window_key", "threshold", name="uq_budget_events_window_threshold"),
    )
    op.create_index("ix_budget_events_budget", "budget_events", ["budget_id", "created_at"])


def downgrade() -> None:
    """Drop the governance tables."""
    op.drop_index("ix_budget_events_budget", table_name="budget_events")
    op.drop_table("budget_events")
    op.drop_table("governance_charges")
    op.drop_index("ix_governance_windows_definition", table_name="governance_windows")
    op.drop_table("governance_windows")
    op.drop_index("ix_quotas_owner", table_name="quotas")
    op.drop_table("quotas")
    op.drop_index("ix_budgets_owner", table_name="budgets")
    op.drop_table("budgets")
