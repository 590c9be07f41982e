"""One call in flight: its context, the client exchange, the route serving it, and its compensations.

Stages fill the context (`ctx`) and register compensations (`defer`); the route reads the body through
`read_json`/`read_body`, sends attempts through `send`, and answers through `respond` or `stream`. Nothing here
knows which stages exist: the order lives in the pipeline's list (`odock.pipeline.runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from odock import metrics
from odock.context import CallContext
from odock.dialects.body import decode_json
from odock.errors import BadRequest, ClientDisconnected, GatewayError, UpstreamError
from odock.model import GatewayRequest, GatewayResponse, StreamEvent
from odock.providers.registry import adapter_for
from odock.transport.base import UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from odock.pipeline.exchange import Exchange
    from odock.pipeline.route import Route
    from odock.pipeline.runner import Pipeline
    from odock.pipeline.stage import Stage
    from odock.routing.router import Candidate, RoutePlan

log = logging.getLogger("odock.call")

__all__ = ["Answered", "Call", "FinalChunk", "aclose", "estimate_tokens", "upstream_error_body"]

# async, or plain when it has nothing to wait for (no coroutine to make and run for it)
Compensation = Callable[[], Awaitable[None] | None]


def estimate_tokens(size_bytes: int) -> int:
    """A cheap input-token estimate for reservations (~4 bytes per token); usage is settled from the provider."""
    return max(1, size_bytes // 4)


class FinalChunk(bytes):
    """The last bytes of a stream whose producer saw the terminal event (`[DONE]`, `message_stop`, …): they go
    out together with the end of the response, so the client has its whole answer without waiting for the
    upstream's own end of body, which is then drained (the connection goes back to the pool) after the fact."""

    __slots__ = ()


class Answered(Exception):
    """Raised by a stage's `before` hook that answers the call itself (a cache hit): the runner skips the later
    stages, routing and the upstream, and the route replays `events` (a whole normalized answer) in its dialect;
    only the stages placed before `stage` see the answer (their delta and after hooks)."""

    def __init__(self, stage: Any, events: list[StreamEvent]) -> None:
        super().__init__(stage.name)
        self.stage = stage
        self.events = events


