"""The usage writer process: batches reach the store through a child process, on SQLite and PostgreSQL; a killed
child is replaced and its batch retried; a record the store refuses is set aside; the child ends with its
gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from odock import metrics
from odock.errors import DependencyUnavailable
from odock.settings import Settings, load_settings
from odock.state import schema
from odock.state.sql import SqlStore
from odock.usage import UsageRecorder
from odock.usage_writer import WriterProcess
from tests.state.records import usage_record


async def _request_ids(store: SqlStore) -> list[str]:
    table = schema.usage_records
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(table.c.request_id).order_by(table.c.request_id))).all()
    return [row[0] for row in rows]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers signal 0: count it as ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _recorder(store: SqlStore, db: tuple[str, Settings]) -> tuple[UsageRecorder, WriterProcess]:
    writer = WriterProcess(db[0], secret_key=db[1].secret_key)
    return UsageRecorder(store, flush_interval_s=60, writer=writer), writer


async def test_batches_are_written_by_a_child_process(store: SqlStore, db: tuple[str, Settings]) -> None:
    """Every record reaches the store, the rows and rollups come from the child, and stopping ends it."""
    recorder, writer = _recorder(store, db)
    await recorder.start()
    for n in range(40):
        recorder.record(usage_record(n))
    assert await recorder.flush() == 40
    child = writer.pid
    assert child is not None and child != os.getpid() and _alive(child)
    assert await _request_ids(store) == sorted(f"r{n}" for n in range(40))
    async with store.read() as conn:
        requests = (
            await conn.execute(sa.select(sa.func.sum(schema.usage_rollup_hourly.c.requests)))
        ).scalar()
    assert requests == 40
    await recorder.stop()
    assert writer.pid is None and not _alive(child)


async def test_a_killed_writer_is_replaced_and_its_batch_written_once(
    store: SqlStore, db: tuple[str, Settings]
) -> None:
    recorder, writer = _recorder(store, db)
    await recorder.start()
    recorder.record(usage_record(0))
    assert await recorder.flush() == 1
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    for n in range(1, 6):
        recorder.record(usage_record(n))
    deadline = time.monotonic() + 20
    while True:  # the batch that finds the child dead fails (503 to the writer loop) and is retried
        try:
            assert await recorder.flush() == 5
            break
        except DependencyUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert writer.pid not in (None, first)
    assert await _request_ids(store) == [f"r{n}" for n in range(6)]
    await recorder.stop()


async def test_a_record_the_store_refuses_is_set_aside(store: SqlStore, db: tuple[str, Settings]) -> None:
    """On PostgreSQL a value wider than its column is refused: the child says so, the batch is written one by
    one, that record is set aside and counted, the others are written."""
    if store.dialect != "postgresql":
        return  # SQLite keeps any length: nothing to refuse
    recorder, _ = _recorder(store, db)
    await recorder.start()
    before = metrics.USAGE_REFUSED._value.get()
    for record in (usage_record(1), usage_record(2, provider="p" * 500), usage_record(3)):
        recorder.record(record)
    assert await recorder.flush() == 3
    assert await _request_ids(store) == ["r1", "r3"] and recorder.pending == 0
    assert metrics.USAGE_REFUSED._value.get() == before + 1
    await recorder.stop()


async def test_the_child_ends_when_its_gateway_dies(tmp_path: Path) -> None:
    """A gateway killed with SIGKILL closes the child's stdin with it: the child exits instead of lingering."""
    url = f"sqlite:///{tmp_path}/odock.db"
    await (await SqlStore.open(url, Settings())).close()  # migrated
    script = (
        "import asyncio, sys\n"
        "from odock.usage_writer import WriterProcess\n"
        "async def main():\n"
        f"    writer = WriterProcess({url!r})\n"
        "    await writer.start()\n"
        "    print(writer.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 20))
    assert _alive(child)
    parent.kill()
    await parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the writer outlived its gateway"
        await asyncio.sleep(0.05)


async def test_the_child_waits_out_a_group_wide_signal_for_its_gateways_drain(
    store: SqlStore, db: tuple[str, Settings]
) -> None:
    """Ctrl-C or a supervisor's SIGTERM reaches the child too: it keeps serving, so the gateway's shutdown drain
    still goes through it, and it ends when its stdin closes."""
    recorder, writer = _recorder(store, db)
    await recorder.start()
    recorder.record(usage_record(0))
    assert await recorder.flush() == 1
    child = writer.pid
    assert child is not None
    for sig in (signal.SIGINT, signal.SIGTERM):  # it has served a batch: its handlers are in place
        os.kill(child, sig)
    recorder.record(usage_record(1))
    assert await recorder.flush() == 1 and writer.pid == child
    recorder.record(usage_record(2))
    await recorder.stop()  # the drain, through the same child
    assert await _request_ids(store) == ["r0", "r1", "r2"]
    assert not _alive(child)


async def test_a_batch_that_fails_in_the_child_is_an_error_and_the_child_carries_on(
    store: SqlStore, db: tuple[str, Settings]
) -> None:
    """A batch the child cannot write for an unexpected reason is answered `unavailable` (the gateway retries it
    later) instead of ending the process; the next batch goes to the same child."""
    recorder, writer = _recorder(store, db)
    await recorder.start()
    recorder.record(usage_record(0))
    assert await recorder.flush() == 1
    child = writer.pid
    with pytest.raises(DependencyUnavailable, match="cannot be reached"):
        await writer.write([b"not a usage record\n"])
    await writer.write([msgspec.json.encode(usage_record(1)) + b"\n"])
    assert writer.pid == child and await _request_ids(store) == ["r0", "r1"]
    await recorder.stop()


def test_writer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """ODOCK_USAGE_WRITER is `process` or `inline`; ODOCK_USAGE_WRITER_CPUS a CPU list as taskset takes it; anything
    else stops the start with the variable's name."""
    monkeypatch.setenv("ODOCK_USAGE_WRITER_CPUS", "0,2-3")
    assert load_settings().usage_writer_cpus == [0, 2, 3]
    for bad in ("abc", "3-1", ",", "-1"):
        monkeypatch.setenv("ODOCK_USAGE_WRITER_CPUS", bad)
        with pytest.raises(SystemExit, match="ODOCK_USAGE_WRITER_CPUS"):
            load_settings()
    monkeypatch.delenv("ODOCK_USAGE_WRITER_CPUS")
    monkeypatch.setenv("ODOCK_USAGE_WRITER", "thread")
    with pytest.raises(SystemExit, match="ODOCK_USAGE_WRITER"):
        load_settings()
