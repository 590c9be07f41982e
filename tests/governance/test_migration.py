"""Migrations 0002 to 0005 create exactly what odock.governance.schema describes."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from odock.governance.schema import GOVERNANCE_TABLES
from odock.settings import Settings
from odock.state import schema
from odock.state.sql import SqlStore

NAMES = {t.name for t in GOVERNANCE_TABLES}


async def _check(url: str) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    store = await SqlStore.open(url, Settings(database_url=url, secret_key=secret))
    try:

        def inspect(conn: sa.Connection) -> tuple[set[str], list[object], str | None]:
            tables = set(sa.inspect(conn).get_table_names())
            diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            return tables, diff, version

        async with store.engine.connect() as conn:
            tables, diff, version = await conn.run_sync(inspect)
    finally:
        await store.close()
    assert NAMES <= tables
    assert version == "0005_budget_overspend_events"
    assert [d for d in diff if any(name in str(d) for name in NAMES)] == []


async def test_sqlite_migration_matches_schema(tmp_path: Path) -> None:
    """On SQLite, upgrade head creates the governance tables with no drift from the schema."""
    await _check(f"sqlite:///{tmp_path / 'm.db'}")


async def test_postgres_migration_matches_schema(postgres_url: str) -> None:
    """On PostgreSQL, upgrade head creates the governance tables with no drift from the schema."""
    await _check(postgres_url)
