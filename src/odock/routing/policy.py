"""Smart-routing policy resolution (reference §9): which candidates a call may try, in which order.

Routing runs only when both switches are on: the organisation's `policies.routing.enabled` and a routing policy
on the API key for the requested model's type (`policies.routing.<modelType>`). Otherwise the call goes straight
to the requested model. A plan is made from the call's context, a view of the catalogue (`Deployments`) and a
turn counter (`odock.routing.counters`): no pipeline object and no Redis client, so plans are unit-testable.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any

from odock.errors import DependencyUnavailable, GatewayError, UpstreamError
from odock.providers.registry import family_of
from odock.routing.candidates import Deployments, deployment
from odock.routing.counters import LocalTurns, TurnCounter
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

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.state.records import ApiKeyRecord

log = logging.getLogger("odock.routing")

MAX_CACHED_POLICIES = 10_000


class Routing:
    """Builds each call's attempt plan and learns deployment health from every attempt (per process)."""

    def __init__(
        self,
        deployments: Deployments,
        *,
        counter: TurnCounter | None = None,
        cooldown_failures: int = DEFAULT_COOLDOWN_FAILURES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        rng: random.Random | None = None,
    ) -> None:
        self.deployments = deployments
        self.counter: TurnCounter = counter or LocalTurns()
        self.cooldown_failures = cooldown_failures
        self.cooldown_s = cooldown_s
        self.health = HealthBook()
        self._rng = rng or random.Random()
        # (key id, model type) -> (the key's policies object it was parsed from, parsed policy or None)
        self._policies: dict[tuple[str, str], tuple[Any, RoutingPolicy | None]] = {}

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

    async def plan(self, ctx: CallContext, primary: Candidate) -> RoutePlan:
        """Return the attempt plan for a call whose requested model resolved to `primary`."""
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
        pairs = await self._eligible(ctx, primary, specs, family)
        rotation = 0
        if policy.strategy == "round_robin" and len(pairs) > 1:
            rotation = await self.counter.turn(f"{key.id}:{primary.model.type}")
        ordered = order(
            policy.strategy,
            pairs,
            lambda pair: pair[1],
            rotation=rotation,
            rng=self._rng,
            latency_of=lambda pair: self.health.latency(pair[0].model.id),
        )
        candidates = [pair[0] for pair in ordered]
        threshold = self.cooldown_failures if policy.cooldown_failures is None else policy.cooldown_failures
        cooldown_s = self.cooldown_s if policy.cooldown_s is None else policy.cooldown_s
        healthy = [c for c in candidates if not self.health.cooling(c.model.id, threshold, cooldown_s)]
        if healthy:
            candidates = healthy  # when every candidate is cooling, try them anyway rather than fail unasked
        retries = len(candidates) - 1 if policy.max_retries is None else policy.max_retries
        return RoutePlan(
            candidates=candidates,
            triggers=policy.triggers,
            max_retries=retries,
            retry_delay_s=policy.retry_delay_s,
            routed=True,
        )

    async def _eligible(
        self, ctx: CallContext, primary: Candidate, specs: tuple[CandidateSpec, ...], family: str | None
    ) -> list[tuple[Candidate, CandidateSpec]]:
        """Resolve candidate names; keep those in the org, of the same type and family, granted and usable."""
        catalogue = self.deployments
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
                    candidate = await deployment(catalogue, model)
                except GatewayError:
                    continue  # provider disabled, missing, or without a credential
                if family is not None and family_of(candidate.provider.type) != family:
                    continue
            if candidate.model.id in seen:
                continue
            seen.add(candidate.model.id)
            out.append((candidate, spec))
        return out

    # --- feedback ----------------------------------------------------------------------------------------

    def observe(self, candidate: Candidate, ok: bool, elapsed_s: float, err: GatewayError | None) -> None:
        """Feed an attempt's outcome back (latency windows, cooldowns)."""
        model_id = candidate.model.id
        if ok:
            self.health.success(model_id, elapsed_s)
        elif isinstance(err, UpstreamError) and err.kind != "4xx":
            # only failures of the deployment count toward a cooldown, never a client's bad request
            self.health.failure(model_id, elapsed_s if err.kind == "timeout" else None)