class Call:
    """The per-call state shared by the stages and the route, from the first gate to the usage record."""

    __slots__ = (
        "_deferred",
        "after_stages",
        "ctx",
        "delta_stages",
        "exchange",
        "headers_from",
        "json",
        "needs_response",
        "pipeline",
        "plan",
        "primary",
        "request",
        "route",
        "route_state",
        "stage_state",
    )

    def __init__(self, pipeline: Pipeline, exchange: Exchange, route: Route, client_ip: str) -> None:
        self.pipeline = pipeline
        self.exchange = exchange
        self.route = route
        self.ctx = CallContext(
            request_id=exchange.request_id,
            route=route.name,
            client_ip=client_ip,
            required_provider=route.family,
        )
        # the decoded JSON body (native routes edit it in place: model -> slug) and, when a stage needs it or
        # the route translates, the normalized request
        self.json: dict[str, Any] | None = None
        self.request: GatewayRequest | None = None
        self.route_state: Any = None  # whatever the route keeps between decode, send and respond
        self.primary: Candidate | None = None  # the requested model's deployment (model access)
        self.plan: RoutePlan | None = None  # the routing stage's attempt plan
        # a stage that answers with response headers (X-RateLimit-*) sets this
        self.headers_from: Callable[[CallContext], dict[str, str]] | None = None
        self._deferred: list[Compensation] = []
        # the stages whose hooks see the answer: all of them, or those before a stage that answered itself
        self.delta_stages = pipeline.delta_stages
        self.after_stages = pipeline.after_stages
        self.needs_response = pipeline.needs_response
        self.stage_state: dict[str, Any] | None = None  # per-call state a stage keeps (by stage name)

    # --- compensations -----------------------------------------------------------------------------------

    def defer(self, compensation: Compensation) -> None:
        """Run `compensation` when the call ends, however it ends (reverse registration order)."""
        self._deferred.append(compensation)

    async def unwind(self) -> None:
        """Run every compensation in reverse; each one's failure is logged and the rest still run."""
        deferred, self._deferred = self._deferred, []
        for compensation in reversed(deferred):
            try:
                pending = compensation()
                if pending is not None:
                    await pending
            except Exception:
                log.exception("compensation failed", extra={"request_id": self.ctx.request_id})

    def before_last_bytes(self, action: Callable[[], None], what: str) -> None:
        """Run `action` once: just before the response's last bytes leave (a client never holds a complete answer
        whose usage record a killed process could not replay from the spool), or, for a call that ends without a
        response, as a compensation. Its failure is logged as `what`, never raised: the response must still go."""
        done = False

        def run() -> None:
            nonlocal done
            if not done:
                done = True
                try:
                    action()
                except Exception:
                    log.exception("%s failed", what, extra={"request_id": self.ctx.request_id})

        self.exchange.before_end = run
        self.defer(run)

    def step_aside(self, stage: Any) -> None:
        """`stage` has nothing to do on this call: its delta and after hooks are left out, and when no stage
        left needs the decoded response, the route relays the answer's bytes again (DESIGN principle 1)."""
        self.delta_stages = tuple(s for s in self.delta_stages if s is not stage)
        self.after_stages = tuple(s for s in self.after_stages if s is not stage)
        if stage.needs_response:
            self.needs_response = any(s.needs_response for s in (*self.after_stages, *self.delta_stages))

    # --- client side -------------------------------------------------------------------------------------

    def credential(self) -> str | None:
        """The presented Odock key: Authorization Bearer > X-API-Key > x-goog-api-key > ?key= (reference §3.1)."""
        headers = self.exchange.headers
        auth = headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return headers.get("x-api-key") or headers.get("x-goog-api-key") or self.exchange.query("key")

    async def read_body(self) -> bytes:
        """The whole request body, within the body size and time limits."""
        limits = self.pipeline.limits
        body = await self.exchange.body(limits.max_body_bytes, limits.read_timeout_s)
        self.ctx.body_bytes = len(body)
        return body

    async def read_json(self) -> dict[str, Any]:
        """Read and parse a JSON object body (400 invalid_request_body when it is not one)."""
        # the Content-Type is not enforced: curl's default form type on a JSON body is a common, harmless slip
        body = await self.read_body()
        if not body:
            raise BadRequest("request body is empty", "invalid_request_body")
        parsed = decode_json(body)
        if not isinstance(parsed, dict):
            raise BadRequest("request body must be a JSON object", "invalid_request_body")
        self.ctx.estimated_input_tokens = estimate_tokens(len(body))
        self.json = parsed
        self.ctx.prompt_source = (body, parsed)  # measured if a reservation asks (CallContext.prompt)
        return parsed

    def governed_headers(self) -> list[tuple[bytes, bytes]]:
        if self.headers_from is None:
            return []
        headers = self.headers_from(self.ctx)
        return [(k.lower().encode(), v.encode()) for k, v in headers.items()] if headers else []

    # --- upstream ----------------------------------------------------------------------------------------

    async def send(
        self, candidate: Candidate, url: str, body: bytes, headers: dict[str, str] | None = None
    ) -> UpstreamResponse:
        """POST to the upstream; a non-2xx answer becomes an UpstreamError (read whole, for the client)."""
        adapter = adapter_for(candidate.provider.type)
        request_headers = adapter.headers(candidate.provider)
        if headers:
            request_headers.update(headers)
        request = UpstreamRequest("POST", url, request_headers, body, adapter.timeouts(candidate.provider))
        if self.ctx.upstream_started is None:
            self.ctx.upstream_started = time.perf_counter()
        resp = await self.pipeline.transport.send(request)
        # also on an error: the provider's request id is what its support asks for
        self.ctx.provider_request_id = resp.headers.get("x-request-id") or resp.headers.get("request-id")
        if resp.status >= 400:
            data = await resp.read()
            raise adapter.upstream_error(resp.status, data, resp.headers)
        return resp

    # --- respond -----------------------------------------------------------------------------------------

    async def answered(self, response: GatewayResponse | None) -> None:
        """Run the stages' after-hooks (reverse order) once the upstream answered."""
        for stage in self.after_stages:
            await stage.after(self, response)

    def delta(self, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        """Pass one normalized stream event through the stages' delta hooks (None: dropped; a list: the
        event became several, each passed through the stages after the one that returned it)."""
        stages = self.delta_stages
        for i, stage in enumerate(stages):
            passed = stage.on_delta(self, event)
            if passed is None:
                return None
            if isinstance(passed, list):
                return _fan_out(self, passed, stages[i + 1 :])
            event = passed
        return event

    async def respond(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        self.ctx.status = status
        await self.exchange.respond(status, body, content_type, self.governed_headers())

    async def stream(  # noqa: C901
        self,
        produce: AsyncIterator[bytes],
        fail: Callable[[GatewayError], bytes],
        content_type: bytes = b"text/event-stream",
    ) -> None:
        """Stream `produce` to the client; cut the upstream when the client leaves; end a broken upstream
        stream with an explicit error event (never a clean-looking end). When a stage sees the deltas (and may
        hold the first ones back), the head goes with the first bytes, or after HEAD_WAIT_S (`_HeldHead`)."""
        ctx, req = self.ctx, self.exchange
        ctx.status = 200
        head: _HeldHead | None = None
        if self.delta_stages:  # a stage may hold the first bytes back: the head waits for them (one write)
            head = _HeldHead(req, content_type, self.governed_headers())
        else:
            await req.start_stream(200, content_type, self.governed_headers())
        # the chunks are pumped in this task; a watcher cancels it when the client disconnects (one extra task
        # per stream, no asyncio.wait), and cancelling closes the upstream response, which stops the upstream
        this = asyncio.current_task()
        assert this is not None
        left = False

        async def watch() -> None:
            nonlocal left
            await req.wait_disconnect()
            left = True
            this.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        outcome = "completed"
        error: GatewayError | None = None
        ended = False
        try:
            try:
                async for chunk in produce:
                    if ended:
                        continue  # draining the upstream after the terminal event (nothing should follow it)
                    if ctx.first_byte_at is None and chunk:
                        ctx.first_byte_at = time.perf_counter()
                    if type(chunk) is FinalChunk:
                        # the server reports a finished response as a disconnect: stop watching first
                        watcher.cancel()
                        ended = True
                        if head is not None:
                            await head.sent()
                            head = None
                        await req.end(chunk)
                    elif chunk:
                        if head is not None:
                            await head.sent()
                            head = None
                        await req.write(chunk)
            finally:
                watcher.cancel()
        except asyncio.CancelledError:
            if not left:
                if head is not None:
                    head.cancel()
                raise  # cancelled from outside (shutdown): not ours to swallow
        except ClientDisconnected:
            left = True
        except GatewayError as err:
            error = err
        except Exception:
            # a bug after the head went out: the status cannot change, so the stream still ends with the route's
            # error event (the edge could only end it, which would look like a complete answer)
            log.exception("unhandled error mid-stream", extra={"request_id": ctx.request_id})
            error = GatewayError("internal gateway error", "internal_error")
        if left:
            # the watcher may have fired after the last chunk, leaving a cancellation pending: absorb it before
            # awaiting anything else, so it cannot land in the bookkeeping below
            await _absorb_cancellation(this)
            if head is not None:
                head.cancel()
            outcome, ctx.outcome, ctx.error_code = "cancelled", "cancelled", "client_disconnected"
        elif error is not None and ended:
            # the client already has the complete answer; only the upstream's trailing bytes went wrong
            log.warning(
                "upstream failed after its terminal event: %s",
                error.code,
                extra={"request_id": ctx.request_id},
            )
        elif error is not None:
            outcome, ctx.outcome, ctx.error_code = "failed", "failed", error.code
            log.warning("stream failed mid-way: %s", error.code, extra={"request_id": ctx.request_id})
            with contextlib.suppress(ClientDisconnected):
                if head is not None:
                    await head.sent()
                    head = None
                await req.write(fail(error))
                await req.end()
        elif not ended:
            if head is not None:
                await head.sent()
                head = None
            await req.end()
        await aclose(produce)
        metrics.child(metrics.STREAMS, ctx.route, outcome).inc()
        if ctx.first_byte_at is not None:
            metrics.child(metrics.TIME_TO_FIRST_TOKEN, ctx.route).observe(ctx.first_byte_at - ctx.started)
        if outcome == "completed" and self.after_stages:
            await self.answered(None)

    def fail(self, err: GatewayError) -> None:
        self.ctx.status = err.status
        self.ctx.error_code = err.code
        self.ctx.outcome = "failed"


# the longest a stream's head waits for the first bytes a stage held back: the client's SDK returns its stream
# object only once the head is in, and a short answer screened whole usually ends well within this
HEAD_WAIT_S = 0.025


class _HeldHead:
    """A stream's response head held until its first bytes (the transport then sends both in one write, where a
    head sent at once goes alone: a syscall and a TCP segment more, and a client woken twice), or until
    HEAD_WAIT_S has passed, whatever the stages still hold."""

    __slots__ = ("_args", "_req", "_task", "_timer")

    def __init__(self, req: Exchange, content_type: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._req = req
        self._args = (200, content_type, headers)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            HEAD_WAIT_S, self._due
        )

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._req.start_stream(*self._args))

    async def sent(self) -> None:
        """Send the head now unless its timer already did (the bytes that follow go after it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            await self._req.start_stream(*self._args)
        elif self._task is not None:
            await self._task

    def cancel(self) -> None:
        """The stream ends without a byte for the client (it left, or the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
        elif self._task is not None:
            self._task.cancel()


def _fan_out(call: Call, events: list[StreamEvent], stages: tuple[Stage, ...]) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for event in events:
        current: list[StreamEvent] = [event]
        for stage in stages:
            nxt: list[StreamEvent] = []
            for item in current:
                passed = stage.on_delta(call, item)
                if isinstance(passed, list):
                    nxt.extend(passed)
                elif passed is not None:
                    nxt.append(passed)
            current = nxt
        out.extend(current)
    return out


async def _absorb_cancellation(task: asyncio.Task[Any]) -> None:
    """Consume a cancellation this task requested of itself (delivered or still pending)."""
    if task.cancelling():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        while task.cancelling():
            task.uncancel()


async def aclose(stream: AsyncIterator[bytes]) -> None:
    """Close an async generator now (releasing its upstream connection) rather than at garbage collection."""
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def upstream_error_body(err: UpstreamError) -> dict[str, Any]:
    """The upstream's own error, kept for the client (reference §10.8: 502 carries the upstream body)."""
    if not err.upstream_body:
        return {}
    if "json" in err.upstream_content_type:
        try:
            return {
                "upstream_status": err.upstream_status,
                "upstream_error": msgspec.json.decode(err.upstream_body),
            }
        except msgspec.DecodeError:
            pass
    return {
        "upstream_status": err.upstream_status,
        "upstream_error": err.upstream_body[:2000].decode("utf-8", "replace"),
    }
