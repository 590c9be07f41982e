"""Index settled charges by time, so reconciliation can prune the ones no crashed call can still need.

Revision ID: 0003_charge_retention
Revises: 0002_governance
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_charge_retention"
down_revision: str | None = "0002_governance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_governance_charges_created", "governance_charges", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_governance_charges_created", table_name="governance_charges")
