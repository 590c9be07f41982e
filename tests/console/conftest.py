"""Store fixtures for these tests: the data tests run on SQLite and on PostgreSQL."""

from tests.sql_fixtures import db, service, store  # noqa: F401


async def wait_for_usage(ledger: object, count: int, timeout_s: float = 5.0) -> None:
    """Wait until the background usage writer has stored `count` records (no second, concurrent flush)."""
    import asyncio

    import sqlalchemy as sa

    from odock.state import schema

    for _ in range(int(timeout_s / 0.02)):
        async with ledger.read() as conn:  # type: ignore[attr-defined]
            stored = (
                await conn.execute(sa.select(sa.func.count()).select_from(schema.usage_records))
            ).scalar()
        if stored >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the usage writer stored {stored} of {count} records")
