"""The usage spool: every recorded call reaches a local file at once, so a killed recorder loses none; committed
records are cut from it, and a restart replays the rest exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from odock import metrics
from odock.errors import BadRequest, DependencyUnavailable
from odock.settings import Settings
from odock.state import schema
from odock.state.records import UsageRecord
from odock.state.sql import SqlStore
from odock.usage import UsageRecorder, UsageSpool, spool_path
from tests.state.records import usage_record


@pytest.fixture()
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    """A migrated SQLite store in a temporary folder."""
    opened = await SqlStore.open(f"sqlite:///{tmp_path}/odock.db", Settings())
    try:
        yield opened
    finally:
        await opened.close()


async def stored(store: SqlStore) -> list[UsageRecord]:
    """Every usage row, as records, oldest first."""
    table = schema.usage_records
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(table).order_by(table.c.id))).mappings().all()
    return [UsageRecord(**{k: row[k] for k in UsageRecord.__struct_fields__ if k in row}) for row in rows]


def spool_of(store: SqlStore, max_bytes: int = 1 << 20) -> UsageSpool:
    """A spool beside the store's SQLite file (what the gateway opens)."""
    database = store.engine.url.database
    assert database is not None
    return UsageSpool(Path(database + ".usage-spool"), max_bytes)


def killed(recorder: UsageRecorder) -> None:
    """What SIGKILL leaves: the queue is gone, the spool file stays (only its descriptor is closed here)."""
    assert recorder.spool is not None
    recorder.spool.close()


async def test_records_of_a_killed_recorder_are_replayed_on_start(store: SqlStore) -> None:
    """Records queued but never flushed are written, field for field, by the next recorder's recover()."""
    first = UsageRecorder(store, spool=spool_of(store))
    records = [usage_record(n) for n in range(5)]
    for record in records:
        first.record(record)
    killed(first)
    assert await stored(store) == []
    second = UsageRecorder(store, spool=spool_of(store))
    assert await second.recover() == 5
    assert [
        (r.id, r.request_id, r.input_tokens, r.cost_nanos, r.raw_usage, r.routing)
        for r in await stored(store)
    ] == [(r.id, r.request_id, r.input_tokens, r.cost_nanos, r.raw_usage, r.routing) for r in records]
    assert second.spool is not None and second.spool.path.stat().st_size == 0  # all committed: cut
    await second.stop()


class GatedStore:
    """A store whose writes wait for `release`: records can arrive while a batch is being written."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        self.writing.set()
        await self.release.wait()
        await self.inner.insert_usage(records)


async def test_a_commit_cuts_its_records_and_keeps_the_ones_that_arrived_meanwhile(store: SqlStore) -> None:
    """After a batch commits, the spool holds exactly the records still queued; a kill then replays only those."""
    gated = GatedStore(store)
    first = UsageRecorder(gated, spool=spool_of(store))  # type: ignore[arg-type]
    for n in range(3):
        first.record(usage_record(n))
    flushing = asyncio.create_task(first.flush())
    await gated.writing.wait()
    for n in range(3, 5):  # arrive while the batch is being written
        first.record(usage_record(n))
    gated.release.set()
    assert await flushing == 3
    assert first.spool is not None
    lines = first.spool.path.read_bytes().splitlines()
    assert len(lines) == 2 and b'"request_id":"r3"' in lines[0] and b'"request_id":"r4"' in lines[1]
    assert not first.spool.sealed_path.exists()
    killed(first)
    second = UsageRecorder(store, spool=spool_of(store))
    assert await second.recover() == 2
    assert sorted(r.request_id for r in await stored(store)) == [f"r{n}" for n in range(5)]
    await second.stop()


class FailingSecondBatch:
    """A store that commits the first batch and fails every later one."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.calls = 0

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.calls > 1:
            raise DependencyUnavailable("down", "store_unavailable")
        await self.inner.insert_usage(records)


async def test_a_flush_failing_midway_keeps_its_sealed_file_until_every_record_is_written(
    store: SqlStore,
) -> None:
    """A half-committed flush leaves the sealed file; a kill then replays sealed and new records once each."""
    first = UsageRecorder(FailingSecondBatch(store), batch_size=2, spool=spool_of(store))  # type: ignore[arg-type]
    for n in range(4):
        first.record(usage_record(n))
    with pytest.raises(DependencyUnavailable):
        await first.flush()
    first.record(usage_record(4))
    assert first.spool is not None and first.spool.sealed_path.exists()
    assert len(first.spool.path.read_bytes().splitlines()) == 1  # r4, after the seal
    killed(first)
    second = UsageRecorder(store, batch_size=2, spool=spool_of(store))
    assert await second.recover() == 5
    assert sorted(r.request_id for r in await stored(store)) == [f"r{n}" for n in range(5)]
    assert second.spool is not None and not second.spool.sealed_path.exists() and second.spool.size == 0
    await second.stop()


