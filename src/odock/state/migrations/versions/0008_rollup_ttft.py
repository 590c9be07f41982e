"""Time to first token in the usage rollups: a count and a sum on the hourly and daily rows (a mean per hour, day,
key, model…) and a histogram on the hourly rows (p50/p95 on the overview), filled from the stored ledger rows'
`metadata.ttft_ms` so that existing history shows up at once.

Revision ID: 0008_rollup_ttft
Revises: 0007_usage_rollups
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_rollup_ttft"
down_revision: str | None = "0007_usage_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUMS = ("ttft_count", "ttft_ms_sum")
TTFT_BOUNDS_MS = (25, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000)
TTFT_COLUMNS = tuple(f"ttft_{i:02d}" for i in range(len(TTFT_BOUNDS_MS) + 1))
DIMENSIONS = {
    "organisation": "organisation_id",
    "team": "team_id",
    "user": "user_id",
    "key": "api_key_id",
    "model": "model",
}


def _column(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("usage_rollup_hourly") as batch:
        for name in SUMS + TTFT_COLUMNS:
            batch.add_column(_column(name))
    with op.batch_alter_table("usage_rollup_daily") as batch:
        for name in SUMS:
            batch.add_column(_column(name))
    _backfill()


def _backfill() -> None:
    """Add the stored records' TTFT to the rollup rows 0007 made from them (every such row exists already)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        hour = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"
        day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        ttft = "(CASE WHEN jsonb_typeof(metadata->'ttft_ms') = 'number' THEN (metadata->>'ttft_ms')::numeric END)"
    else:
        hour = "strftime('%Y-%m-%dT%H', created_at)"
        day = "strftime('%Y-%m-%d', created_at)"
        ttft = "(CASE WHEN json_type(metadata, '$.ttft_ms') = 'integer' THEN json_extract(metadata, '$.ttft_ms') END)"
    # the ledger rows with a TTFT, read once per target (a migration-time scan, as 0007's backfill)
    source = f"(SELECT created_at, {', '.join(DIMENSIONS.values())}, {ttft} AS t FROM usage_records) s"
    sums = "count(t) AS ttft_count, coalesce(sum(t), 0) AS ttft_ms_sum"
    lows = (0, *TTFT_BOUNDS_MS)
    highs = (*TTFT_BOUNDS_MS, None)
    histogram = ", ".join(
        f"sum(CASE WHEN t > {low} AND t <= {high} THEN 1 ELSE 0 END) AS {name}"
        if high is not None and low
        else f"sum(CASE WHEN t <= {high} THEN 1 ELSE 0 END) AS {name}"
        if high is not None
        else f"sum(CASE WHEN t > {low} THEN 1 ELSE 0 END) AS {name}"
        for low, high, name in zip(lows, highs, TTFT_COLUMNS, strict=True)
    )
    columns = SUMS + TTFT_COLUMNS
    op.execute(
        f"UPDATE usage_rollup_hourly SET {', '.join(f'{c} = agg.{c}' for c in columns)} FROM ("
        f"SELECT {hour} AS bucket, organisation_id, {sums}, {histogram} FROM {source} WHERE t IS NOT NULL "
        f"GROUP BY {hour}, organisation_id) agg "
        "WHERE usage_rollup_hourly.bucket = agg.bucket AND usage_rollup_hourly.organisation_id = agg.organisation_id"
    )
    for dimension, column in DIMENSIONS.items():
        op.execute(
            f"UPDATE usage_rollup_daily SET {', '.join(f'{c} = agg.{c}' for c in SUMS)} FROM ("
            f"SELECT {column} AS value, {day} AS day, organisation_id, {sums} FROM {source} "
            f"WHERE t IS NOT NULL AND {column} IS NOT NULL AND {column} <> '' "
            f"GROUP BY {column}, {day}, organisation_id) agg "
            f"WHERE usage_rollup_daily.dimension = '{dimension}' AND usage_rollup_daily.value = agg.value "
            "AND usage_rollup_daily.day = agg.day AND usage_rollup_daily.organisation_id = agg.organisation_id"
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_rollup_daily") as batch:
        for name in SUMS:
            batch.drop_column(name)
    with op.batch_alter_table("usage_rollup_hourly") as batch:
        for name in (*SUMS, *TTFT_COLUMNS):
            batch.drop_column(name)
