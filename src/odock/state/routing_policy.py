"""Routing policy schema (reference §9.2): parsed and validated here, beside the catalogue that stores it, so
that a malformed policy is refused at write time; `odock.routing` plans calls from the parsed form.

A key's policy lives in its `policies` JSON under `routing.<modelType>`; the organisation switch under
`routing.enabled`. Both columns may hold the §5.1 envelope (`{"policies": {...}}`) or the inner dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("failover", "priority", "round_robin", "weighted", "least_latency")
TRIGGERS = frozenset({"5xx", "timeout", "rate_limit", "any"})
DEFAULT_TRIGGERS = frozenset({"5xx", "timeout"})
MAX_RETRIES_CAP = 10  # a policy cannot make one call hammer upstreams more than this
MAX_RETRY_DELAY_S = 30.0


class PolicyError(ValueError):
    """A routing policy that cannot be understood."""


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    name: str
    priority: float = math.inf  # unspecified priorities sort after specified ones, in list order
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    strategy: str = "failover"
    candidates: tuple[CandidateSpec, ...] = ()
    triggers: frozenset[str] = DEFAULT_TRIGGERS
    max_retries: int | None = None  # None: one attempt per eligible candidate
    retry_delay_s: float = 0.0
    native_fallback: Mapping[str, tuple[CandidateSpec, ...]] = field(default_factory=dict)
    cooldown_failures: int | None = None  # None: the gateway default
    cooldown_s: float | None = None


def policies_inner(policies: Any) -> dict[str, Any]:
    """The inner policies dict of an org/key `policies` column (envelope `{"policies": {...}}` or inner)."""
    if not isinstance(policies, dict):
        return {}
    inner = policies.get("policies")
    if isinstance(inner, dict):
        return inner
    return policies


def routing_section(policies: Any) -> dict[str, Any]:
    section = policies_inner(policies).get("routing")
    return section if isinstance(section, dict) else {}


def org_routing_enabled(policies: Any) -> bool:
    """Switch 1 of §9.1: the organisation's `policies.routing.enabled` is true."""
    return routing_section(policies).get("enabled") is True


def _get(raw: Mapping[str, Any], camel: str, snake: str) -> Any:
    return raw[camel] if camel in raw else raw.get(snake)


def _number(value: Any, what: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{what} must be a number")
    if value < minimum:
        raise PolicyError(f"{what} must be >= {minimum:g}")
    return float(value)


def _candidate(raw: Any, where: str) -> CandidateSpec:
    if isinstance(raw, str) and raw:
        return CandidateSpec(raw)
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a candidate is a model name or an object with modelName")
    name = _get(raw, "modelName", "model_name") or raw.get("model")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}: candidate without modelName")
    priority = raw.get("priority")
    weight = raw.get("weight")
    return CandidateSpec(
        name,
        math.inf
        if priority is None
        else _number(priority, f"{where}: priority of {name!r}", minimum=-math.inf),
        1.0 if weight is None else _number(weight, f"{where}: weight of {name!r}"),
    )


def _candidates(raw: Any, where: str) -> tuple[CandidateSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError(f"{where} must be a list")
    return tuple(_candidate(item, where) for item in raw)


def parse_policy(raw: Any) -> RoutingPolicy:  # noqa: C901 - older than the complexity rule; to split
    """Parse one `routing.<modelType>` object (camelCase as documented; snake_case accepted)."""
    if not isinstance(raw, dict):
        raise PolicyError("a routing policy must be an object")
    strategy = raw.get("strategy", "failover")
    if strategy not in STRATEGIES:
        raise PolicyError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    on = _get(raw, "failoverOn", "failover_on")
    triggers = DEFAULT_TRIGGERS
    if on is not None:
        if not isinstance(on, list) or not all(isinstance(t, str) for t in on):
            raise PolicyError("failoverOn must be a list of strings")
        unknown = sorted(set(on) - TRIGGERS)
        if unknown:
            raise PolicyError(
                f"unknown failoverOn value(s) {', '.join(unknown)}; one of 5xx, timeout, rate_limit, any"
            )
        triggers = frozenset(on)
    retries = _get(raw, "maxRetries", "max_retries")
    max_retries = None
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise PolicyError("maxRetries must be a non-negative integer")
        max_retries = min(retries, MAX_RETRIES_CAP)
    delay = _get(raw, "retryDelayMs", "retry_delay_ms")
    delay_s = 0.0 if delay is None else min(_number(delay, "retryDelayMs") / 1000, MAX_RETRY_DELAY_S)
    fallback_raw = _get(raw, "nativeFallback", "native_fallback")
    native: dict[str, tuple[CandidateSpec, ...]] = {}
    if fallback_raw is not None:
        if not isinstance(fallback_raw, dict):
            raise PolicyError("nativeFallback must be an object of provider family -> model names")
        for family, names in fallback_raw.items():
            native[str(family)] = _candidates(names, f"nativeFallback.{family}")
    cooldown = raw.get("cooldown")
    failures: int | None = None
    seconds: float | None = None
    if cooldown is not None:
        if not isinstance(cooldown, dict):
            raise PolicyError('cooldown must be an object like {"failures": 3, "seconds": 30}')
        if cooldown.get("failures") is not None:
            value = cooldown["failures"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError("cooldown.failures must be a non-negative integer (0 disables cooldowns)")
            failures = value
        if cooldown.get("seconds") is not None:
            seconds = _number(cooldown["seconds"], "cooldown.seconds")
    return RoutingPolicy(
        strategy=strategy,
        candidates=_candidates(raw.get("candidates"), "candidates"),
        triggers=triggers,
        max_retries=max_retries,
        retry_delay_s=delay_s,
        native_fallback=native,
        cooldown_failures=failures,
        cooldown_s=seconds,
    )


def validate_routing(policies: Any) -> list[str]:
    """Every problem of the routing section of an org or key `policies` value (empty when valid)."""
    problems: list[str] = []
    section = policies_inner(policies).get("routing")
    if section is None:
        return problems
    if not isinstance(section, dict):
        return ["policies.routing must be an object"]
    for name, value in section.items():
        if name == "enabled":
            if not isinstance(value, bool):
                problems.append("policies.routing.enabled must be true or false")
            continue
        try:
            parse_policy(value)
        except PolicyError as exc:
            problems.append(f"policies.routing.{name}: {exc}")
    return problems
