"""Stdio MCP servers as a supervised pool of processes per server.

    StdioPools ── one StdioPool per server (replaced when the server's command, args or environment change)
    StdioPool  ── at most `max_processes` processes; a call goes to the least busy one (a new one while all are
                  busy and the bound allows); each process is initialized once by the gateway (`init_timeout_ms`)
                  and then shared by every client: request ids are rewritten per process and restored
    supervision ─ processes idle longer than `idle_ttl_s` or older than `max_lifetime_s` are ended by a reaper;
                  a failed start backs off exponentially and, after 5 in a row, opens a breaker for 30 s (503)
    ending      ─ every process runs in its own process group, and the whole group is ended (SIGTERM, then
                  SIGKILL) when the process is retired and on shutdown; its pipes are closed with it
    stderr      ─ kept per process in a bounded ring buffer (diagnostics through `stderr_tail`), never logged

The client speaks Streamable HTTP to the gateway; `initialize` is answered from the process's own result,
`notifications/*` from the client are accepted (202), `server/discover` is answered "method not found" (so the SDK
falls back to the handshake era these processes speak), GET is 405 (no server-initiated stream). Wire framing:
newline-delimited JSON, as the official SDK's stdio transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from odock import metrics
from odock.errors import DependencyUnavailable, GatewayError, MethodNotAllowed, UpstreamError
from odock.mcp.call import McpRequest
from odock.mcp.records import McpServer

log = logging.getLogger("odock.mcp.stdio")

PROTOCOL_VERSION = "2025-06-18"
DEFAULTS = {"max_processes": 4, "init_timeout_ms": 10_000, "idle_ttl_s": 300, "max_lifetime_s": 3600}
STDERR_RING_BYTES = 16 * 1024
MAX_LINE = 32 * 1024 * 1024
BREAKER_FAILURES = 5
BREAKER_OPEN_S = 30.0
KILL_GRACE_S = 2.0
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def stdio_error(message: str) -> UpstreamError:
    return UpstreamError(message, "mcp_stdio_error", kind="5xx")


def resolve_env(env: dict[str, str]) -> dict[str, str]:
    """The server's environment over a minimal base (PATH, HOME, LANG), `${VAR}` expanded from the gateway's."""

    def expand(value: str) -> str:
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)

    base = {
        k: os.environ[k]
        for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
        if k in os.environ
    }
    return {**base, **{k: expand(v) for k, v in env.items()}}


class StdioProcess:
    """One server process: its pipes, the in-flight calls (by the process-side id) and its stderr ring."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.started = time.monotonic()
        self.last_used = self.started
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.stderr: deque[bytes] = deque()
        self.stderr_size = 0
        self.init_result: dict[str, Any] | None = None
        self.dead = False
        self.readers = [
            asyncio.create_task(self._read_stdout(), name="mcp-stdio-out"),
            asyncio.create_task(self._read_stderr(), name="mcp-stdio-err"),
        ]

    @property
    def busy(self) -> int:
        return len(self.pending)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                self._dispatch(line)
        except (ValueError, asyncio.LimitOverrunError):
            log.warning("stdio MCP server wrote a line above the limit; ending it")
        except asyncio.CancelledError:
            raise
        finally:
            self._fail_all("the stdio MCP server process ended")

    def _dispatch(self, line: bytes) -> None:
        try:
            message = _decoder.decode(line)
        except msgspec.DecodeError:
            return  # not JSON-RPC (a stray print): ignored, as the SDK does
        if not isinstance(message, dict):
            return
        rid = message.get("id")
        if "method" in message:
            if (
                rid is not None
            ):  # a server → client request (sampling, elicitation): not supported through here
                self.write(
                    {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "not supported"}}
                )
            return  # notifications (logs, progress) are dropped: no client stream to put them on
        future = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if future is not None and not future.done():
            future.set_result(message)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            chunk = await self.proc.stderr.read(4096)
            if not chunk:
                return
            self.stderr.append(chunk)
            self.stderr_size += len(chunk)
            while self.stderr_size > STDERR_RING_BYTES and len(self.stderr) > 1:
                self.stderr_size -= len(self.stderr.popleft())

    def _fail_all(self, message: str) -> None:
        self.dead = True
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(stdio_error(message))

    def write(self, message: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing() or self.dead:
            raise stdio_error("the stdio MCP server process is not running")
        stdin.write(_encoder.encode(message) + b"\n")

    async def call(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request (its id replaced by a process-side one) and return the answer with the id restored."""
        local = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[local] = future
        self.last_used = time.monotonic()
        try:
            self.write({**message, "id": local})
            async with asyncio.timeout(timeout_s):
                answer = await future
        except TimeoutError:
            raise UpstreamError(
                "the stdio MCP server did not answer in time", "mcp_stdio_error", kind="timeout"
            ) from None
        finally:
            self.pending.pop(local, None)
            self.last_used = time.monotonic()
        return {**answer, "id": message.get("id")}

    def stderr_tail(self) -> str:
        return b"".join(self.stderr).decode("utf-8", "replace")

    async def end(self) -> None:
        """End the whole process group: SIGTERM, then SIGKILL after a grace period; close the pipes."""
        self._fail_all("the stdio MCP server process was retired")
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        else:
            # the leader is gone; children it left in its group must go too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for reader in self.readers:
            reader.cancel()
        for reader in self.readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        metrics.MCP_STDIO_PROCESSES.dec()
        metrics.child(metrics.MCP_STDIO_EVENTS, "exit").inc()


@dataclass
class StdioPool:
    server: McpServer
    processes: list[StdioProcess] = field(default_factory=list)
    failures: int = 0
    retry_at: float = 0.0
    starting: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # resolved when a start under way ends (callers waiting at the bound look again)
    _start_ended: asyncio.Future[None] | None = None

    def setting(self, name: str) -> float:
        value = self.server.config.get(name, DEFAULTS[name])
        return float(value) if isinstance(value, int | float) else float(DEFAULTS[name])

    async def acquire(self) -> StdioProcess:
        """The least busy live process, or a new one while every process is busy and the bound allows; at the
        bound with none running yet (all still starting), wait for a start to end and look again."""
        bound = max(1, int(self.setting("max_processes")))
        while True:
            await self.reap()
            live = [p for p in self.processes if not p.dead]
            idle = min(live, key=lambda p: p.busy, default=None)
            at_bound = len(live) + self.starting >= bound
            if idle is not None and (idle.busy == 0 or at_bound):
                return idle
            if not at_bound:
                return await self.spawn()
            if self._start_ended is None:
                self._start_ended = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._start_ended)

    async def spawn(self) -> StdioProcess:
        now = time.monotonic()
        if now < self.retry_at:
            metrics.child(metrics.MCP_STDIO_EVENTS, "breaker_open").inc()
            retry = max(1, int(self.retry_at - now + 0.999))
            raise DependencyUnavailable(
                "the stdio MCP server keeps failing to start; retrying later",
                "mcp_stdio_unavailable",
                headers={"Retry-After": str(retry)},
            )
        self.starting += 1
        try:
            process = await self._start()
        except GatewayError:
            self.failures += 1
            backoff = (
                BREAKER_OPEN_S
                if self.failures >= BREAKER_FAILURES
                else min(BREAKER_OPEN_S, 0.1 * 2**self.failures)
            )
            self.retry_at = time.monotonic() + backoff
            raise
        finally:
            self.starting -= 1
            ended, self._start_ended = self._start_ended, None
            if ended is not None:
                ended.set_result(None)
        self.failures = 0
        self.processes.append(process)
        return process

    async def _start(self) -> StdioProcess:
        server = self.server
        assert server.stdio_command is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                server.stdio_command,
                *server.stdio_args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=resolve_env(server.stdio_env),
                start_new_session=True,  # its own process group: ended whole
                limit=MAX_LINE,
            )
        except OSError as exc:
            metrics.child(metrics.MCP_STDIO_EVENTS, "crash").inc()
            raise stdio_error(f"could not start the stdio MCP server: {type(exc).__name__}") from None
        metrics.MCP_STDIO_PROCESSES.inc()
        metrics.child(metrics.MCP_STDIO_EVENTS, "spawn").inc()
        process = StdioProcess(proc)
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "odock-gateway", "version": "1"},
            },
        }
        try:
            answer = await process.call(init, self.setting("init_timeout_ms") / 1000)
            if "result" not in answer:
                raise stdio_error("the stdio MCP server refused to initialize")
            process.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except UpstreamError as err:
            metrics.child(
                metrics.MCP_STDIO_EVENTS, "init_timeout" if err.kind == "timeout" else "crash"
            ).inc()
            await process.end()
            raise stdio_error(f"the stdio MCP server did not initialize: {err.message}") from None
        process.init_result = answer["result"]
        return process

    async def reap(self) -> None:
        """Retire dead processes, those idle past the TTL, and idle ones past their maximum lifetime."""
        now = time.monotonic()
        idle_ttl, lifetime = self.setting("idle_ttl_s"), self.setting("max_lifetime_s")
        keep: list[StdioProcess] = []
        retire: list[tuple[StdioProcess, str]] = []
        for p in self.processes:
            if p.dead:
                retire.append((p, "crash"))
            elif p.busy == 0 and now - p.last_used > idle_ttl:
                retire.append((p, "idle_reaped"))
            elif p.busy == 0 and now - p.started > lifetime:
                retire.append((p, "lifetime_reaped"))
            else:
                keep.append(p)
        self.processes = keep
        for p, event in retire:
            metrics.child(metrics.MCP_STDIO_EVENTS, event).inc()
            await p.end()

    async def close(self) -> None:
        processes, self.processes = self.processes, []
        await asyncio.gather(*(p.end() for p in processes), return_exceptions=True)


def _fingerprint(server: McpServer) -> tuple[Any, ...]:
    return (server.stdio_command, tuple(server.stdio_args), tuple(sorted(server.stdio_env.items())))


class StdioPools:
    """Every stdio server's pool in this process, and the reaper that supervises them."""

    def __init__(self, reap_interval_s: float = 1.0) -> None:
        self.pools: dict[str, tuple[tuple[Any, ...], StdioPool]] = {}
        self.reap_interval_s = reap_interval_s
        self._reaper: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def pool(self, server: McpServer) -> StdioPool:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="mcp-stdio-reaper")
        fingerprint = _fingerprint(server)
        entry = self.pools.get(server.id)
        if entry is not None and entry[0] == fingerprint:
            entry[1].server = server  # settings (TTL, bound) may change in place
            return entry[1]
        pool = StdioPool(server)
        self.pools[server.id] = (fingerprint, pool)
        if entry is not None:  # its command changed: the old processes go
            task = asyncio.create_task(entry[1].close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return pool

    def process_count(self) -> int:
        return sum(len(pool.processes) for _, pool in self.pools.values())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            for _, pool in list(self.pools.values()):
                try:
                    await pool.reap()
                except Exception:
                    log.exception("stdio pool reap failed")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        pools, self.pools = self.pools, {}
        await asyncio.gather(
            *(pool.close() for _, pool in pools.values()), *self._retiring, return_exceptions=True
        )


async def _answer(pool: StdioPool, message: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """One client message's answer (None for a notification or a response: nothing to send back)."""
    method, rid = message.get("method"), message.get("id")
    if method is None or rid is None:
        return None
    if method == "server/discover":
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
    process = await pool.acquire()
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": rid, "result": process.init_result}
    return await process.call(message, timeout_s)


async def relay_stdio(
    pools: StdioPools, server: McpServer, state: McpRequest, method: str
) -> tuple[int, bytes]:
    """Answer a client's POST from the server's pool: (status, JSON body)."""
    if method == "GET":
        raise MethodNotAllowed("a stdio MCP server has no server-initiated stream", "method_not_allowed")
    if method == "DELETE":
        return 202, b""
    pool = pools.pool(server)
    timeout = server.config.get("timeout_ms")
    timeout_s = float(timeout) / 1000 if isinstance(timeout, int | float) and timeout > 0 else 300.0
    raw = _decoder.decode(state.body)
    items = raw if isinstance(raw, list) else [raw]
    answers = [
        a for a in await asyncio.gather(*(_answer(pool, m, timeout_s) for m in items)) if a is not None
    ]
    if not answers:
        return 202, b""
    return 200, _encoder.encode(answers if isinstance(raw, list) else answers[0])
