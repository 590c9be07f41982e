"""GovernanceStore.record_charges / windows_used on SQLite and PostgreSQL: set-based, exactly once per charge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from odock.governance.store import GovernanceStore
from odock.settings import Settings
from odock.state.sql import SqlStore
from tests.governance.conftest import SECRET_KEY, sqlite_url

START = datetime(2030, 1, 1, tzinfo=UTC)
END = START + timedelta(days=31)


def window(key: str, limit: int = 10**12) -> tuple[str, str, str, datetime, datetime, int]:
    return key, "budget", "def-" + key, START, END, limit


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file, or a fresh PostgreSQL database (outside the event loop: it creates it synchronously)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


async def open_store(url: str, *, migrate: bool = True) -> GovernanceStore:
    """A governance store on its own SqlStore (migrated: the governance tables exist)."""
    return GovernanceStore(await SqlStore.open(url, Settings(secret_key=SECRET_KEY), migrate=migrate))


@pytest.fixture()
async def store(database_url: str) -> AsyncIterator[GovernanceStore]:
    """A store with fresh governance tables."""
    gov_store = await open_store(database_url)
    yield gov_store
    await gov_store.sql.close()


async def used(store: GovernanceStore, key: str) -> int:
    return (await store.windows_used([window(key)]))[0]


def count_statements(store: GovernanceStore) -> list[str]:
    """Record every statement the engine sends to the driver."""
    seen: list[str] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", hook)
    return seen


async def test_windows_used_creates_rows_once(store: GovernanceStore) -> None:
    """windows_used creates missing rows at 0, keeps existing ones and answers in the order asked."""
    assert await store.windows_used([window("a"), window("b")]) == [0, 0]
    await store.record_charges([("r1", "b", 7)])
    assert await store.windows_used([window("b"), window("c"), window("a")]) == [7, 0, 0]
    assert await store.window_used(*window("b")) == 7
    assert await store.windows_used([]) == []


async def test_record_charges_flags_and_sums(store: GovernanceStore) -> None:
    """New charges add to `used`; repeats (stored, or earlier in the same call) are flagged and not added."""
    await store.windows_used([window("a"), window("b")])
    assert await store.record_charges([("r1", "a", 5), ("r1", "b", 6), ("r2", "a", 7)]) == [True, True, True]
    fresh = await store.record_charges(
        [("r1", "a", 5), ("r3", "a", 1), ("r3", "a", 100), ("r3", "b", 2), ("r4", "nowindow", 9)]
    )
    assert fresh == [False, True, False, True, True]
    assert await used(store, "a") == 5 + 7 + 1
    assert await used(store, "b") == 6 + 2
    assert await store.charges_for("r3") == {"a": 1, "b": 2}
    assert await store.record_charges([]) == []


async def test_record_charges_is_one_transaction_of_few_statements(store: GovernanceStore) -> None:
    """A batch of 2,500 charges over 4 windows: one statement on PostgreSQL (own connection), a handful on SQLite."""
    keys = ["a", "b", "c", "d"]
    await store.windows_used([window(k) for k in keys])
    charges = [(f"r{i}", keys[i % 4], i) for i in range(2500)]
    seen = count_statements(store)
    assert await store.record_charges(charges) == [True] * 2500
    writes = [s for s in seen if not s.lstrip().upper().startswith(("BEGIN", "COMMIT", "PRAGMA"))]
    if store.dialect == "postgresql":
        assert writes == []  # the one statement goes over the ledger's own asyncpg connection, not the pool
    else:
        assert len(writes) <= 3  # an INSERT per chunk of 2,000 rows, one executemany UPDATE
    for k, key in enumerate(keys):
        assert await used(store, key) == sum(i for i in range(2500) if i % 4 == k)
    assert await store.record_charges(charges[:10]) == [False] * 10
    assert await used(store, "a") == sum(i for i in range(0, 2500, 4))


async def test_concurrent_batches_in_opposite_orders(store: GovernanceStore) -> None:
    """Concurrent batches touching the same windows in opposite orders neither deadlock nor lose a charge."""
    url = store.engine.url.render_as_string(hide_password=False)
    others = [
        await open_store(url, migrate=False) for _ in range(3)
    ]  # as other gateway processes: own engines
    keys = [f"w{i}" for i in range(10)]
    await store.windows_used([window(k) for k in keys])

    async def worker(s: GovernanceStore, n: int) -> None:
        for it in range(30):
            order = keys if (n + it) % 2 else keys[::-1]
            await s.record_charges([(f"x{n}-{it}-{k}", k, 1) for k in order])

    try:
        await asyncio.gather(*(worker(s, n) for n, s in enumerate([store, *others])))
    finally:
        for other in others:
            await other.sql.close()
    assert [await used(store, k) for k in keys] == [4 * 30] * 10


@pytest.mark.cluster
async def test_postgres_locks_windows_in_key_order(postgres_url: str) -> None:
    """A batch waiting for the lowest window holds no other window: batches in any order cannot deadlock."""
    store = await open_store(postgres_url)
    keys = [f"w{i}" for i in range(10)]
    await store.windows_used([window(k) for k in reversed(keys)])  # physical order opposite to key order
    table = "governance_windows"
    try:
        async with store.engine.connect() as holder:
            await holder.execute(sa.text(f"SELECT 1 FROM {table} WHERE window_key = 'w0' FOR UPDATE"))
            task = asyncio.create_task(store.record_charges([("r1", k, 1) for k in reversed(keys)]))
            await asyncio.sleep(0.3)
            assert not task.done()
            async with store.engine.connect() as probe:
                for key in keys[1:]:  # NOWAIT fails if the waiting batch already locked the row
                    await probe.execute(
                        sa.text(f"SELECT 1 FROM {table} WHERE window_key = :k FOR UPDATE NOWAIT"), {"k": key}
                    )
                await probe.rollback()
            await holder.rollback()
            assert await task == [True] * 10
        assert await store.windows_used([window(k) for k in keys]) == [1] * 10
    finally:
        await store.sql.close()


async def test_prune_charges_deletes_only_older_rows(store: GovernanceStore) -> None:
    """Charges past retention go; newer ones stay, and the windows' `used` is untouched."""
    from odock.governance.schema import governance_charges

    await used(store, "w")
    await store.record_charges([("old/1", "w", 5), ("old/2", "w", 6), ("new/1", "w", 7)])
    async with store.engine.begin() as conn:
        await conn.execute(
            governance_charges.update()
            .where(governance_charges.c.reservation_id.like("old/%"))
            .values(created_at=datetime.now(UTC) - timedelta(days=3))
        )
    assert await store.prune_charges(datetime.now(UTC) - timedelta(days=1)) == 2
    assert await store.charges_for("old/1") == {} and await store.charges_for("new/1") == {"w": 7}
    assert await used(store, "w") == 18


async def test_charge_writer_replaces_a_broken_connection(postgres_url: str) -> None:
    """A killed ledger connection is replaced (at worst after one write failing with 503); nothing is lost."""
    from odock.errors import DependencyUnavailable

    store = await open_store(postgres_url)
    try:
        await used(store, "a")
        assert await store.record_charges([("r1", "a", 5)]) == [True]
        assert store._charges is not None and store._charges._conn is not None
        writer_pid = store._charges._conn.get_server_pid()
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": writer_pid})
        for _ in range(100):  # termination is asynchronous: wait until the backend is gone
            async with store.engine.begin() as conn:
                alive = (
                    await conn.execute(
                        sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": writer_pid}
                    )
                ).scalar()
            if not alive:
                break
            await asyncio.sleep(0.02)
        try:  # a connection already seen closed is replaced before the write; else that one write fails (503)
            fresh = await store.record_charges([("r2", "a", 6)])
        except DependencyUnavailable:
            fresh = await store.record_charges([("r2", "a", 6)])
        assert fresh == [True]
        assert store._charges._conn.get_server_pid() != writer_pid
        assert await used(store, "a") == 11
    finally:
        await store.sql.close()
