"""The usage writer process: batches of usage records written to the store by a child process of the gateway.

Why a process: written in the gateway process, each batch's rows were prepared on the event loop and inserted by
a driver thread that takes the GIL back after every row, so at one connection a request in fifty waited behind a
batch (a p99 tail of ~2 ms), and a lower priority for that thread made it worse (holding the GIL, it kept the loop
waiting). A thread cannot take Python work off the loop; a process can, and the kernel schedules it like any
other: on spare CPU (it runs at the idle priority, see `WriterProcess`), on another core when it has one
(`ODOCK_USAGE_WRITER_CPUS`).

The gateway encodes each record once, when it is recorded (the same JSON line the spool keeps), and sends a batch
as one write: `<length>\\n` then that many bytes of JSON lines on the child's stdin. The child decodes them,
writes them with the store's own `insert_usage` (one transaction, idempotent by record id), and answers one line
on its stdout: `ok`, `refused` (a record the store cannot hold: the gateway writes the batch one by one to find
it), or `unavailable`. The child ends when its stdin closes, so it never outlives the gateway; a child that dies
is started again by the next batch, and its batch is retried (ids make that harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from odock.errors import BadRequest, DependencyUnavailable
from odock.state.records import UsageRecord

if TYPE_CHECKING:
    from odock.usage import UsageWriter

log = logging.getLogger("odock.usage")

# a batch not answered within this is abandoned: the child is killed and the batch retried by the next flush
REPLY_TIMEOUT_S = 120.0
# every this often while a batch is out, the child's CPU time is read: one that got less than STARVED_SHARE of a
# CPU over that time is starved (every core it may run on is busy)
PATIENCE_S = 2.0
STARVED_SHARE = 0.05
# after a starved child, batches are written by the gateway itself for this long before a child is tried again
INLINE_HOLD_S = 2.0

_OK, _REFUSED, _UNAVAILABLE = b"ok\n", b"refused\n", b"unavailable\n"
_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _unavailable(why: str) -> DependencyUnavailable:
    return DependencyUnavailable(f"usage writer process: {why}", code="store_unavailable")


def _cpu_seconds(pid: int) -> float | None:
    """The CPU time `pid` has used (None where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


class WriterProcess:
    """The gateway's side: starts the child, sends it one batch at a time.

    The child runs at the idle priority (SCHED_IDLE): any other process that wakes on its core takes the CPU from
    it at once. At a normal priority, even niced, a waking event loop or load generator waited up to a scheduler
    slice behind a batch, and one request in fifty was 2-3 ms late (bench: added p99 at one connection 2.3 ms;
    0.6 ms at the idle priority). An idle-priority process runs only on spare CPU: when the machine has none, the
    child gets (next to) no time, so one found starved while a batch is out is ended and the gateway writes the
    batch itself (`inline`), as it would without a child, for `INLINE_HOLD_S` before it tries a child again."""

    def __init__(
        self,
        database_url: str,
        inline: UsageWriter,
        *,
        secret_key: str = "",
        cpus: Sequence[int] | None = None,
    ) -> None:
        self._env = {**os.environ, "ODOCK_DATABASE_URL": database_url}
        if secret_key:
            self._env["ODOCK_SECRET_KEY"] = secret_key
        if cpus:
            self._env["ODOCK_USAGE_WRITER_CPUS"] = ",".join(map(str, cpus))
        self.inline = inline
        self.inline_until = 0.0  # monotonic time: batches are written inline until then
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one batch in flight

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start the child now, so that the first batch does not wait for its start (it starts again when needed)."""
        async with self._lock:
            await self._running()

    async def _running(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is None or process.returncode is not None:
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "odock.usage_writer",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self._env,
            )
        return process

    async def write(self, lines: Sequence[bytes], *, behind: bool = False) -> None:
        """Write one batch of records (JSON lines); raise as the store would."""
        async with self._lock:
            if time.monotonic() < self.inline_until:
                await self.inline.write(lines)
                return
            reply = await self._send(b"%d\n" % sum(map(len, lines)) + b"".join(lines))
            if reply is None:  # starved: written here instead
                log.info("usage writer: no spare CPU for its process; batches are written inline for a while")
                self.inline_until = time.monotonic() + INLINE_HOLD_S
                await self.inline.write(lines)
                return
        if reply == _OK:
            return
        if reply == _REFUSED:
            raise BadRequest("a usage record the store cannot hold", "usage_refused")
        raise _unavailable("the store cannot be reached" if reply == _UNAVAILABLE else "exited")

    async def _send(self, payload: bytes) -> bytes | None:
        """One batch to the child and its reply line (b"" when it ended; None when it was found starved and ended)."""
        process = await self._running()
        assert process.stdin is not None and process.stdout is not None
        reply = asyncio.ensure_future(process.stdout.readline())
        try:
            process.stdin.write(payload)
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            used = _cpu_seconds(process.pid)
            while True:
                done, _ = await asyncio.wait((reply,), timeout=PATIENCE_S)
                if done:
                    line = reply.result()
                    break
                now_used = _cpu_seconds(process.pid)
                if used is not None and now_used is not None and now_used - used < STARVED_SHARE * PATIENCE_S:
                    await self._end(process)  # mid-batch: its transaction, if it had begun, rolls back
                    return None
                if time.monotonic() > deadline:
                    await self._end(process)
                    raise _unavailable("no answer in time")
                used = now_used
        except OSError:
            line = b""  # its pipe broke: it ended
        finally:
            reply.cancel()
        if line not in (_OK, _REFUSED, _UNAVAILABLE):
            await self._end(process)  # ended (its own log says why), or out of step: the batch is retried
        return line

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if self._process is process:
            self._process = None

    async def close(self) -> None:
        """End the child: it finishes the batch it holds and exits when its stdin closes."""
        async with self._lock:
            process, self._process = self._process, None
            if process is None or process.returncode is not None:
                return
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(10.0):
                    await process.wait()
            except TimeoutError:
                await self._end(process)


# --- the child --------------------------------------------------------------------------------------------


async def _serve() -> None:
    from odock.settings import load_settings
    from odock.state.sql import SqlStore

    settings = load_settings()
    store = await SqlStore.open(settings.database_url, settings, migrate=False)
    decode = msgspec.json.Decoder(UsageRecord).decode
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    try:
        while header := await reader.readline():
            payload = await reader.readexactly(int(header))
            try:
                await store.insert_usage([decode(line) for line in payload.splitlines()])
                reply = _OK
            except BadRequest:
                reply = _REFUSED
            except DependencyUnavailable as exc:
                log.warning("usage writer: %s", exc)
                reply = _UNAVAILABLE
            out.write(reply)
            out.flush()
    finally:
        await store.close()


def main() -> None:
    # the idle priority first of all, so that even this process's start runs on spare CPU only (a process may
    # always lower its own priority)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from odock import logs
    from odock.settings import load_settings

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format, sys.stderr)  # stdout carries the replies
    if settings.usage_writer_cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, settings.usage_writer_cpus)
        except OSError as exc:
            log.warning("usage writer: ODOCK_USAGE_WRITER_CPUS not applied (%s)", exc.strerror)
    # Ctrl-C or a supervisor's SIGTERM reaches the whole process group: the gateway drains its queue through
    # this process before it stops, and its stdin closing is what ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # ends quietly when the gateway is gone or stopping
    with contextlib.suppress(KeyboardInterrupt, asyncio.IncompleteReadError, BrokenPipeError):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
