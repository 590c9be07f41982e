"""SqlStore: migrations, catalogue version and listeners, usage ledger, credential encryption, error mapping."""

from __future__ import annotations

import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from odock.errors import DependencyUnavailable, GatewayError
from odock.settings import Settings
from odock.state import schema
from odock.state.crypto import SecretBox, generate_key_text, load_secret_box
from odock.state.records import UsageRecord
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore, normalize_database_url


async def test_migrations_create_the_schema(store: SqlStore) -> None:
    """Opening a store upgrades to head: every catalogue table exists and matches the SQLAlchemy schema."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from odock.state.sql import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    scripts = ScriptDirectory.from_config(config)

    import odock.governance.schema  # noqa: F401  # registers the governance tables of revision 0002

    def inspect(conn: sa.Connection) -> tuple[set[str], list[object], str | None]:
        tables = set(sa.inspect(conn).get_table_names())
        context = MigrationContext.configure(conn)
        diff = compare_metadata(context, schema.metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        return tables, diff, version

    async with store.engine.connect() as conn:
        tables, diff, version = await conn.run_sync(inspect)
    assert set(schema.CATALOGUE_TABLES) <= tables
    assert version == scripts.get_current_head()
    assert "0001_catalogue" in {rev.revision for rev in scripts.walk_revisions()}
    # the migration and the table definitions describe the same database
    assert diff == []


async def test_reopen_is_idempotent_and_keeps_data(db: tuple[str, Settings]) -> None:
    """A second open of the same database finds the schema at head and the data intact."""
    first = await SqlStore.open(*db)
    await CatalogueService(first).create_organisation({"name": "acme"})
    await first.close()
    second = await SqlStore.open(*db)
    try:
        assert [o.name for o in await CatalogueService(second).list_organisations()] == ["acme"]
        assert await second.catalogue_version() == 1
    finally:
        await second.close()


async def test_catalogue_version_bumps_and_listeners_run(store: SqlStore, service: CatalogueService) -> None:
    """Every catalogue mutation bumps catalogue_version and then calls the registered listeners."""
    calls: list[int] = []

    async def listener() -> None:
        calls.append(await store.catalogue_version())

    store.add_change_listener(listener)
    before = await store.catalogue_version()
    org = await service.create_organisation({"name": "acme"})
    await service.update_organisation(org.id, {"timezone": "Europe/Paris"})
    assert await store.catalogue_version() == before + 2
    assert calls == [before + 1, before + 2]
    # reads do not bump
    await service.list_organisations()
    assert await store.catalogue_version() == before + 2
    store.remove_change_listener(listener)
    await service.delete_organisation("acme")
    assert calls == [before + 1, before + 2]


async def test_failed_mutation_does_not_bump(store: SqlStore, service: CatalogueService) -> None:
    """A mutation that fails (duplicate) rolls back and leaves catalogue_version unchanged."""
    await service.create_organisation({"name": "acme"})
    version = await store.catalogue_version()
    with pytest.raises(GatewayError):
        await service.create_organisation({"name": "acme"})
    assert await store.catalogue_version() == version


def _usage(request_id: str, when: datetime, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": request_id,
        "created_at": when,
        "organisation_id": "org_1",
        "api_key_id": "key_1",
        "route": "/v1/chat/completions",
        "status": 200,
        "outcome": "success",
        "model": "chat",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_nanos": 100,
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


async def test_usage_insert_is_idempotent_and_lossless(store: SqlStore) -> None:
    """insert_usage skips records already stored (a retried batch) and keeps every field, JSON included."""
    when = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
    record = _usage(
        "req-1",
        when,
        team_id="team_1",
        stream=True,
        raw_usage={"prompt_tokens": 10},
        routing={"attempts": [{"provider": "openai"}]},
        metadata={"safety": "pass"},
        pricing={"input": 0.15},
    )
    await store.insert_usage([record, _usage("req-2", when)])
    await store.insert_usage([record, _usage("req-3", when)])
    await store.insert_usage([])
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(schema.usage_records).order_by("request_id"))).mappings().all()
    assert [r["request_id"] for r in rows] == ["req-1", "req-2", "req-3"]
    first = rows[0]
    assert first["created_at"] == when and first["created_at"].tzinfo is not None
    assert first["routing"] == {"attempts": [{"provider": "openai"}]}
    assert first["raw_usage"] == {"prompt_tokens": 10} and first["stream"] is True
    assert first["team_id"] == "team_1" and first["pricing"] == {"input": 0.15}


async def test_a_large_batch_is_written_whole(store: SqlStore) -> None:
    """A batch of many rows (a catch-up transaction's) is written entirely, and once when retried whole or in
    part; the rollups count each row once."""
    when = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
    batch = [_usage(f"bulk-{n}", when, output_tokens=n) for n in range(2500)]
    await store.insert_usage(batch[:1200])
    await store.insert_usage(batch)
    await store.insert_usage(batch)
    async with store.read() as conn:
        count, tokens = (
            await conn.execute(sa.select(sa.func.count(), sa.func.sum(schema.usage_records.c.output_tokens)))
        ).one()
        rolled = (await conn.exec_driver_sql("SELECT sum(requests) FROM usage_rollup_hourly")).scalar()
    assert (count, tokens, rolled) == (2500, sum(range(2500)), 2500)


async def test_a_request_id_seen_twice_keeps_both_records(store: SqlStore) -> None:
    """Two calls carrying the same X-Request-Id are two records: the row key is the gateway's own id."""
    when = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
    first, second = _usage("client-id", when), _usage("client-id", when, output_tokens=7)
    assert first.id != second.id and first.id < second.id  # time-ordered
    await store.insert_usage([first])
    await store.insert_usage([second, first])  # `first` again: a retried batch
    async with store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(schema.usage_records.c.id, schema.usage_records.c.output_tokens).where(
                    schema.usage_records.c.request_id == "client-id"
                )
            )
        ).all()
    assert sorted(rows) == [(first.id, 5), (second.id, 7)]


