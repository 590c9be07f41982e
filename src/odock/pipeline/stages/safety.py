"""SafetySec as a stage (reference §7): the request phase at `pre_reserve` (after model access, so the model's
policy is known; before the reservations, so a block has nothing to release), the response phase in the
after-hook (unary) and the delta hook (streams, with bounded hold-back: `odock.safety.stream`), or over the
upstream's own events where a native route can keep them (`framed`).

A call whose resolved policy is off stands down at once (`call.skip`): its native route stays a byte relay.

The external guard (`odock.safety.guard`) sees the request phase's texts (after the built-in detectors) and a
unary answer's texts (after the built-in response phase): allow, modify or block either. A streamed answer is not
sent to it: the delta hooks are synchronous, so the only way to wait for a webhook before the client sees the text
would be to buffer the whole answer, which streams never do (see `odock.safety.stream`); a stream's response
phase is the built-in detectors' and the operator's patterns'.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from odock import metrics
from odock.pipeline.stage import Stage
from odock.safety.engine import (
    SIGNAL_SCORES,
    SafetyEngine,
    Screen,
    blocked,
    fingerprint,
    response_texts,
    texts_of,
    walk_json,
    walk_request,
    walk_response,
)
from odock.safety.guard import GuardFailed, WebhookGuard
from odock.safety.sessions import SCRIPT as SESSION_SCRIPT
from odock.safety.sessions import MemorySessions, RedisSessions
from odock.safety.stream import FramedText, Reframe, StreamGuard, guard_hits

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.model import GatewayResponse, StreamEvent
    from odock.pipeline.call import Call
    from odock.safety.sessions import Sessions

_SCREEN = "safety"
_STREAM = "safety.stream"


class SafetySec(Stage):
    name = "safety"
    needs_response = True  # per call: stands down (call.skip) when the response phase has nothing to do

    def __init__(
        self,
        engine: SafetyEngine,
        sessions: Sessions,
        guard: WebhookGuard | None = None,
        session_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.guard = guard
        self.session_errors = session_errors

    async def before(self, call: Call) -> None:
        ctx = call.ctx
        policy = self.engine.policy(
            ctx.organisation.policies if ctx.organisation else None,
            ctx.team.policies if ctx.team else None,
            ctx.key.policies if ctx.key else None,
            ctx.model.policies if ctx.model else None,
        )
        if not policy.enabled:
            call.step_aside(self)
            return
        screen = Screen(policy, sink=ctx)
        if call.stage_state is None:
            call.stage_state = {}
        call.stage_state[_SCREEN] = screen
        call.defer(partial(count_decisions, screen))
        if not policy.active("response") and (self.guard is None or call.ctx.stream):
            call.step_aside(self)
        if policy.active("request"):
            self.engine.screen_request(call.json, call.request, screen)
        pending = self.session_score(call, screen)
        if pending is not None:
            await pending
        if self.guard is not None and call.json is not None:
            await self._external(call, screen)

    def session_score(self, call: Call, screen: Screen) -> Awaitable[None] | None:
        """Raise the session's score by this request's signals; block a session at the threshold. Returns what
        to await when the store is asked on its own (None: done already, as in memory, or left to the final
        gate's round trip)."""
        ctx = call.ctx
        increment = sum(SIGNAL_SCORES[s] for s in screen.signals)
        fp = fingerprint(
            ctx.client_ip, ctx.key.id if ctx.key else None, call.exchange.headers.get("user-agent")
        )
        ttl_s = self.engine.config.session_ttl_s
        if isinstance(self.sessions, RedisSessions) and _final_gate_follows(call):
            # cluster mode: the script rides in the final gate's round trip (Redis applies it atomically); a
            # call that ends before the gate sends it still has its signals counted, after the fact
            rider = _SessionRider(self, screen, ctx, *RedisSessions.call(fp, increment, ttl_s))
            ctx.redis_riders = [*(ctx.redis_riders or ()), rider]
            call.defer(rider.count_if_left)
            return None
        if isinstance(self.sessions, MemorySessions):
            self.decide(self.sessions.bump_now(fp, increment, ttl_s), screen, ctx)
            return None
        return self._bump(fp, increment, ttl_s, screen, ctx)

    async def _bump(self, fp: str, increment: float, ttl_s: float, screen: Screen, ctx: CallContext) -> None:
        try:
            score = await self.sessions.bump(fp, increment, ttl_s)
        except self.session_errors:
            self.session_failed()
        self.decide(score, screen, ctx)

    def session_failed(self) -> NoReturn:
        metrics.child(metrics.SECURITY_ERRORS, "request", "session", "closed").inc()
        raise self.engine.failure("session") from None

    def decide(self, score: float, screen: Screen, ctx: CallContext) -> None:
        if score >= self.engine.config.block_threshold:
            screen.decisions[("request", "session", "session_score")] = "block"
            ctx.security = screen.evidence()
            raise blocked("request", "session", "session_score")

    async def _external(self, call: Call, screen: Screen) -> None:
        assert call.json is not None
        swap = await self.guard_verdict(call, screen, "request", list(dict.fromkeys(texts_of(call.json))))
        if swap is not None:
            walk_json(call.json, swap)
            if call.request is not None:
                walk_request(call.request, swap)

    async def guard_verdict(
        self,
        call: Call,
        screen: Screen,
        phase: str,
        texts: list[str],
        about: dict[str, Any] | None = None,
    ) -> Callable[[str], str] | None:
        """Ask the external guard about one phase's texts (`about`: more of what the call is, e.g. an MCP server
        and tool): raises on a block (or a failure failing closed); returns the replacement of each text on a
        modify, None otherwise."""
        assert self.guard is not None
        if not texts:
            return None
        ctx = call.ctx
        payload: dict[str, Any] = {
            "phase": phase,
            "request_id": ctx.request_id,
            "route": ctx.route,
            "model": ctx.requested_model,
            **(about or {}),
            "texts": texts,
        }
        metrics.TALLY.inc(metrics.SECURITY_MODULE_RUNS, (phase, "external"))
        try:
            verdict = await self.guard.check(payload)
        except GuardFailed:
            mode = "open" if self.guard.config.fail_open else "closed"
            metrics.child(metrics.SECURITY_ERRORS, phase, "external", mode).inc()
            if mode == "closed":
                raise self.engine.failure("external") from None
            return None
        if verdict.action == "block":
            screen.decisions[(phase, "external", verdict.category)] = "block"
            ctx.security = screen.evidence()
            raise blocked(phase, "external", verdict.category)
        if verdict.action != "modify" or verdict.texts is None:
            return None
        replaced = dict(zip(texts, verdict.texts, strict=True))
        screen.decisions[(phase, "external", verdict.category)] = "redact"
        ctx.security = screen.evidence()
        return lambda text: replaced.get(text, text)

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        state = call.stage_state
        assert state is not None
        guard = state.get(_STREAM)
        if guard is None:
            guard = state[_STREAM] = StreamGuard(self.engine, state[_SCREEN])
        return guard.feed(event)

    def framed(self, call: Call, reframe: Reframe) -> FramedText | None:
        state = call.stage_state
        assert state is not None
        screen = state[_SCREEN]
        return FramedText(
            self.engine.config.hold_chars,
            guard_hits(self.engine, screen),
            reframe,
            lambda finding, action: screen.note("response", finding, action),
        )

    def rewrote(self, call: Call) -> bool:
        # every change to an answer (a detector's, a pattern's or the external guard's redaction) is noted as a
        # response-phase decision stricter than observe
        screen = call.stage_state.get(_SCREEN) if call.stage_state else None
        return screen is not None and screen.outcome("response") not in ("allow", "observe")

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        if response is None or call.stage_state is None:
            return  # a stream (screened delta by delta) or an answer no stage decoded
        screen = call.stage_state.get(_SCREEN)
        if screen is None:
            return
        if screen.policy.active("response"):
            self.engine.screen_response(response, screen)
        if self.guard is not None:
            swap = await self.guard_verdict(call, screen, "response", response_texts(response))
            if swap is not None:
                walk_response(response, swap)


def _final_gate_follows(call: Call) -> bool:
    """Whether the final gate runs after SafetySec with no stage between that may answer the call itself (the
    response cache): then the session's script can ride in the gate's round trip. Known per pipeline."""
    pipeline = call.pipeline
    known = _FOLLOWS.get(id(pipeline))
    if known is None or known[0] is not pipeline:
        names = pipeline.names()
        after = names[names.index("safety") + 1 :] if "safety" in names else []
        follows = "final_gate" in after and "cache" not in after[: after.index("final_gate")]
        if len(_FOLLOWS) > 64:
            _FOLLOWS.clear()
        known = _FOLLOWS[id(pipeline)] = (pipeline, follows)
    return known[1]


_FOLLOWS: dict[int, tuple[Any, bool]] = {}


class _SessionRider:
    """The session script handed to the final gate (`odock.governance.Rider`)."""

    __slots__ = ("args", "ctx", "delivered", "keys", "screen", "script", "stage")

    def __init__(
        self, stage: SafetySec, screen: Screen, ctx: CallContext, keys: list[str], args: list[Any]
    ) -> None:
        self.script = SESSION_SCRIPT
        self.stage, self.screen, self.ctx = stage, screen, ctx
        self.keys, self.args = keys, args
        self.delivered = False

    def done(self, reply: Any) -> None:
        self.delivered = True
        self.stage.decide(RedisSessions.score(reply), self.screen, self.ctx)

    def failed(self, exc: BaseException) -> None:
        self.delivered = True
        self.stage.session_failed()

    async def count_if_left(self) -> None:
        """The call ended before the gate sent the script (refused, failed): count its signals anyway."""
        if self.delivered or float(self.args[0]) <= 0:
            return
        sessions = self.stage.sessions
        assert isinstance(sessions, RedisSessions)
        try:
            await sessions.bump(
                self.keys[0].removeprefix("safety:session:"), float(self.args[0]), self.args[1]
            )
        except self.stage.session_errors:
            metrics.child(metrics.SECURITY_ERRORS, "request", "session", "open").inc()


def count_decisions(screen: Screen) -> None:
    for phase in ("request", "response"):
        if screen.policy.active(phase):
            metrics.TALLY.inc(metrics.SECURITY_DECISIONS, (phase, screen.outcome(phase)))
