"""The plugin engine: each phase's plan (sequential, then parallel; reference §8.3), one execution's time limit
and failure mode, the evidence (metrics, the call's `plugin_runs`), and the bounded async post_response queue.

- Sequential plugins run in order and may modify or block; a block short-circuits the phase (and the call).
- Parallel plugins run at once, at most `max_parallel` per call, on a snapshot of the request: findings only.
- A plugin that raises or outlives `timeout_ms` fails open (recorded, the call goes on) or closed (500
  plugin_error); the default is closed in a sequential list and open in a parallel one.
- post_response runs after the answer went out; when async, on a bounded queue served by a few workers (a full
  queue drops the run and counts it): it never delays a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from odock import metrics
from odock.context import PluginRun
from odock.errors import GatewayError, PluginBlocked, PluginFailed
from odock.model import GatewayRequest, GatewayResponse, StreamEvent
from odock.plugins.base import MAX_FINDINGS, MAX_MESSAGE, Phase, Plugin, PluginResult, PluginView
from odock.plugins.config import PluginConfigError, PluginEntry, PluginsConfig, read_plugins_file
from odock.plugins.loader import build_plugin
from odock.plugins.storage import PluginStorage, StorageBackends

if TYPE_CHECKING:
    from odock.context import CallContext

log = logging.getLogger("odock.plugins")

ENV_PREFIX = "PLUGINS_ENV_"
_CHUNK = "\x00chunk:"  # per-call state slot of a stream_chunk plugin (view and running record)
_snapshot_encode = msgspec.json.encode
_snapshot_request = msgspec.json.Decoder(GatewayRequest).decode
_snapshot_response = msgspec.json.Decoder(GatewayResponse).decode


class Member:
    """One configured plugin in one phase."""

    __slots__ = ("entry", "fail_closed", "method", "name", "plugin")

    def __init__(self, entry: PluginEntry, plugin: Plugin, phase: str, sequential: bool) -> None:
        self.entry = entry
        self.plugin = plugin
        self.name = entry.name
        self.method = getattr(plugin, phase)
        on_error = entry.on_error or ("closed" if sequential else "open")
        self.fail_closed = on_error == "closed"


class PhaseRun:
    """A phase's members: sequential first, then parallel (the reference leaves the order open; §8.3 [INF])."""

    __slots__ = ("parallel", "run_async", "sequential")

    def __init__(self, sequential: list[Member], parallel: list[Member], run_async: bool) -> None:
        self.sequential = sequential
        self.parallel = parallel
        self.run_async = run_async

    def __bool__(self) -> bool:
        return bool(self.sequential or self.parallel)


