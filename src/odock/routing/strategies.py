"""The candidate-ordering strategies (reference §9.3), as pure functions over a parsed policy's candidates."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from odock.state.routing_policy import (
    DEFAULT_TRIGGERS,
    CandidateSpec,
    PolicyError,
    RoutingPolicy,
    org_routing_enabled,
    parse_policy,
    routing_section,
    validate_routing,
)

T = TypeVar("T")

__all__ = [
    "DEFAULT_TRIGGERS",
    "CandidateSpec",
    "PolicyError",
    "RoutingPolicy",
    "order",
    "org_routing_enabled",
    "parse_policy",
    "routing_section",
    "validate_routing",
]


# --- ordering ---------------------------------------------------------------------------------------------


def order(
    strategy: str,
    items: list[T],
    spec_of: Callable[[T], CandidateSpec],
    *,
    rotation: int = 0,
    rng: random.Random | None = None,
    latency_of: Callable[[T], float | None] | None = None,
) -> list[T]:
    """Return `items` in the order the strategy tries them (the input order is the policy's list order)."""
    if len(items) < 2:
        return list(items)
    if strategy == "priority":
        return sorted(items, key=lambda item: spec_of(item).priority)  # stable: ties keep list order
    if strategy == "round_robin":
        start = rotation % len(items)
        return items[start:] + items[:start]
    if strategy == "weighted":
        draw = (rng or random).random

        # Efraimidis-Spirakis: a weighted random permutation (sampling without replacement); weight 0 goes last
        def weighted_key(item: T) -> float:
            weight = spec_of(item).weight
            return draw() ** (1.0 / weight) if weight > 0 else -1.0

        return sorted(items, key=weighted_key, reverse=True)
    if strategy == "least_latency":
        measure = latency_of or (lambda _item: None)

        # an unobserved deployment sorts first so it gets measured once; then the fastest average wins
        def latency_key(item: T) -> float:
            observed = measure(item)
            return 0.0 if observed is None else observed

        return sorted(items, key=latency_key)
    return list(items)  # failover: the list order
