"""The usage collector: records are queued on the request path and written in batches off it.

The buffer is bounded (`usage_buffer_max`). While the store is down, batches are retried with backoff and
records keep queueing; when the buffer is full, new records are dropped and counted in
`gateway_usage_dropped_total` (logged once per second at most) so that memory stays flat during a long outage.
On graceful shutdown every queued record is written before the process exits (retrying for up to
`drain_timeout_s`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from odock import metrics
from odock.errors import DependencyUnavailable
from odock.state.records import UsageRecord
from odock.state.store import Store

log = logging.getLogger("odock.usage")


class UsageRecorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = 0.5,
        batch_size: int = 500,
        buffer_max: int = 100_000,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.buffer_max = buffer_max
        self.drain_timeout_s = drain_timeout_s
        self._queue: deque[UsageRecord] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        # called with each written batch (budget settlement hooks in here)
        self.after_write: list[Callable[[Sequence[UsageRecord]], Awaitable[None]]] = []

    def record(self, record: UsageRecord) -> None:
        """Queue one record; never blocks the request."""
        if len(self._queue) >= self.buffer_max:
            metrics.USAGE_DROPPED.inc()
            now = time.monotonic()
            if now - self._last_drop_log > 1.0:
                self._last_drop_log = now
                log.error("usage buffer full (%d records): dropping new records", self.buffer_max)
            return
        self._queue.append(record)
        if len(self._queue) >= self.batch_size:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        """Write the records queued when called; return how many were written. Raises on store failure.

        Records that arrive while a batch is being written wait for the next flush: chasing them would turn a
        busy gateway's flush into an endless run of tiny transactions, one per few requests.
        """
        written = 0
        due = len(self._queue)
        while written < due and self._queue:
            batch = [self._queue[i] for i in range(min(self.batch_size, due - written, len(self._queue)))]
            await self.store.insert_usage(batch)
            for _ in batch:
                self._queue.popleft()
            written += len(batch)
            metrics.USAGE_FLUSHED.inc(len(batch))
            for hook in self.after_write:
                try:
                    await hook(batch)
                except Exception:
                    log.exception("usage after-write hook failed")
        metrics.USAGE_QUEUE.set(len(self._queue))
        if written:
            log.debug("usage: wrote %d record(s), %d queued", written, len(self._queue))
        return written

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

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        """Stop the background writer and drain the queue (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        deadline = time.monotonic() + self.drain_timeout_s
        while self._queue:
            try:
                await self.flush()
            except DependencyUnavailable:
                if time.monotonic() > deadline:
                    log.error("shutdown: %d usage records could not be written", len(self._queue))
                    return
                await asyncio.sleep(0.2)
