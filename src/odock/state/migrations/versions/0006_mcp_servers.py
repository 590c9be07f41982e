"""MCP servers and the keys' MCP grants (the MCP gateway, reference §11).

Revision ID: 0006_mcp_servers
Revises: 0005_budget_overspend_events
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from odock.state.schema import JsonType, UTCDateTime

revision: str = "0006_mcp_servers"
down_revision: str | None = "0005_budget_overspend_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(40)


def upgrade() -> None:
    """Create mcp_servers and key_mcp_grants."""
    op.create_table(
        "mcp_servers",
        sa.Column("id", ID, nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=True),
        sa.Column("api_key_id", ID, nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("endpoint_url", sa.String(2000), nullable=True),
        sa.Column("stdio_command", sa.String(2000), nullable=True),
        sa.Column("stdio_args", JsonType, nullable=False),
        sa.Column("stdio_env_encrypted", sa.Text(), nullable=True),
        sa.Column("auth_type", sa.String(16), nullable=False),
        sa.Column("auth_encrypted", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("allowed_tools", JsonType, nullable=False),
        sa.Column("blocked_tools", JsonType, nullable=False),
        sa.Column("semantic_filter", JsonType, nullable=False),
        sa.Column("pricing", JsonType, nullable=False),
        sa.Column("policies", JsonType, nullable=False),
        sa.Column("config", JsonType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name="fk_mcp_servers_organisation_id_organisations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_mcp_servers"),
        sa.UniqueConstraint("organisation_id", "slug", name="uq_mcp_servers_organisation_id_slug"),
    )
    op.create_table(
        "key_mcp_grants",
        sa.Column("api_key_id", ID, nullable=False),
        sa.Column("mcp_server_id", ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name="fk_key_mcp_grants_api_key_id_api_keys", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["mcp_server_id"],
            ["mcp_servers.id"],
            name="fk_key_mcp_grants_mcp_server_id_mcp_servers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "mcp_server_id", name="pk_key_mcp_grants"),
    )
    op.create_index("ix_key_mcp_grants_mcp_server_id", "key_mcp_grants", ["mcp_server_id"])


def downgrade() -> None:
    """Drop the MCP tables."""
    op.drop_index("ix_key_mcp_grants_mcp_server_id", table_name="key_mcp_grants")
    op.drop_table("key_mcp_grants")
    op.drop_table("mcp_servers")
