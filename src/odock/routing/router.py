"""The router: which deployments to try for a call, in what order, and the attempt loop with failover.

Failover happens only here, and only before anything reached the client: an attempt "succeeds" once the
upstream answered with a 2xx status line, so a stream that later breaks is never retried (DESIGN principle 4).
The plan itself (candidates, order, triggers) comes from `odock.routing.policy.Routing.plan`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from odock import metrics
from odock.context import Attempt, CallContext
from odock.errors import GatewayError, UpstreamError
from odock.providers.registry import family_of
from odock.routing.strategies import DEFAULT_TRIGGERS
from odock.state.records import ModelRecord, ProviderRecord

T = TypeVar("T")

__all__ = [
    "DEFAULT_TRIGGERS",
    "AttemptObserver",
    "Candidate",
    "RoutePlan",
    "attempt_sequence",
    "run_attempts",
    "triggered",
]


@dataclass(slots=True, frozen=True)
class Candidate:
    model: ModelRecord
    provider: ProviderRecord


@dataclass(slots=True)
class RoutePlan:
    candidates: list[Candidate]
    triggers: frozenset[str] = DEFAULT_TRIGGERS
    max_retries: int = 0  # attempts after the first; past the last candidate they start again from the first
    retry_delay_s: float = 0.0
    routed: bool = False  # True when a routing policy applied (smart routing on)


# fed every attempt's outcome (deployment, ok, seconds, error): latency windows and cooldowns learn from it
AttemptObserver = Callable[["Candidate", bool, float, GatewayError | None], None]


def attempt_sequence(plan: RoutePlan) -> list[Candidate]:
    """The deployments tried, in order: 1 + max_retries attempts cycling through the plan's candidates."""
    count = len(plan.candidates)
    if count == 0:
        return []
    return [plan.candidates[i % count] for i in range(1 + max(0, plan.max_retries))]


def triggered(err: GatewayError, triggers: frozenset[str]) -> bool:
    """Whether an attempt's failure may fail over under the configured `failoverOn` triggers."""
    if not isinstance(err, UpstreamError):
        return False
    if "any" in triggers:
        return True
    kind = "timeout" if err.kind == "timeout" else err.kind
    if kind in ("connect", "protocol"):
        kind = "5xx"  # an unreachable or broken upstream is a server-side failure
    return kind in triggers


async def run_attempts(
    ctx: CallContext,
    plan: RoutePlan,
    attempt: Callable[[Candidate], Awaitable[T]],
    on_result: AttemptObserver | None = None,
) -> T:
    """Try candidates in plan order until one answers; record every attempt in ctx.attempts."""
    last: GatewayError | None = None
    for number, candidate in enumerate(attempt_sequence(plan)):
        if number and plan.retry_delay_s:
            await asyncio.sleep(plan.retry_delay_s)
        family = family_of(candidate.provider.type)  # attempts and metrics carry the runtime name (§4.6)
        started = time.perf_counter()
        try:
            result = await attempt(candidate)
        except GatewayError as err:
            elapsed = time.perf_counter() - started
            kind = err.kind if isinstance(err, UpstreamError) else err.code
            ctx.attempts.append(
                Attempt(
                    model=candidate.model.name,
                    provider=family,
                    outcome="failed",
                    error_class=kind,
                    status=getattr(err, "upstream_status", None) or err.status,
                    latency_ms=int(elapsed * 1000),
                )
            )
            metrics.child(metrics.PROVIDER_REQUESTS, family, "failed").inc()
            metrics.child(metrics.PROVIDER_ERRORS, family, str(kind)).inc()
            if on_result is not None:
                on_result(candidate, False, elapsed, err)
            last = err
            if not triggered(err, plan.triggers):
                break
            continue
        elapsed = time.perf_counter() - started
        ctx.attempts.append(
            Attempt(
                model=candidate.model.name, provider=family, outcome="success", latency_ms=int(elapsed * 1000)
            )
        )
        metrics.TALLY.inc(metrics.PROVIDER_REQUESTS, (family, "success"))
        metrics.TALLY.observe(metrics.PROVIDER_DURATION, elapsed, (family,))
        if on_result is not None:
            on_result(candidate, True, elapsed, None)
        ctx.answered_by = candidate.model
        ctx.answered_provider = candidate.provider
        if plan.routed:
            metrics.TALLY.observe(metrics.ROUTING_ATTEMPTS, len(ctx.attempts))
            metrics.TALLY.inc(metrics.ROUTING_DECISIONS, ("rerouted" if number else "direct",))
        return result
    if plan.routed:
        metrics.ROUTING_ATTEMPTS.observe(len(ctx.attempts))
        metrics.child(metrics.ROUTING_DECISIONS, "failed").inc()
    assert last is not None
    raise last
