"""SafetySec as a stage (reference §7): the request phase at `pre_reserve` (after model access, so the model's
policy is known; before the reservations, so a block has nothing to release), the response phase in the
after-hook (unary) and the delta hook (streams, with bounded hold-back: `odock.safety.stream`).

A call whose resolved policy is off stands down at once (`call.skip`): its native route stays a byte relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from odock import metrics
from odock.pipeline.stage import Stage
from odock.safety.engine import (
    SIGNAL_SCORES,
    SafetyEngine,
    Screen,
    blocked,
    fingerprint,
    texts_of,
    walk_json,
    walk_request,
)
from odock.safety.guard import GuardFailed, WebhookGuard
from odock.safety.stream import StreamGuard

if TYPE_CHECKING:
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
        call.defer(lambda: _count_decisions(screen))
        if not policy.active("response"):
            call.step_aside(self)
        if policy.active("request"):
            self.engine.screen_request(call.json, call.request, screen)
        await self._session(call, screen)
        if self.guard is not None and call.json is not None:
            await self._external(call, screen)

    async def _session(self, call: Call, screen: Screen) -> None:
        """Raise the session's score by this request's signals; block a session at the threshold."""
        ctx = call.ctx
        increment = sum(SIGNAL_SCORES[s] for s in screen.signals)
        fp = fingerprint(
            ctx.client_ip, ctx.key.id if ctx.key else None, call.exchange.headers.get("user-agent")
        )
        try:
            score = await self.sessions.bump(fp, increment, self.engine.config.session_ttl_s)
        except self.session_errors:
            metrics.child(metrics.SECURITY_ERRORS, "request", "session", "closed").inc()
            raise self.engine.failure("session") from None
        if score >= self.engine.config.block_threshold:
            screen.decisions[("request", "session", "session_score")] = "block"
            ctx.security = screen.evidence()
            raise blocked("request", "session", "session_score")

    async def _external(self, call: Call, screen: Screen) -> None:
        assert self.guard is not None and call.json is not None
        texts = list(dict.fromkeys(texts_of(call.json)))
        if not texts:
            return
        ctx = call.ctx
        payload: dict[str, Any] = {
            "phase": "request",
            "request_id": ctx.request_id,
            "route": ctx.route,
            "model": ctx.requested_model,
            "texts": texts,
        }
        metrics.child(metrics.SECURITY_MODULE_RUNS, "request", "external").inc()
        try:
            verdict = await self.guard.check(payload)
        except GuardFailed:
            mode = "open" if self.guard.config.fail_open else "closed"
            metrics.child(metrics.SECURITY_ERRORS, "request", "external", mode).inc()
            if mode == "closed":
                raise self.engine.failure("external") from None
            return
        if verdict.action == "block":
            screen.decisions[("request", "external", verdict.category)] = "block"
            ctx.security = screen.evidence()
            raise blocked("request", "external", verdict.category)
        if verdict.action == "modify" and verdict.texts is not None:
            replaced = dict(zip(texts, verdict.texts, strict=True))
            screen.decisions[("request", "external", verdict.category)] = "redact"
            ctx.security = screen.evidence()

            def swap(text: str) -> str:
                return replaced.get(text, text)

            walk_json(call.json, swap)
            if call.request is not None:
                walk_request(call.request, swap)

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        state = call.stage_state
        assert state is not None
        guard = state.get(_STREAM)
        if guard is None:
            guard = state[_STREAM] = StreamGuard(self.engine, state[_SCREEN])
        return guard.feed(event)

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        if response is None or call.stage_state is None:
            return  # a stream (screened delta by delta) or an answer no stage decoded
        screen = call.stage_state.get(_SCREEN)
        if screen is not None:
            self.engine.screen_response(response, screen)


async def _count_decisions(screen: Screen) -> None:
    for phase in ("request", "response"):
        if screen.policy.active(phase):
            metrics.child(metrics.SECURITY_DECISIONS, phase, screen.outcome(phase)).inc()