def _alembic(conn: sa.Connection, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from odock.state.sql import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


async def _on_engine(url: str, work: Any) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    from odock.state.sql import normalize_database_url

    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


async def test_usage_record_id_migration_keeps_stored_rows_both_ways(db: tuple[str, Settings]) -> None:
    """Rows written before revision 0004 keep their request id as their id and new rows get their own; a downgrade
    keeps the earliest record of a request id seen twice."""

    def upgrade_to_0003_with_a_row(conn: sa.Connection) -> None:
        _alembic(conn, "upgrade", "0003_charge_retention")
        conn.execute(
            sa.text(
                "INSERT INTO usage_records (request_id, created_at, organisation_id, api_key_id, route, status, "
                "outcome, stream, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, "
                "reasoning_tokens, usage_estimated, latency_ms) VALUES ('old-request', '2026-07-01 12:00:00', 'org_1', "
                "'key_1', '/v1/chat/completions', 200, 'success', false, 1, 2, 0, 0, 0, false, 3)"
            )
        )

    def downgrade(conn: sa.Connection) -> tuple[list[str], list[Any]]:
        _alembic(conn, "downgrade", "0003_charge_retention")
        key = sa.inspect(conn).get_pk_constraint("usage_records")["constrained_columns"]
        return key, list(conn.execute(sa.text("SELECT request_id, output_tokens FROM usage_records")).all())

    await _on_engine(db[0], upgrade_to_0003_with_a_row)
    store = await SqlStore.open(*db)
    try:
        await store.insert_usage([_usage("old-request", datetime(2026, 7, 2, tzinfo=UTC))])
        async with store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(schema.usage_records.c.id, schema.usage_records.c.output_tokens).order_by(
                        schema.usage_records.c.created_at
                    )
                )
            ).all()
    finally:
        await store.close()
    assert rows[0] == ("old-request", 2) and rows[1][1] == 5 and rows[1][0] != "old-request"
    key, left = await _on_engine(db[0], downgrade)
    assert key == ["request_id"] and [tuple(row) for row in left] == [("old-request", 2)]


async def test_usage_summary_groups_and_filters(store: SqlStore, service: CatalogueService) -> None:
    """The usage summary sums requests, tokens and cost per group inside [since, until)."""
    org = await service.create_organisation({"name": "acme"})
    day1 = datetime(2026, 7, 1, 23, 0, tzinfo=UTC)
    day2 = day1 + timedelta(hours=2)
    await store.insert_usage(
        [
            _usage("a", day1, organisation_id=org.id, model="m1", cached_input_tokens=3, reasoning_tokens=1),
            _usage("b", day2, organisation_id=org.id, model="m1"),
            _usage("c", day2, organisation_id=org.id, model="m2", cost_nanos=None),
            _usage("d", day2, organisation_id="other", model="m1"),
        ]
    )
    by_model = await service.usage_summary("model", organisation="acme")
    assert [(r.group, r.requests, r.input_tokens, r.cost_nanos) for r in by_model] == [
        ("m1", 2, 20, 200),
        ("m2", 1, 10, 0),
    ]
    assert by_model[0].cached_input_tokens == 3 and by_model[0].reasoning_tokens == 1
    by_day = await service.usage_summary("day")
    assert [(r.group, r.requests) for r in by_day] == [("2026-07-01", 1), ("2026-07-02", 3)]
    window = await service.usage_summary("organisation", since="2026-07-02T00:00:00Z", until="2026-07-03")
    assert {(r.group, r.requests) for r in window} == {(org.id, 2), ("other", 1)}


def test_database_urls_are_normalized() -> None:
    """sqlite and postgresql URLs get their async drivers; other schemes are refused."""
    assert str(normalize_database_url("sqlite:///rel.db")) == "sqlite+aiosqlite:///rel.db"
    assert str(normalize_database_url("sqlite:////abs/x.db")) == "sqlite+aiosqlite:////abs/x.db"
    assert normalize_database_url("postgresql://u@h:5432/d").drivername == "postgresql+asyncpg"
    with pytest.raises(SystemExit):
        normalize_database_url("mysql://h/d")


