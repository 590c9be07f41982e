"""The usage collector: records are queued on the request path and written in batches off it.

The buffer is bounded (`usage_buffer_max`). While the store is down, batches are retried with backoff and
records keep queueing; when the buffer is full, new records are dropped and counted in
`gateway_usage_dropped_total` (logged once per second at most) so that memory stays flat during a long outage.
On graceful shutdown every queued record is written before the process exits (retrying for up to
`drain_timeout_s`).

Embedded mode adds a spool (`<db>.usage-spool`): each record is appended to it, one JSON line, when it is recorded
— before its response completes — so that a killed process (SIGKILL, OOM) loses none; committed records are
dropped from it (see UsageSpool), and what is left is replayed on start (ids make the replay idempotent).
Appends are plain write() calls without fsync: the page cache outlives the process, and a machine crash may lose
the last records like it may lose the last SQLite commits (synchronous=NORMAL).

Batches are written by a child process (`odock.usage_writer`, `ODOCK_USAGE_WRITER=process`, the default) so that
neither preparing rows nor the driver's work shares the event loop's time; `inline` (and an in-memory database,
which no other process can open) writes them on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from odock import metrics
from odock.errors import BadRequest, DependencyUnavailable
from odock.state.records import UsageRecord
from odock.state.store import Store

log = logging.getLogger("odock.usage")


# more than _BEHIND batches queued when a flush starts: it writes up to _CATCH_UP batches per transaction
_BEHIND = 4
_CATCH_UP = 10

_encode_line = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(UsageRecord).decode


def _sqlite_file(database_url: str) -> str | None:
    """The file of a SQLite file database; "" for in-memory SQLite; None for other databases."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    return "" if database in ("", ":memory:") or database.startswith("file:") else database


def spool_path(database_url: str) -> Path | None:
    """`<db file>.usage-spool` for a SQLite file database; None for in-memory SQLite or other databases."""
    database = _sqlite_file(database_url)
    return Path(database + ".usage-spool") if database else None


def shared_database(database_url: str) -> bool:
    """Whether another process can open this database (all but in-memory SQLite)."""
    return _sqlite_file(database_url) != ""


