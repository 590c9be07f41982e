"""Budget events of a second kind: a call charged above what it reserved (an overspend), besides threshold
crossings. Existing rows are threshold events; the unique key gains the kind and the request id.

Revision ID: 0005_budget_overspend_events
Revises: 0004_usage_record_id
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_budget_overspend_events"
down_revision: str | None = "0004_usage_record_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("budget_events") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="threshold"))
        batch.add_column(sa.Column("request_id", sa.String(128), nullable=False, server_default=""))
        batch.add_column(sa.Column("reserved_nanos", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("charged_nanos", sa.BigInteger(), nullable=True))
        batch.drop_constraint("uq_budget_events_window_threshold", type_="unique")
        batch.create_unique_constraint(
            "uq_budget_events_event", ["window_key", "kind", "threshold", "request_id"]
        )


def downgrade() -> None:
    # overspend events have no place in the old table (its key would merge them with threshold crossings)
    op.execute("DELETE FROM budget_events WHERE kind <> 'threshold'")
    with op.batch_alter_table("budget_events") as batch:
        batch.drop_constraint("uq_budget_events_event", type_="unique")
        batch.create_unique_constraint("uq_budget_events_window_threshold", ["window_key", "threshold"])
        batch.drop_column("charged_nanos")
        batch.drop_column("reserved_nanos")
        batch.drop_column("request_id")
        batch.drop_column("kind")