def plugin_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`PLUGINS_ENV_*` values, prefix removed (reference §8.2)."""
    source = os.environ if environ is None else environ
    return {k[len(ENV_PREFIX) :]: v for k, v in source.items() if k.startswith(ENV_PREFIX)}


def _record(ctx: CallContext, run: PluginRun) -> None:
    if ctx.plugin_runs is None:
        ctx.plugin_runs = []
    ctx.plugin_runs.append(run)


def _observe(name: str, phase: str, outcome: str, seconds: float) -> None:
    metrics.child(metrics.PLUGIN_EXECUTIONS, name, phase, outcome).inc()
    metrics.child(metrics.PLUGIN_DURATION, name, phase).observe(seconds)
    if outcome in ("error", "timeout"):
        metrics.child(metrics.PLUGIN_ERRORS, name, phase, outcome).inc()


def blocked(name: str, result: PluginResult) -> PluginBlocked:
    message = (result.message or f"request blocked by plugin {name!r}")[:MAX_MESSAGE]
    return PluginBlocked(message, result.block_code(), status=result.block_status(), extra={"plugin": name})


def failed(name: str, phase: str, outcome: str) -> PluginFailed:
    what = "timed out" if outcome == "timeout" else "failed"
    return PluginFailed(f"plugin {name!r} {what} in {phase}", extra={"plugin": name})


class Plugins:
    """The configured plugins, their phase plans and the post_response workers (one per process)."""

    def __init__(
        self,
        config: PluginsConfig,
        plugins: Mapping[str, Plugin],
        *,
        backends: StorageBackends | None = None,
        max_parallel: int = 4,
        async_post_response: bool = True,
        queue_size: int = 128,
        workers: int = 2,
    ) -> None:
        self.config = config
        self.plugins = dict(plugins)
        self.backends = backends or StorageBackends()
        self.max_parallel = max(1, max_parallel)
        self.queue_size = max(1, queue_size)
        self.worker_count = max(1, workers)
        self.phases: dict[str, PhaseRun] = {}
        for phase, plan in config.phases.items():
            run_async = async_post_response if plan.run_async is None else plan.run_async
            self.phases[phase] = PhaseRun(
                [Member(config.entries[n], plugins[n], phase, True) for n in plan.sequential],
                [Member(config.entries[n], plugins[n], phase, False) for n in plan.parallel],
                run_async,
            )
        self._queue: asyncio.Queue[tuple[CallContext, GatewayRequest | None]] | None = None
        self._workers: list[asyncio.Task[None]] = []

    @classmethod
    def build(
        cls,
        config: PluginsConfig,
        *,
        env: Mapping[str, str] | None = None,
        transport: Any = None,
        **options: Any,
    ) -> Plugins:
        """Create every plugin a phase names (only those), checking each implements its phases."""
        where: dict[str, set[str]] = {}
        for phase, plan in config.phases.items():
            for name in plan.names():
                where.setdefault(name, set()).add(phase)
        values = plugin_env() if env is None else dict(env)
        plugins = {
            name: build_plugin(config.entries[name], phases, values, transport)
            for name, phases in where.items()
        }
        return cls(config, plugins, **options)

    @classmethod
    def from_file(cls, path: str, **options: Any) -> Plugins:
        return cls.build(read_plugins_file(path), **options)

    # --- what the pipeline asks ----------------------------------------------------------------------------

    def phase(self, phase: str) -> PhaseRun | None:
        run = self.phases.get(phase)
        return run if run else None

    def needs_request(self, *phases: str) -> bool:
        return any(m.plugin.needs_request for p in phases if (r := self.phase(p)) for m in self._members(r))

    def needs_response(self, *phases: str) -> bool:
        return any(m.plugin.needs_response for p in phases if (r := self.phase(p)) for m in self._members(r))

    @staticmethod
    def _members(run: PhaseRun) -> list[Member]:
        return run.sequential + run.parallel

    def _view(
        self,
        phase: Phase,
        member: Member,
        ctx: CallContext,
        request: GatewayRequest | None,
        response: GatewayResponse | None,
    ) -> PluginView:
        storage = PluginStorage(member.name, member.entry.storage_access, ctx, self.backends)
        if ctx.plugin_state is None:
            ctx.plugin_state = {}
        state = ctx.plugin_state.setdefault(member.name, {})
        return PluginView(phase, ctx, request, response, member.entry.config, storage, state)

    # --- async phases ----------------------------------------------------------------------------------------

    async def _execute(
        self, phase: Phase, member: Member, ctx: CallContext, view: PluginView
    ) -> tuple[PluginResult | None, str]:
        """Run one plugin within its time limit; return its result and outcome (recorded and counted)."""
        started = time.perf_counter()
        result: PluginResult | None = None
        outcome: str
        try:
            async with asyncio.timeout(member.entry.timeout_ms / 1000):
                result = await member.method(view)
            outcome = result.action if isinstance(result, PluginResult) else "allow"
            if result is not None and not isinstance(result, PluginResult):
                log.warning("plugin %s returned %r in %s: taken as allow", member.name, type(result), phase)
                result = None
        except TimeoutError:
            outcome = "timeout"
        except Exception:
            outcome = "error"
            log.exception("plugin %s failed in %s", member.name, phase, extra={"request_id": view.request_id})
        seconds = time.perf_counter() - started
        _observe(member.name, phase, outcome, seconds)
        findings = result.clean_findings() if result is not None else []
        _record(ctx, PluginRun(member.name, phase, outcome, int(seconds * 1e6), findings=findings or None))
        return result, outcome

    async def run(
        self,
        phase: Phase,
        ctx: CallContext,
        request: GatewayRequest | None,
        response: GatewayResponse | None = None,
    ) -> tuple[GatewayRequest | None, GatewayResponse | None]:
        """Run one phase: sequential plugins in order (modify, block), then parallel ones (findings); return the
        request and response as the plugins left them. Raises PluginBlocked or PluginFailed."""
        run = self.phases.get(phase)
        if run is None:
            return request, response
        for member in run.sequential:
            view = self._view(phase, member, ctx, request, response)
            result, outcome = await self._execute(phase, member, ctx, view)
            if outcome in ("error", "timeout"):
                if member.fail_closed:
                    raise failed(member.name, phase, outcome)
                continue
            request, response = view.request, view.response  # changed in place, or replaced below
            if result is None or result.action == "allow":
                continue
            if result.action == "block":
                raise blocked(member.name, result)
            request = result.request or request
            response = result.response or response
        if run.parallel:
            await self._parallel(phase, run.parallel, ctx, request, response)
        return request, response

    async def _parallel(
        self,
        phase: Phase,
        members: list[Member],
        ctx: CallContext,
        request: GatewayRequest | None,
        response: GatewayResponse | None,
    ) -> None:
        # findings only: the plugins see a copy, so nothing they do reaches the call
        snapshot = _snapshot_request(_snapshot_encode(request)) if request is not None else None
        answer = _snapshot_response(_snapshot_encode(response)) if response is not None else None
        limit = asyncio.Semaphore(self.max_parallel)

        async def one(member: Member) -> tuple[PluginResult | None, str]:
            async with limit:
                view = self._view(phase, member, ctx, snapshot, answer)
                return await self._execute(phase, member, ctx, view)

        outcomes = await asyncio.gather(*(one(m) for m in members))
        for member, (result, outcome) in zip(members, outcomes, strict=True):
            if result is not None and result.action != "allow":
                log.warning(
                    "parallel plugin %s returned %s in %s: ignored (findings only)",
                    member.name,
                    result.action,
                    phase,
                )
                outcome = "error"
            if outcome in ("error", "timeout") and member.fail_closed:
                raise failed(member.name, phase, outcome)

    # --- stream_chunk -------------------------------------------------------------------------------------

    def chunk(self, ctx: CallContext, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        """Pass one normalized stream event through the stream_chunk plugins (None: dropped; a list: the events
        a plugin released in its place, each passed to the plugins after it). A plugin's time limit is checked
        after each delta (a synchronous hook cannot be interrupted); a plugin failing open is skipped for the
        rest of the stream."""
        run = self.phases.get("stream_chunk")
        assert run is not None
        events: list[StreamEvent] | None = None  # None: still the one `event`
        for member in run.sequential:
            if events is None:
                replaced = self._chunk_replace(member, ctx, event)
                if replaced is None:
                    return None
                if isinstance(replaced, list):
                    events = replaced
                else:
                    event = replaced
                continue
            out: list[StreamEvent] = []
            for one in events:
                replaced = self._chunk_replace(member, ctx, one)
                if isinstance(replaced, list):
                    out += replaced
                elif replaced is not None:
                    out.append(replaced)
            events = out
        return event if events is None else events

    def _chunk_replace(
        self, member: Member, ctx: CallContext, event: StreamEvent
    ) -> StreamEvent | list[StreamEvent] | None:
        result = self._chunk_one(member, ctx, event)
        if result is None:
            return event
        if result.drop:
            return None
        if result.events is not None:
            return list(result.events)
        return result.event if result.event is not None else event

    def _chunk_one(self, member: Member, ctx: CallContext, event: StreamEvent) -> PluginResult | None:
        """One plugin on one delta: its modification (None: unchanged); raises on a block or a closed failure."""
        state = ctx.plugin_state
        if state is None:
            state = ctx.plugin_state = {}
        slot = state.get(_CHUNK + member.name)
        if slot is None:
            view = self._view("stream_chunk", member, ctx, ctx.request, None)
            slot = state[_CHUNK + member.name] = (
                view,
                PluginRun(member.name, "stream_chunk", "allow", count=0),
            )
            _record(ctx, slot[1])
        view, record = slot
        if record.outcome in ("error", "timeout"):
            return None  # failed open earlier in this stream
        started = time.perf_counter()
        outcome: str
        try:
            result = member.plugin.stream_chunk(view, event)
            outcome = result.action if isinstance(result, PluginResult) else "allow"
        except Exception:
            log.exception(
                "plugin %s failed on a stream delta", member.name, extra={"request_id": ctx.request_id}
            )
            result, outcome = None, "error"
        seconds = time.perf_counter() - started
        if outcome != "error" and seconds * 1000 > member.entry.timeout_ms:
            outcome = "timeout"
        _observe(member.name, "stream_chunk", outcome, seconds)
        record.count += 1
        record.duration_us += int(seconds * 1e6)
        if record.outcome in ("allow", "modify") and outcome != "allow":
            record.outcome = outcome
        if isinstance(result, PluginResult) and result.findings:
            record.findings = sorted(set(record.findings or ()) | set(result.clean_findings()))[:MAX_FINDINGS]
        if outcome in ("error", "timeout"):
            if member.fail_closed:
                raise failed(member.name, "stream_chunk", outcome)
            return None
        if not isinstance(result, PluginResult) or outcome == "allow":
            return None
        if outcome == "block":
            raise blocked(member.name, result)
        return result

    # --- post_response --------------------------------------------------------------------------------------

    async def after_response(self, ctx: CallContext, request: GatewayRequest | None) -> None:
        """The call is over and answered: run post_response now, or queue it (async)."""
        run = self.phases.get("post_response")
        if run is None:
            return
        if not run.run_async:
            await self._post_response(ctx, request)
            return
        if self._queue is None:
            self._start()
        assert self._queue is not None
        try:
            self._queue.put_nowait((ctx, request))
        except asyncio.QueueFull:
            metrics.PLUGIN_ASYNC_DROPPED.inc()
            log.warning("plugin post_response queue full (%d): run dropped", self.queue_size)
        metrics.PLUGIN_ASYNC_QUEUE.set(self._queue.qsize())

    async def _post_response(self, ctx: CallContext, request: GatewayRequest | None) -> None:
        # the answer is out: a block or a failure can only be recorded
        with contextlib.suppress(GatewayError):
            await self.run("post_response", ctx, request)

    def _start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(), name=f"plugin-post-response-{i}")
            for i in range(self.worker_count)
        ]

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            ctx, request = await self._queue.get()
            try:
                await self._post_response(ctx, request)
            except Exception:
                log.exception("post_response plugins failed", extra={"request_id": ctx.request_id})
            finally:
                self._queue.task_done()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (a bounded time) for the queued post_response runs."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._queue.join()

    async def close(self) -> None:
        """Finish the queued post_response runs (bounded), stop the workers, close every plugin."""
        await self.drain()
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers, self._queue = [], None
        for name, plugin in self.plugins.items():
            try:
                await plugin.close()
            except Exception:
                log.exception("plugin %s failed to close", name)


__all__ = ["PluginConfigError", "Plugins", "plugin_env"]