class UsageSpool:
    """The local append-only copy of the usage records not yet committed, at most `max_bytes` in all.

    New records go to `<db>.usage-spool`. When a flush starts, that file is sealed (renamed `<db>.usage-spool.1`)
    and a new one takes the records arriving meanwhile; the sealed file is deleted once every record in it is
    committed. Both steps are O(1), whatever the backlog."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.sealed_path = path.with_name(path.name + ".1")
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.sealed_size = self.sealed_path.stat().st_size if self.sealed_path.exists() else 0

    def load(self) -> tuple[list[bytes], int, int]:
        """The spooled records' lines, oldest first; how many come from the sealed file; how many lines did not
        decode (a write cut short by a machine crash: skipped)."""
        lines: list[bytes] = []
        bad = sealed = 0
        for path in (self.sealed_path, self.path):
            if not path.exists():
                continue
            for line in path.read_bytes().splitlines(keepends=True):
                try:
                    _decode_record(line)
                except msgspec.DecodeError:
                    bad += 1
                    continue
                lines.append(line if line.endswith(b"\n") else line + b"\n")
            if path == self.sealed_path:
                sealed = len(lines)
        return lines, sealed, bad

    def append(self, line: bytes) -> bool:
        """Append one record's line; False when it does not fit (OSError when it cannot be written)."""
        if self.size + self.sealed_size + len(line) > self.max_bytes:
            return False
        written = os.write(self._fd, line)
        if written < len(line):  # a short write (rare): the rest
            view = memoryview(line)[written:]
            while view:
                # an error mid-line leaves a partial line: load() skips it
                view = view[os.write(self._fd, view) :]
        self.size += len(line)
        return True

    def seal(self) -> bool:
        """Seal the current file and start a new one; False when there is nothing to seal or a sealed file is
        still pending."""
        if not self.size or self.sealed_path.exists():
            return False
        os.replace(self.path, self.sealed_path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.sealed_size, self.size = self.size, 0
        return True

    def drop_sealed(self) -> None:
        """Delete the sealed file (its records are committed)."""
        self.sealed_path.unlink(missing_ok=True)
        self.sealed_size = 0

    def clear(self) -> None:
        """Empty the spool (every record in it is committed)."""
        self.drop_sealed()
        if self.size:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def close(self) -> None:
        os.close(self._fd)


class UsageWriter(Protocol):
    """Writes one batch of records, each a JSON line (as the spool keeps them)."""

    async def start(self) -> None: ...

    async def write(self, lines: Sequence[bytes]) -> None: ...

    async def close(self) -> None: ...


class InlineWriter:
    """The store's own insert, on this event loop (an in-memory database: no other process can reach it)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(self) -> None:
        pass

    async def write(self, lines: Sequence[bytes]) -> None:
        await self.store.insert_usage([_decode_record(line) for line in lines])

    async def close(self) -> None:
        pass


class UsageRecorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = 0.5,
        batch_size: int = 500,
        buffer_max: int = 100_000,
        drain_timeout_s: float = 30.0,
        spool: UsageSpool | None = None,
        writer: UsageWriter | None = None,
    ) -> None:
        self.store = store
        self.writer: UsageWriter = writer or InlineWriter(store)
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.buffer_max = buffer_max
        self.drain_timeout_s = drain_timeout_s
        self.spool = spool
        # each record as its JSON line, encoded once when recorded (the spool's line and the writer's): bytes, which
        # the garbage collector never has to look at however long the queue grows
        self._queue: deque[bytes] = deque()
        # one flush at a time: two would write the same queued records and pop each other's
        self._flushing = asyncio.Lock()
        # with a spool: how many records at the queue's head were queued before the spool's file was sealed (once
        # they are committed, the sealed file goes)
        self._sealed_pending = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._last_spool_log = 0.0

    def record(self, record: UsageRecord) -> None:
        """Queue one record (and append it to the spool); never blocks the request."""
        if len(self._queue) >= self.buffer_max:
            metrics.USAGE_DROPPED.inc()
            now = time.monotonic()
            if now - self._last_drop_log > 1.0:
                self._last_drop_log = now
                log.error("usage buffer full (%d records): dropping new records", self.buffer_max)
            return
        line = _encode_line(record) + b"\n"
        if self.spool is not None:
            self._spool(self.spool, line)
        self._queue.append(line)
        if len(self._queue) >= self.batch_size:
            self._wakeup.set()

    def _spool(self, spool: UsageSpool, line: bytes) -> None:
        try:
            if spool.append(line):
                return
            reason = f"full ({spool.max_bytes} bytes)"
        except OSError as exc:
            reason = f"not writable ({exc.strerror})"
        metrics.USAGE_UNSPOOLED.inc()
        now = time.monotonic()
        if now - self._last_spool_log > 1.0:
            self._last_spool_log = now
            log.error("usage spool %s: records are queued without a copy until it drains", reason)

    async def recover(self) -> int:
        """Queue the records a killed process left in the spool and write them now; return how many.

        Records already committed before the kill are skipped by their id; when the write fails they stay queued.
        """
        if self.spool is None:
            return 0
        lines, self._sealed_pending, bad = self.spool.load()
        if bad:
            log.warning("usage spool: %d unreadable line(s) skipped", bad)
        if not self._sealed_pending:
            self.spool.drop_sealed()  # nothing readable in it
        self._queue.extendleft(reversed(lines))
        if lines:
            log.info("usage spool: replaying %d record(s) left by the previous process", len(lines))
            try:
                await self.flush()
            except Exception:  # still queued and spooled: the writer retries them
                log.exception("usage spool: replay failed; the records stay queued")
        return len(lines)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        """Write the records queued when called; return how many were written. Raises on store failure.

        Records that arrive while a batch is being written wait for the next flush: chasing them would turn a
        busy gateway's flush into an endless run of tiny transactions, one per few requests.
        """
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        written = 0
        due = len(self._queue)
        if due and self.spool is not None and not self._sealed_pending:
            self._seal(self.spool)
        while written < due and self._queue:
            left = due - written
            # behind (several batches queued): bigger transactions. On a saturated event loop each of a write's
            # ~14 driver round trips waits for a loop turn, so a batch costs nearly the same whatever its size and
            # 500-row batches fell behind a stream of cache hits (~4,600 rows/s written beside 6,400 hits/s)
            size = self.batch_size if left <= _BEHIND * self.batch_size else _CATCH_UP * self.batch_size
            batch = [self._queue[i] for i in range(min(size, left, len(self._queue)))]
            try:
                await self.writer.write(batch)
            except BadRequest:
                # a record the store cannot hold (a value too wide for its column): write the others one by one
                # and set that one aside, or it would block every later batch of the process for good
                await self._write_one_by_one(batch)
            for _ in batch:
                self._queue.popleft()
            written += len(batch)
            metrics.USAGE_FLUSHED.inc(len(batch))
            if self.spool is not None:
                self._committed(self.spool, len(batch))
        metrics.USAGE_QUEUE.set(len(self._queue))
        if written:
            log.debug("usage: wrote %d record(s), %d queued", written, len(self._queue))
        return written

    async def _write_one_by_one(self, batch: list[bytes]) -> None:
        for line in batch:
            try:
                await self.writer.write([line])
            except BadRequest:
                metrics.USAGE_REFUSED.inc()
                log.error("usage record %s refused by the store and set aside", _decode_record(line).id)

    def _seal(self, spool: UsageSpool) -> None:
        """Seal the spool file holding every record queued now (the ones this flush writes)."""
        try:
            if spool.seal():
                self._sealed_pending = len(self._queue)
        except OSError:
            log.exception(
                "usage spool: could not seal the file (its records are dropped once all are written)"
            )

    def _committed(self, spool: UsageSpool, count: int) -> None:
        """Drop what the spool holds of committed records: the sealed file once all of its records are written,
        everything when nothing is queued any more."""
        try:
            if self._sealed_pending:
                self._sealed_pending = max(0, self._sealed_pending - count)
                if not self._sealed_pending:
                    spool.drop_sealed()
            if not self._queue:
                spool.clear()
        except OSError:
            log.exception("usage spool: could not drop committed records (replaying them is harmless)")

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            try:
                async with asyncio.timeout(backoff):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            metrics.USAGE_QUEUE.set(len(self._queue))
            try:
                await self.flush()
                backoff = self.flush_interval_s
            except DependencyUnavailable:
                metrics.USAGE_FLUSH_ERRORS.inc()
                backoff = min(backoff * 2, 5.0)
            except Exception:
                metrics.USAGE_FLUSH_ERRORS.inc()
                log.exception("usage flush failed")
                backoff = min(backoff * 2, 5.0)

    async def start(self) -> None:
        await self.writer.start()
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        """Stop the background writer and drain the queue (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + self.drain_timeout_s
        try:
            while self._queue:
                try:
                    await self.flush()
                except DependencyUnavailable:
                    if time.monotonic() > deadline:
                        log.error(
                            "shutdown: %d usage records could not be written%s",
                            len(self._queue),
                            " (kept in the spool for the next start)" if self.spool is not None else "",
                        )
                        return
                    await asyncio.sleep(0.2)
        finally:
            await self.writer.close()
            if self.spool is not None:
                self.spool.close()
