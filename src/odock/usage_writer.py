"""The usage writer process: batches of usage records written to the store by a child process of the gateway.

Why a process: written in the gateway process, each batch's rows were prepared on the event loop and inserted by
a driver thread that takes the GIL back after every row, so at one connection a request in fifty waited behind a
batch (a p99 tail of ~2 ms), and a lower priority for that thread made it worse (holding the GIL, it kept the loop
waiting). A thread cannot take Python work off the loop; a process can, and the kernel schedules it like any
other: below the loop (it runs at a lower priority) when they share a core, on another core when it has one
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
from collections.abc import Sequence

import msgspec

from odock.errors import BadRequest, DependencyUnavailable
from odock.state.records import UsageRecord

log = logging.getLogger("odock.usage")

# a batch not answered within this is abandoned: the child is killed and the batch retried by the next flush
REPLY_TIMEOUT_S = 120.0
# the writer's priority below the event loop's: when both share a core, the loop runs first whenever it wakes
WRITER_NICE = 5

_OK, _REFUSED, _UNAVAILABLE = b"ok\n", b"refused\n", b"unavailable\n"


def _unavailable(why: str) -> DependencyUnavailable:
    return DependencyUnavailable(f"usage writer process: {why}", code="store_unavailable")


class WriterProcess:
    """The gateway's side: starts the child (at the gateway's start, and again after it died) and sends it one
    batch at a time."""

    def __init__(self, database_url: str, *, secret_key: str = "", cpus: Sequence[int] | None = None) -> None:
        self._env = {**os.environ, "ODOCK_DATABASE_URL": database_url}
        if secret_key:
            self._env["ODOCK_SECRET_KEY"] = secret_key
        if cpus:
            self._env["ODOCK_USAGE_WRITER_CPUS"] = ",".join(map(str, cpus))
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

    async def write(self, lines: Sequence[bytes]) -> None:
        """Write one batch of records (JSON lines); raise as the store would."""
        payload = b"".join(lines)
        async with self._lock:
            process = await self._running()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(b"%d\n" % len(payload))
                process.stdin.write(payload)
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await process.stdin.drain()
                    reply = await process.stdout.readline()
            except (OSError, TimeoutError) as exc:
                await self._end(process)
                raise _unavailable(type(exc).__name__) from None
            if reply == _OK:
                return
            if reply == _REFUSED:
                raise BadRequest("a usage record the store cannot hold", "usage_refused")
            if reply != _UNAVAILABLE:  # the child ended (its own log says why)
                await self._end(process)
            raise _unavailable("the store cannot be reached" if reply == _UNAVAILABLE else "exited")

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
            except Exception:  # a failure of this batch, not of the process: retried by the gateway's backoff
                log.exception("usage writer: the batch could not be written")
                reply = _UNAVAILABLE
            out.write(reply)
            out.flush()
    finally:
        await store.close()


def main() -> None:
    from odock import logs
    from odock.settings import load_settings

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format, sys.stderr)  # stdout carries the replies
    if settings.usage_writer_cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, settings.usage_writer_cpus)
        except OSError as exc:
            log.warning("usage writer: ODOCK_USAGE_WRITER_CPUS not applied (%s)", exc.strerror)
    with contextlib.suppress(OSError):
        os.nice(WRITER_NICE)
    # Ctrl-C or a supervisor's SIGTERM reaches the whole process group: the gateway drains its queue through
    # this process before it stops, and its stdin closing is what ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # ends quietly when the gateway is gone or stopping
    with contextlib.suppress(KeyboardInterrupt, asyncio.IncompleteReadError, BrokenPipeError):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
