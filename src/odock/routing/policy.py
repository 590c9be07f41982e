"""Smart-routing policy resolution (reference §9): which candidates a call may try, in which order.

Routing runs only when both switches are on: the organisation's `policies.routing.enabled` and a routing policy
on the API key for the requested model's type (`policies.routing.<modelType>`). Otherwise the call goes straight
to the requested model. Everything here reads the in-process catalogue cache; the only I/O a plan may add is one
Redis INCR for `round_robin` in cluster mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

from odock.errors import DependencyUnavailable, GatewayError, UpstreamError
from odock.routing.health import DEFAULT_COOLDOWN_FAILURES, DEFAULT_COOLDOWN_S, HealthBook
from odock.routing.router import Candidate, RoutePlan
from odock.routing.strategies import (
    CandidateSpec,
    PolicyError,
    RoutingPolicy,
    order,
    org_routing_enabled,
    parse_policy,
    routing_section,
)
from odock.state.redis import REDIS_ERRORS

if TYPE_CHECKING:
    from odock.pipeline.call import Call
    from odock.state.records import ApiKeyRecord

log = logging.getLogger("odock.routing")

MAX_CACHED_POLICIES = 10_000
MAX_LOCAL_COUNTERS = 100_000
RR_KEY_TTL_S = 7 * 86400  # round-robin counters of deleted keys fade away
REDIS_TIMEOUT_S = 0.25  # a slow Redis must not stall routing: the local counter takes over
REDIS_RETRY_AFTER_S = 5.0


class Routing:
    """Builds each call's attempt plan and learns deployment health from every attempt (per process)."""

    def __init__(self, *, cooldown_failures: int = DEFAULT_COOLDOWN_FAILURES,
                 cooldown_s: float = DEFAULT_COOLDOWN_S, rng: random.Random | None = None) -> None:
        self.cooldown_failures = cooldown_failures
        self.cooldown_s = cooldown_s
        self.health = HealthBook()
        self._rng = rng or random.Random()
        # (key id, model type) -> (the key's policies object it was parsed from, parsed policy or None)
        self._policies: dict[tuple[str, str], tuple[Any, RoutingPolicy | None]] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._redis_down_until = 0.0

    # --- policy ------------------------------------------------------------------------------------------

    def policy_for(self, key: ApiKeyRecord, model_type: str) -> RoutingPolicy | None:
        """The key's parsed routing policy for a model type (memoised per cached key record)."""
        slot = (key.id, model_type)
        hit = self._policies.get(slot)
        # the catalogue hands out the same record object until it reloads; a reload means re-parse
        if hit is not None and hit[0] is key.policies:
            return hit[1]
        raw = routing_section(key.policies).get(model_type)
        policy: RoutingPolicy | None = None
        if raw is not None:
            try:
                policy = parse_policy(raw)
            except PolicyError as exc:
                # a broken policy must not break calls: route directly and say why, once per loaded record
                log.warning("routing policy of key %s for %s ignored: %s", key.id, model_type, exc)
        if len(self._policies) >= MAX_CACHED_POLICIES and slot not in self._policies:
            self._policies.pop(next(iter(self._policies)))
        self._policies[slot] = (key.policies, policy)
        return policy

    async def plan(self, call: Call, primary: Candidate) -> RoutePlan:
        """Return the attempt plan for a call whose requested model resolved to `primary`."""
        ctx = call.ctx
        key, org = ctx.key, ctx.organisation
        if key is None or org is None or not org_routing_enabled(org.policies):
            return RoutePlan(candidates=[primary])
        policy = self.policy_for(key, primary.model.type)
        if policy is None:
            return RoutePlan(candidates=[primary])
        family = ctx.required_provider
        if family is None and ctx.request is not None and ctx.request.provider:
            family = ctx.request.provider  # a unified call pinned to a provider stays with it
        specs = policy.candidates
        if ctx.required_provider is not None and ctx.required_provider in policy.native_fallback:
            specs = policy.native_fallback[ctx.required_provider]
        if not any(spec.name == primary.model.name for spec in specs):
            # the requested model is always a candidate; for ordered strategies it is tried first
            specs = (CandidateSpec(primary.model.name, priority=-math.inf), *specs)
        pairs = await self._eligible(call, primary, specs, family)
        rotation = 0
        if policy.strategy == "round_robin" and len(pairs) > 1:
            rotation = await self._turn(call, key.id, primary.model.type)
        ordered = order(
            policy.strategy, pairs, lambda pair: pair[1], rotation=rotation, rng=self._rng,
            latency_of=lambda pair: self.health.latency(pair[0].model.id),
        )
        candidates = [pair[0] for pair in ordered]
        threshold = self.cooldown_failures if policy.cooldown_failures is None else policy.cooldown_failures
        cooldown_s = self.cooldown_s if policy.cooldown_s is None else policy.cooldown_s
        healthy = [c for c in candidates if not self.health.cooling(c.model.id, threshold, cooldown_s)]
        if healthy:
            candidates = healthy  # when every candidate is cooling, try them anyway rather than fail unasked
        retries = len(candidates) - 1 if policy.max_retries is None else policy.max_retries
        return RoutePlan(candidates=candidates, triggers=policy.triggers, max_retries=retries,
                         retry_delay_s=policy.retry_delay_s, routed=True)

    async def _eligible(self, call: Call, primary: Candidate, specs: tuple[CandidateSpec, ...],
                        family: str | None) -> list[tuple[Candidate, CandidateSpec]]:
        """Resolve candidate names; keep those in the org, of the same type and family, granted and usable."""
        from odock.pipeline.call import family_of

        ctx, catalogue = call.ctx, call.gw.catalogue
        assert ctx.key is not None
        grants: frozenset[str] | None = None
        seen: set[str] = set()
        out: list[tuple[Candidate, CandidateSpec]] = []
        for spec in specs:
            if spec.name == primary.model.name:
                candidate = primary  # already checked by resolve (grant, provider, family)
            else:
                try:
                    model = await catalogue.model(ctx.key.organisation_id, spec.name)
                    if grants is None:
                        grants = await catalogue.grants(ctx.key.id)
                except DependencyUnavailable:
                    continue  # a fallback we cannot check is never called
                if model is None or model.type != primary.model.type or model.id not in grants:
                    continue
                try:
                    candidate = await call.candidate(model)
                except GatewayError:
                    continue  # provider disabled, missing, or without a credential
                if family is not None and family_of(candidate.provider.type) != family:
                    continue
            if candidate.model.id in seen:
                continue
            seen.add(candidate.model.id)
            out.append((candidate, spec))
        return out

    async def _turn(self, call: Call, key_id: str, model_type: str) -> int:
        """The round-robin turn of (key, model type): shared through Redis in cluster mode, else in-process."""
        redis = call.gw.redis
        now = time.monotonic()
        if redis is not None and now >= self._redis_down_until:
            name = f"odock:routing:rr:{key_id}:{model_type}"
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    async with redis.pipeline(transaction=False) as pipe:
                        pipe.incr(name)
                        pipe.expire(name, RR_KEY_TTL_S)
                        value, _ = await pipe.execute()
                return int(value) - 1
            except REDIS_ERRORS as exc:  # rotate locally rather than fail the call
                self._redis_down_until = now + REDIS_RETRY_AFTER_S
                log.warning("round-robin counter unavailable in Redis (%s); rotating per process",
                            type(exc).__name__)
        slot = (key_id, model_type)
        turn = self._counters.pop(slot, 0)
        if len(self._counters) >= MAX_LOCAL_COUNTERS:
            self._counters.pop(next(iter(self._counters)))
        self._counters[slot] = turn + 1
        return turn

    # --- feedback ----------------------------------------------------------------------------------------

    def observe(self, candidate: Candidate, ok: bool, elapsed_s: float, err: GatewayError | None) -> None:
        """Feed an attempt's outcome back (latency windows, cooldowns)."""
        model_id = candidate.model.id
        if ok:
            self.health.success(model_id, elapsed_s)
        elif isinstance(err, UpstreamError) and err.kind != "4xx":
            # only failures of the deployment count toward a cooldown, never a client's bad request
            self.health.failure(model_id, elapsed_s if err.kind == "timeout" else None)