async def test_unreachable_postgres_is_store_unavailable() -> None:
    """A database that cannot be reached raises DependencyUnavailable(store_unavailable), not a driver error."""
    with pytest.raises(DependencyUnavailable) as info:
        await SqlStore.open("postgresql://nobody@127.0.0.1:1/none", Settings(secret_key=generate_key_text()))
    assert info.value.code == "store_unavailable" and info.value.status == 503


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    """The embedded store runs SQLite in WAL mode with a busy timeout."""
    store = await SqlStore.open(f"sqlite:///{tmp_path}/w.db", Settings())
    try:
        async with store.read() as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert int((await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar() or 0) > 0
    finally:
        await store.close()


def test_envelope_round_trip_and_wrong_key() -> None:
    """The AES-GCM envelope decrypts with its key, has a fresh IV each time, and fails cleanly with another."""
    box = SecretBox(os.urandom(32))
    one, two = box.encrypt("sk-upstream-secret"), box.encrypt("sk-upstream-secret")
    assert one != two and "sk-upstream-secret" not in one
    assert '"alg":"A256GCM"' in one and '"v":1' in one
    assert box.decrypt(one) == "sk-upstream-secret"
    with pytest.raises(Exception) as info:
        SecretBox(os.urandom(32)).decrypt(one)
    assert "sk-upstream" not in str(info.value)


def test_sqlite_key_file_and_postgres_refusal(tmp_path: Path) -> None:
    """Without ODOCK_SECRET_KEY, SQLite gets a 0600 key file beside the database; PostgreSQL is refused."""
    url = f"sqlite:///{tmp_path}/db/odock.db"
    box = load_secret_box("", url)
    key_file = tmp_path / "db" / "odock.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_box("", url).decrypt(box.encrypt("x" * 20)) == "x" * 20
    with pytest.raises(SystemExit, match="ODOCK_SECRET_KEY"):
        load_secret_box("", "postgresql://h/d")
    with pytest.raises(SystemExit, match="ODOCK_SECRET_KEY"):
        load_secret_box("not-base64!", "postgresql://h/d")


async def test_concurrent_writers_and_opens(db: tuple[str, Settings]) -> None:
    """Stores opened at once migrate once; concurrent mutations and usage inserts all succeed."""
    import asyncio

    stores = await asyncio.gather(SqlStore.open(*db), SqlStore.open(*db))
    try:
        first, second = (CatalogueService(s) for s in stores)
        when = datetime(2026, 7, 1, tzinfo=UTC)
        await asyncio.gather(
            *(first.create_organisation({"name": f"org{i}"}) for i in range(8)),
            *(second.create_organisation({"name": f"other{i}"}) for i in range(8)),
            *(stores[i % 2].insert_usage([_usage(f"r{i}", when)]) for i in range(8)),
        )
        assert len(await first.list_organisations()) == 16
        assert await stores[0].catalogue_version() == 16
        assert sum(r.requests for r in await first.usage_summary("model")) == 8
    finally:
        for store in stores:
            await store.close()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread nice values are a Linux feature")
async def test_sqlite_driver_threads_run_nicer_than_the_event_loop(tmp_path: Path) -> None:
    """Each pooled SQLite connection's driver thread runs at SQLITE_THREAD_NICE, the loop's thread untouched: a
    write batch yields the core to the event loop as soon as a response wakes it."""
    from odock.state.sql import SQLITE_THREAD_NICE

    before = {int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")}
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'nice.db'}")
    try:
        await store.open_pool()
        added = {int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")} - before
        assert added, "the pool opened no driver thread"
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in added} == {base + SQLITE_THREAD_NICE}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        await store.close()


async def test_a_batch_is_prepared_in_slices_that_let_requests_run_between_them(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer prepares a batch's rows and rollups on the event loop a slice at a time, with a loop turn between
    slices (in one go a large batch held every request behind it); the rows and rollups are those of the whole."""
    import asyncio
    import itertools

    from odock.state import rollups, sql

    turns = 0
    seen: list[tuple[int, int]] = []  # (slice size, loop turns so far) at each slice

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    original = rollups.Aggregate.add

    def add(self: rollups.Aggregate, records: Any) -> None:
        seen.append((len(records), turns))
        original(self, records)

    monkeypatch.setattr(rollups.Aggregate, "add", add)
    when = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)
    batch = [_usage(f"sliced-{n}", when, output_tokens=n) for n in range(10 * sql._PREPARE_SLICE + 3)]
    counter = asyncio.create_task(count_turns())
    try:
        await store.insert_usage(batch)
    finally:
        counter.cancel()
    assert [size for size, _ in seen] == [sql._PREPARE_SLICE] * 10 + [3]
    assert all(later > earlier for (_, earlier), (_, later) in itertools.pairwise(seen))
    async with store.read() as conn:
        rolled = (
            await conn.exec_driver_sql("SELECT sum(requests), sum(output_tokens) FROM usage_rollup_hourly")
        ).one()
    assert tuple(rolled) == (len(batch), sum(range(len(batch))))
