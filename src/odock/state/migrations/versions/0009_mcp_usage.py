"""The MCP usage records (reference §11.7): the MCP side of each MCP call's usage record (server, method, tool,
bytes in and out, latency, outcome, cost), one row per `usage_records` row of an MCP call, with the same id.

Revision ID: 0009_mcp_usage
Revises: 0008_rollup_ttft
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from odock.state.schema import JsonType, UTCDateTime

revision: str = "0009_mcp_usage"
down_revision: str | None = "0008_rollup_ttft"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(40)


def upgrade() -> None:
    """Create mcp_usage_records and its indexes."""
    op.create_table(
        "mcp_usage_records",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("organisation_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=True),
        sa.Column("user_id", ID, nullable=True),
        sa.Column("api_key_id", ID, nullable=False),
        sa.Column("mcp_server_id", ID, nullable=True),
        sa.Column("server", sa.String(200), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(200), nullable=True),
        sa.Column("tool_calls", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(500), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("upstream_status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        sa.Column("pricing", JsonType, nullable=True),
        sa.Column("metadata", JsonType, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mcp_usage_records"),
    )
    # ids are time-ordered: pages and time ranges walk the primary key or these (no created_at index to keep up)
    op.create_index("ix_mcp_usage_records_organisation_id_id", "mcp_usage_records", ["organisation_id", "id"])
    op.create_index("ix_mcp_usage_records_mcp_server_id_id", "mcp_usage_records", ["mcp_server_id", "id"])


def downgrade() -> None:
    """Drop mcp_usage_records."""
    op.drop_index("ix_mcp_usage_records_mcp_server_id_id", table_name="mcp_usage_records")
    op.drop_index("ix_mcp_usage_records_organisation_id_id", table_name="mcp_usage_records")
    op.drop_table("mcp_usage_records")
