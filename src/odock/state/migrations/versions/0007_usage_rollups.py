"""Hourly and daily rollups of the usage ledger (the console's charts read them, never the raw ledger), filled
from the rows already stored so that existing history shows up at once; a partial index of the failed calls.

Revision ID: 0007_usage_rollups
Revises: 0006_mcp_servers
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_usage_rollups"
down_revision: str | None = "0006_mcp_servers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency_ms_sum",
)
LATENCY_BOUNDS_MS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 60000)
LATENCY_COLUMNS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
DIMENSIONS = {
    "organisation": "organisation_id",
    "team": "team_id",
    "user": "user_id",
    "key": "api_key_id",
    "model": "model",
}


def _sums(names: Sequence[str]) -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in names]


def upgrade() -> None:
    op.create_table(
        "usage_rollup_hourly",
        sa.Column("bucket", sa.String(13), nullable=False),
        sa.Column("organisation_id", sa.String(40), nullable=False),
        *_sums(SUMS + LATENCY_COLUMNS),
        sa.PrimaryKeyConstraint("bucket", "organisation_id", name="pk_usage_rollup_hourly"),
    )
    op.create_table(
        "usage_rollup_daily",
        sa.Column("dimension", sa.String(16), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("organisation_id", sa.String(40), nullable=False),
        *_sums(SUMS),
        sa.PrimaryKeyConstraint("dimension", "value", "day", "organisation_id", name="pk_usage_rollup_daily"),
    )
    # the request log's "failures only" filter walks this (a few percent of the ledger: little for the writer)
    op.create_index(
        "ix_usage_records_failed_created_at",
        "usage_records",
        ["created_at"],
        sqlite_where=sa.text("outcome <> 'success'"),
        postgresql_where=sa.text("outcome <> 'success'"),
    )
    _backfill()


def _backfill() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        hour = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"
        day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    else:
        hour = "strftime('%Y-%m-%dT%H', created_at)"
        day = "strftime('%Y-%m-%d', created_at)"
    sums = (
        "count(*), sum(CASE WHEN outcome = 'success' THEN 0 ELSE 1 END), sum(input_tokens), sum(output_tokens), "
        "sum(cached_input_tokens), sum(reasoning_tokens), sum(coalesce(cost_nanos, 0)), sum(latency_ms)"
    )
    lows = (0, *LATENCY_BOUNDS_MS)
    highs = (*LATENCY_BOUNDS_MS, None)
    histogram = ", ".join(
        f"sum(CASE WHEN latency_ms > {low} AND latency_ms <= {high} THEN 1 ELSE 0 END)"
        if high is not None and low
        else f"sum(CASE WHEN latency_ms <= {high} THEN 1 ELSE 0 END)"
        if high is not None
        else f"sum(CASE WHEN latency_ms > {low} THEN 1 ELSE 0 END)"
        for low, high in zip(lows, highs, strict=True)
    )
    op.execute(
        f"INSERT INTO usage_rollup_hourly (bucket, organisation_id, {', '.join(SUMS)}, "
        f"{', '.join(LATENCY_COLUMNS)}) SELECT {hour}, organisation_id, {sums}, {histogram} FROM usage_records "
        f"GROUP BY {hour}, organisation_id"
    )
    for dimension, column in DIMENSIONS.items():
        op.execute(
            f"INSERT INTO usage_rollup_daily (dimension, value, day, organisation_id, {', '.join(SUMS)}) "
            f"SELECT '{dimension}', {column}, {day}, organisation_id, {sums} FROM usage_records "
            f"WHERE {column} IS NOT NULL AND {column} <> '' GROUP BY {column}, {day}, organisation_id"
        )


def downgrade() -> None:
    op.drop_index("ix_usage_records_failed_created_at", "usage_records")
    op.drop_table("usage_rollup_daily")
    op.drop_table("usage_rollup_hourly")