async def test_replay_skips_records_already_committed(store: SqlStore) -> None:
    """A kill between a commit and the spool's cut replays those records again: their ids make it a no-op."""
    first = UsageRecorder(store, spool=spool_of(store))
    for n in range(4):
        first.record(usage_record(n))
    await store.insert_usage(
        [msgspec.json.decode(line, type=UsageRecord) for line in first._queue]
    )  # committed, but killed before the spool was cut
    killed(first)
    second = UsageRecorder(store, spool=spool_of(store))
    assert await second.recover() == 4
    assert len(await stored(store)) == 4
    await second.stop()


async def test_a_torn_last_line_is_skipped(store: SqlStore) -> None:
    """A line cut short (a machine crash mid-write) is skipped and dropped; the whole lines are replayed."""
    first = UsageRecorder(store, spool=spool_of(store))
    for n in range(2):
        first.record(usage_record(n))
    killed(first)
    path = spool_of(store).path
    with path.open("ab") as fh:
        fh.write(b'{"id":"01J","request_id":"r9","crea')
    second = UsageRecorder(store, spool=spool_of(store))
    assert await second.recover() == 2
    assert sorted(r.request_id for r in await stored(store)) == ["r0", "r1"]
    assert path.stat().st_size == 0
    await second.stop()


async def test_a_full_spool_counts_what_it_cannot_keep_and_the_records_are_still_written(
    store: SqlStore,
) -> None:
    """Above the size cap records are queued without a copy, counted in gateway_usage_unspooled_total."""
    before = metrics.REGISTRY.get_sample_value("gateway_usage_unspooled_total") or 0.0
    line = len(msgspec.json.encode(usage_record(1))) + 1  # records 1 to 5 have lines of one size
    recorder = UsageRecorder(store, spool=spool_of(store, max_bytes=2 * line + 10))
    for n in range(1, 6):
        recorder.record(usage_record(n))
    assert (metrics.REGISTRY.get_sample_value("gateway_usage_unspooled_total") or 0.0) - before == 3
    assert recorder.spool is not None and recorder.spool.size <= 2 * line + 10
    await recorder.flush()
    assert len(await stored(store)) == 5 and recorder.spool.size == 0
    await recorder.stop()


def test_the_spool_lives_beside_a_sqlite_file_only() -> None:
    """`<db>.usage-spool` for a SQLite file; no spool for in-memory SQLite or PostgreSQL."""
    assert spool_path("sqlite:///data/odock.db") == Path("data/odock.db.usage-spool")
    assert spool_path("sqlite:///:memory:") is None
    assert spool_path("postgresql://u@h/db") is None


def test_the_spool_is_on_by_default_in_embedded_mode_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ODOCK_USAGE_SPOOL defaults to on in embedded mode and off in cluster mode; true in cluster mode is refused."""
    from odock.settings import load_settings

    for name in ("ODOCK_USAGE_SPOOL", "ODOCK_REDIS_URL", "ODOCK_USAGE_SPOOL_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().spool_usage
    monkeypatch.setenv("ODOCK_USAGE_SPOOL", "false")
    assert not load_settings().spool_usage
    monkeypatch.setenv("ODOCK_USAGE_SPOOL_MAX_BYTES", "4096")
    assert load_settings().usage_spool_max_bytes == 4096
    monkeypatch.setenv("ODOCK_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.delenv("ODOCK_USAGE_SPOOL")
    assert not load_settings().spool_usage
    monkeypatch.setenv("ODOCK_USAGE_SPOOL", "true")
    with pytest.raises(SystemExit, match="embedded mode"):
        load_settings()


async def test_a_record_the_store_refuses_is_set_aside(tmp_path: Path) -> None:
    """One record whose value its column cannot hold does not block the batch: the others are written, it is
    set aside and counted (it used to stop the usage writer for good)."""

    class PickyStore:
        def __init__(self) -> None:
            self.rows: list[str] = []

        async def insert_usage(self, batch: list[UsageRecord]) -> None:
            if any(r.request_id == "bad" for r in batch):
                raise BadRequest("a value does not fit its field")
            self.rows += [r.request_id for r in batch]

    store = PickyStore()
    recorder = UsageRecorder(store, flush_interval_s=60)  # type: ignore[arg-type]
    before = metrics.USAGE_REFUSED._value.get()
    for record in (
        usage_record(1),
        msgspec.structs.replace(usage_record(2), request_id="bad"),
        usage_record(3),
    ):
        recorder.record(record)
    assert await recorder.flush() == 3
    assert store.rows == ["r1", "r3"] and recorder.pending == 0
    assert metrics.USAGE_REFUSED._value.get() == before + 1
