"""Key usage records by a gateway-made id instead of the request id.

The request id may come from the client (X-Request-Id), which can send the same one twice; as the key, the second
call's record was skipped as a duplicate and its usage lost. Rows already stored keep their request id as their id.

Revision ID: 0004_usage_record_id
Revises: 0003_charge_retention
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_usage_record_id"
down_revision: str | None = "0003_charge_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("id", sa.String(128), nullable=True))
    op.execute("UPDATE usage_records SET id = request_id")
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("id", existing_type=sa.String(128), nullable=False)
        batch.drop_constraint("pk_usage_records", type_="primary")
        batch.create_primary_key("pk_usage_records", ["id"])


def downgrade() -> None:
    # a request id seen twice since the upgrade keeps its earliest record only: the old key cannot hold both
    op.execute(
        "DELETE FROM usage_records WHERE EXISTS (SELECT 1 FROM usage_records AS earlier "
        "WHERE earlier.request_id = usage_records.request_id AND (earlier.created_at < usage_records.created_at "
        "OR (earlier.created_at = usage_records.created_at AND earlier.id < usage_records.id)))"
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_constraint("pk_usage_records", type_="primary")
        batch.create_primary_key("pk_usage_records", ["request_id"])
        batch.drop_column("id")
