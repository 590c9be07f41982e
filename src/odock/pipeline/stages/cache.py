"""The response cache stage (issue 14), in the `pre_reserve` insertion point: after authentication, grants, the
early gate and SafetySec's request phase, before any budget or token reservation.

A hit answers the call itself (`Answered`): no token reservation, no routing, no upstream; its usage record says
`cache_hit` and costs 0 (or the policy's `hit_cost` fraction of the original), which governance charges to the
call's budgets and COST quotas once (`Governance.hit`: reserved here, settled by the post-flight); it counts as
one request in rate limits (the early gate counted the organisation, team and key; the model's are counted here)
and REQUESTS quotas, and as no tokens anywhere. A miss is stored once its answer is complete: a unary
answer after it decoded, a stream after its terminal event. Clients steer it with `Cache-Control`: `no-store`
(neither read nor write), `no-cache` (do not read, store the fresh answer), `max-age=N` (only an entry at most N
seconds old). Responses say `X-Odock-Cache: HIT | MISS | BYPASS`, and `Age` on a hit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from odock import metrics
from odock.cache.key import cache_key
from odock.cache.replay import NotReplayable, check_stream, response_events, unreplayable_request
from odock.cache.store import Coalescer, Entry, Fill, address, decode_entry, encode_entry
from odock.errors import GatewayError
from odock.pipeline.call import Answered
from odock.pipeline.stage import Stage
from odock.state.cache_policy import CachePolicy, effective_policy

if TYPE_CHECKING:
    from odock.governance import Governance
    from odock.model import GatewayResponse, StreamEvent
    from odock.pipeline.call import Call
    from odock.pipeline.stages.usage import Pricer

log = logging.getLogger("odock.cache")

HEADER = b"x-odock-cache"


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    no_cache: bool = False
    max_age: int | None = None


def cache_control(value: str | None) -> CacheControl:
    """The request directives the cache honours (others are ignored, as HTTP caches do)."""
    if not value:
        return CacheControl()
    no_store = no_cache = False
    max_age: int | None = None
    for directive in value.lower().split(","):
        name, _, arg = directive.strip().partition("=")
        if name == "no-store":
            no_store = True
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age" and arg.strip().strip('"').isdigit():
            max_age = int(arg.strip().strip('"'))
    return CacheControl(no_store, no_cache, max_age)


@dataclass(slots=True)
class Pending:
    """A miss this call will fill: where, for how long, and (a stream) the events seen so far."""

    fill: Fill
    policy: CachePolicy
    events: list[StreamEvent] | None = field(default=None)
    # text bytes seen so far: a stream past the entry bound stops being collected (it will not be stored)
    size: int = 0
    too_large: bool = False


class ResponseCache(Stage):
    name = "cache"
    needs_response = True  # a unary answer is stored decoded; deltas come through on_delta

    def __init__(
        self,
        coalescer: Coalescer,
        pricer: Pricer,
        *,
        max_entry_bytes: int,
        governance: Governance | None = None,
    ) -> None:
        self.coalescer = coalescer
        self.governance = governance
        self.store = coalescer.store
        self.pricer = pricer
        self.max_entry_bytes = max_entry_bytes

    async def before(self, call: Call) -> None:
        if not await self._open(call):
            call.step_aside(self)  # not cached: the route relays bytes again, no hook of this stage runs

    async def _open(self, call: Call) -> bool:
        """Serve a hit (raises Answered) or open a fill for a miss (True); False when the call is not cached."""
        ctx, route = call.ctx, call.route
        primary = call.primary
        if route.replay_dialect is None or call.json is None or primary is None or ctx.key is None:
            return False  # a route the cache cannot replay (embeddings, media, passthrough)
        org = ctx.organisation
        policy = effective_policy(
            org.policies if org else None,
            ctx.team.policies if ctx.team else None,
            primary.model.policies,
            ctx.key.policies,
        )
        if policy is None:
            return False
        control = cache_control(call.exchange.headers.get("cache-control"))
        if control.no_store or call.json.get("include_raw") is True:
            # include_raw asks for the provider's own answer, which only the upstream has
            self._bypass(call, "no_store" if control.no_store else "include_raw")
            return False
        unreplayable = unreplayable_request(call.json, ctx.prompt.choices if ctx.prompt else 1)
        if unreplayable is not None:
            self._bypass(call, unreplayable)
            return False
        scoped_key = ctx.key.id if policy.scope == "key" else None
        digest = cache_key(
            dialect=route.name,
            provider=primary.provider.id,
            slug=primary.model.slug,
            model=ctx.requested_model or "",
            organisation=ctx.key.organisation_id,
            key=scoped_key,
            namespace=policy.namespace,
            body=call.json,
        )
        addr = address(ctx.key.organisation_id, policy.namespace, primary.model.id, scoped_key, digest)
        try:
            entry, fill = await self._lookup(addr, control)
        except Exception:
            log.warning("cache lookup failed: the call goes upstream", extra={"request_id": ctx.request_id})
            self._bypass(call, "unavailable")
            return False
        if entry is not None:
            if await self._admitted(call, policy, entry):
                self._hit(call, entry)
            fill = Fill(addr, None, None)
        assert fill is not None
        call.defer(lambda: self._finish(fill))
        if call.stage_state is None:
            call.stage_state = {}
        call.stage_state[self.name] = Pending(fill, policy, [] if ctx.stream else None)
        call.exchange.response_headers.append((HEADER, b"MISS"))
        metrics.child(metrics.CACHE_MISSES, route.name).inc()
        return True

    async def _lookup(self, addr: str, control: CacheControl) -> tuple[Entry | None, Fill | None]:
        """The entry (decoded once) or the fill this miss opens; an entry older than `max-age` is a miss."""
        if control.no_cache:
            return None, Fill(addr, None, None)  # refresh: straight upstream, the fresh answer replaces it
        data, fill = await self.coalescer.lookup(addr)
        if data is None:
            return None, fill
        entry = decode_entry(data)
        if control.max_age is not None and time.time() - entry.created > control.max_age:
            return None, Fill(addr, None, None)
        return entry, fill

    async def _admitted(self, call: Call, policy: CachePolicy, entry: Entry) -> bool:
        """Price the hit and let governance admit it: the model's request limits, and a reservation of the hit's
        cost (budgets, COST quotas) and of one request (REQUESTS quotas), settled by the post-flight like any
        call's; a spent window refuses it (402/429, as the final gate would). When the windows cannot be
        reached the call goes on as a miss and the final gate decides."""
        ctx = call.ctx
        # billed as configured, never from tokens: the hit used none
        cost = round(entry.cost_nanos * policy.hit_cost) if entry.cost_nanos is not None else None
        if self.governance is not None:
            try:
                await self.governance.hit(ctx, cost)
            except GatewayError:
                raise
            except Exception:
                log.warning("budget windows unreadable: the hit is served as a miss")
                return False
        ctx.priced, ctx.cost_nanos, ctx.cache_hit = True, cost, True
        return True

    def _hit(self, call: Call, entry: Entry) -> NoReturn:
        ctx = call.ctx
        assert call.primary is not None
        age = max(0, int(time.time() - entry.created))
        call.exchange.response_headers += [(HEADER, b"HIT"), (b"age", str(age).encode())]
        metrics.child(metrics.CACHE_HITS, call.route.name).inc()
        ctx.answered_by, ctx.answered_provider = call.primary.model, call.primary.provider
        raise Answered(self, entry.events)

    @staticmethod
    def _say(call: Call, verdict: bytes) -> None:
        """Replace this call's MISS by `verdict` while its headers are not sent yet (a unary answer: the
        after-hooks run before it goes out; a stream's headers left with its first byte)."""
        if not call.exchange.started:
            headers = call.exchange.response_headers
            headers[:] = [(name, verdict if name == HEADER else value) for name, value in headers]

    def _bypass(self, call: Call, reason: str) -> None:
        call.exchange.response_headers.append((HEADER, b"BYPASS"))
        metrics.child(metrics.CACHE_BYPASSES, call.route.name, reason).inc()

    async def _finish(self, fill: Fill) -> None:
        try:
            await self.coalescer.finish(fill)
        except Exception:
            log.warning("cache fill lock release failed (it expires by itself)")

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | None:
        pending: Pending | None = call.stage_state.get(self.name) if call.stage_state else None
        if pending is not None and pending.events is not None:
            pending.size += len(getattr(event, "text", "") or "") + len(getattr(event, "arguments", ""))
            if pending.size > self.max_entry_bytes:
                pending.events, pending.too_large = None, True
            else:
                pending.events.append(event)
        return event

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        pending: Pending | None = call.stage_state.get(self.name) if call.stage_state else None
        if pending is None:
            return
        if pending.too_large:
            metrics.child(metrics.CACHE_BYPASSES, call.route.name, "too_large").inc()
            self._say(call, b"BYPASS")
            return
        try:
            events = self._answer(pending, response)
        except NotReplayable:
            metrics.child(metrics.CACHE_BYPASSES, call.route.name, "not_replayable").inc()
            self._say(call, b"BYPASS")
            return
        if events is None:
            return
        data = encode_entry(Entry(created=time.time(), cost_nanos=self.pricer.cost(call.ctx), events=events))
        if len(data) > self.max_entry_bytes:
            metrics.child(metrics.CACHE_BYPASSES, call.route.name, "too_large").inc()
            self._say(call, b"BYPASS")
            return
        try:
            await self.store.put(pending.fill.addr, data, pending.policy.ttl_s)
        except Exception:
            log.warning("cache store failed", extra={"request_id": call.ctx.request_id})
            return
        metrics.CACHE_STORED_BYTES.inc(len(data))

    @staticmethod
    def _answer(pending: Pending, response: GatewayResponse | None) -> list[Any] | None:
        """The complete answer as events (None: nothing storable was seen)."""
        if pending.events is not None:
            check_stream(pending.events)
            return pending.events
        return response_events(response) if response is not None else None
