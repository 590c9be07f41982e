"""One SqlStore serves the catalogue, the usage ledger and governance: one engine, one SQLite write lock, and
one error mapping (a constraint violation is 409 wherever it happens, only an unreachable store is 503)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from odock.errors import DependencyUnavailable, GatewayError
from odock.governance.store import Budget, GovernanceStore
from odock.state.crypto import SecretBox, generate_key_text
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore, normalize_database_url
from tests.harness import free_port
from tests.state.records import usage_record

START = datetime(2030, 1, 1, tzinfo=UTC)


def budget(budget_id: str = "") -> Budget:
    return Budget(
        id=budget_id, name="b", owner_type="ORG", owner_id="org-1", period="MONTHLY", amount_nanos=10**9
    )


async def test_governance_integrity_error_is_409(store: SqlStore) -> None:
    """A governance row that breaks a constraint is 409 conflict (it used to be reported as a 503 outage)."""
    governance = GovernanceStore(store)
    stored = await governance.insert_budget(budget())
    with pytest.raises(GatewayError) as info:
        await governance.insert_budget(budget(stored.id))
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert [b.id for b in await governance.list_budgets()] == [stored.id]


async def test_unreachable_store_is_503() -> None:
    """A database that refuses connections is 503 store_unavailable for the catalogue and governance alike."""
    url = normalize_database_url(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    unreachable = SqlStore(create_async_engine(url, connect_args={"timeout": 2}), SecretBox(b"k" * 32))
    try:
        for call in (
            unreachable.ping(),
            GovernanceStore(unreachable).list_budgets(),
            CatalogueService(unreachable).create_organisation({"name": "acme"}),
        ):
            with pytest.raises(DependencyUnavailable) as info:
                await call
            assert (info.value.status, info.value.code) == (503, "store_unavailable")
            assert "nothing" not in info.value.message  # never the URL
    finally:
        await unreachable.close()


async def test_concurrent_writers_share_one_store(store: SqlStore) -> None:
    """Catalogue mutations, usage batches and governance writes at once: all land, none fails as locked or busy."""
    governance = GovernanceStore(store)
    catalogue = CatalogueService(store)
    windows = [(f"w{i}", "budget", f"def-{i}", START, START + timedelta(days=31), 10**12) for i in range(4)]
    await governance.windows_used(windows)

    async def organisations(n: int) -> None:
        await catalogue.create_organisation({"name": f"org-{n}"})

    async def usage_batch(n: int) -> None:
        await store.insert_usage([usage_record(n * 100 + i) for i in range(50)])

    async def charges(n: int) -> None:
        await governance.record_charges([(f"r{n}", w[0], 1) for w in windows])

    async def budgets(n: int) -> None:
        await governance.insert_budget(budget())

    await asyncio.gather(
        *(work(n) for n in range(15) for work in (organisations, usage_batch, charges, budgets))
    )
    assert len(await catalogue.list_organisations()) == 15
    assert len(await governance.list_budgets()) == 15
    assert await governance.windows_used(windows) == [15] * 4
    rows = await catalogue.usage_summary("key")
    assert [(row.group, row.requests) for row in rows] == [("key", 15 * 50)]


async def test_charge_conflict_keeps_the_writer_connection(postgres_url: str) -> None:
    """The store's asyncpg charge connection maps a constraint violation to 409 and keeps its connection."""
    from odock.settings import Settings

    store = await SqlStore.open(postgres_url, Settings(secret_key=generate_key_text()))
    try:
        writer = store.charge_writer
        assert writer is not None
        await writer.fetch("CREATE TABLE probe (id int PRIMARY KEY)")
        await writer.fetch("INSERT INTO probe VALUES (1)")
        pid = writer._conn.get_server_pid()
        with pytest.raises(GatewayError) as info:
            await writer.fetch("INSERT INTO probe VALUES ($1)", 1)
        assert (info.value.status, info.value.code) == (409, "conflict")
        assert writer._conn is not None and writer._conn.get_server_pid() == pid
        with pytest.raises(GatewayError) as info:
            await writer.fetch("INSERT INTO probe VALUES ($1)", 2**40)
        assert info.value.status == 400
    finally:
        await store.close()


def test_raw_driver_errors_map_by_kind() -> None:
    """Raw asyncpg errors (the charge writer's) map like wrapped ones: lost connection 503, constraint 409, data 400."""
    import asyncpg

    from odock.state.sql import map_sql_error

    for error, status in (
        (asyncpg.InternalClientError("another operation is in progress"), 503),
        (asyncpg.ConnectionDoesNotExistError("closed"), 503),
        (ConnectionResetError(), 503),
        (asyncpg.UniqueViolationError("duplicate"), 409),
        (asyncpg.StringDataRightTruncationError("too long"), 400),
    ):
        mapped = map_sql_error(error)
        assert mapped is not None and mapped.status == status, error
    assert map_sql_error(ValueError("a bug of ours")) is None
