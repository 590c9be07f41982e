"""The usage recorder writes what was queued in batches, and never chases records that arrive mid-write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from odock.state.records import UsageRecord
from odock.usage import UsageRecorder
from tests.state.records import usage_record


class GatedStore:
    """A store whose writes wait for `release`, so a test can queue records while a batch is being written."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        self.writing.set()
        await self.release.wait()
        self.batches.append([r.request_id for r in records])


async def test_flush_writes_what_was_queued_in_batches_and_leaves_late_arrivals_for_the_next() -> None:
    """Under steady traffic a flush must end: records queued during a write wait, instead of becoming one tiny
    transaction after another (which had the writer thread interleave with nearly every request)."""
    store = GatedStore()
    recorder = UsageRecorder(store, batch_size=2)  # type: ignore[arg-type]
    for n in range(3):
        recorder.record(usage_record(n))
    flushing = asyncio.create_task(recorder.flush())
    await store.writing.wait()
    for n in range(3, 6):  # arrive while the first batch is being written
        recorder.record(usage_record(n))
    store.release.set()
    assert await flushing == 3
    assert store.batches == [["r0", "r1"], ["r2"]]
    assert recorder.pending == 3
    assert await recorder.flush() == 3
    assert store.batches[2:] == [["r3", "r4"], ["r5"]] and recorder.pending == 0


async def test_two_flushes_at_once_write_each_record_once() -> None:
    """A flush called while another is writing (an operator's, a test's) waits for it: nothing written twice."""
    store = GatedStore()
    recorder = UsageRecorder(store, batch_size=2)  # type: ignore[arg-type]
    for n in range(3):
        recorder.record(usage_record(n))
    first = asyncio.create_task(recorder.flush())
    await store.writing.wait()
    second = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)
    store.release.set()
    assert await first + await second == 3
    assert [rid for batch in store.batches for rid in batch] == ["r0", "r1", "r2"] and recorder.pending == 0


async def test_stop_drains_everything_queued() -> None:
    """Graceful shutdown still writes every queued record, however many flushes that takes."""
    store = GatedStore()
    store.release.set()
    recorder = UsageRecorder(store, batch_size=4, flush_interval_s=60)  # type: ignore[arg-type]
    await recorder.start()
    for n in range(10):
        recorder.record(usage_record(n))
    await recorder.stop()
    assert [rid for batch in store.batches for rid in batch] == [f"r{n}" for n in range(10)]


async def test_a_recorder_behind_writes_bigger_transactions() -> None:
    """More than four batches queued: a flush writes up to ten batches per transaction (on a saturated event loop
    a write costs its driver round trips, nearly whatever its size), then normal batches; every record once."""
    store = GatedStore()
    store.release.set()
    recorder = UsageRecorder(store, batch_size=2)  # type: ignore[arg-type]
    for n in range(25):
        recorder.record(usage_record(n))
    assert await recorder.flush() == 25
    assert [len(batch) for batch in store.batches] == [20, 2, 2, 1]
    assert [r for batch in store.batches for r in batch] == [f"r{n}" for n in range(25)]
