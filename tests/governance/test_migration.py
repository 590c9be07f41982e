"""Migrations 0002 to 0005 create exactly what odock.governance.schema describes."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
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
    assert tables >= NAMES
    # the head: the usage rollups (0007), their time to first token (0008), the MCP usage records (0009)
    assert version == "0009_mcp_usage"
    assert [d for d in diff if any(name in str(d) for name in NAMES)] == []


async def test_sqlite_migration_matches_schema(tmp_path: Path) -> None:
    """On SQLite, upgrade head creates the governance tables with no drift from the schema."""
    await _check(f"sqlite:///{tmp_path / 'm.db'}")


async def test_postgres_migration_matches_schema(postgres_url: str) -> None:
    """On PostgreSQL, upgrade head creates the governance tables with no drift from the schema."""
    await _check(postgres_url)


def _alembic(conn: sa.Connection, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from odock.state.sql import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


async def _overspend_events_both_ways(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from odock.state.sql import normalize_database_url

    insert = (
        "INSERT INTO budget_events (budget_id, window_key, threshold, used_nanos, amount_nanos, created_at{}) "
        "VALUES ('b1', 'b:b1:0', {}, 5, 10, '2026-07-01 12:00:00'{})"
    )

    def walk(conn: sa.Connection) -> tuple[list[Any], list[Any]]:
        _alembic(conn, "upgrade", "0004_usage_record_id")
        conn.execute(sa.text(insert.format("", 50, "")))
        _alembic(conn, "upgrade", "0005_budget_overspend_events")
        conn.execute(
            sa.text(
                insert.format(
                    ", kind, request_id, reserved_nanos, charged_nanos", 50, ", 'overspend', 'req-1', 3, 9"
                )
            )
        )
        upgraded = conn.execute(
            sa.text("SELECT kind, request_id, threshold, reserved_nanos FROM budget_events ORDER BY id")
        ).all()
        _alembic(conn, "downgrade", "0004_usage_record_id")
        conn.execute(sa.text(insert.format("", 80, "")))  # the old key takes a new threshold, not a repeat
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(sa.text(insert.format("", 50, "")))
        left = conn.execute(sa.text("SELECT threshold FROM budget_events ORDER BY id")).all()
        return [tuple(r) for r in upgraded], [tuple(r) for r in left]

    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.begin() as conn:
            upgraded, left = await conn.run_sync(walk)
    finally:
        await engine.dispose()
    # a stored crossing becomes a threshold event; an overspend of the same window and percentage fits beside it
    assert upgraded == [("threshold", "", 50, None), ("overspend", "req-1", 50, 3)]
    assert left == [(50,), (80,)]  # the downgrade drops overspends and keeps the crossings


async def test_overspend_events_migration_both_ways_sqlite(tmp_path: Path) -> None:
    """0005 keeps stored threshold events on SQLite, takes overspends beside them, and downgrades cleanly."""
    await _overspend_events_both_ways(f"sqlite:///{tmp_path / 'm.db'}")


async def test_overspend_events_migration_both_ways_postgres(postgres_url: str) -> None:
    """0005 keeps stored threshold events on PostgreSQL, takes overspends beside them, and downgrades cleanly."""
    await _overspend_events_both_ways(postgres_url)
