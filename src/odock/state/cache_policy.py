"""The response cache's policy section (`policies.cache`), parsed and checked at write time.

Off by default. A `cache` section on an organisation, team, model or key turns it on for what that scope covers;
sections merge field by field from the widest scope to the narrowest (organisation → team → model → key), so a
key can turn off what its organisation turned on (`enabled: false`) or narrow its scope.

    {"cache": {"mode": "exact", "ttl": "10m", "scope": "organisation" | "key", "namespace": "faq",
               "hit_cost": 0.0, "enabled": true}}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from odock.settings import parse_duration
from odock.state.routing_policy import policies_inner

DEFAULT_TTL_S = 300.0
MAX_TTL_S = 30 * 24 * 3600.0
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
FIELDS = frozenset({"enabled", "mode", "ttl", "scope", "namespace", "hit_cost"})


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The effective cache policy of one call."""

    ttl_s: float = DEFAULT_TTL_S
    scope: Literal["organisation", "key"] = "organisation"
    namespace: str = "default"
    # the fraction of the original answer's cost a hit is billed (0: free)
    hit_cost: float = 0.0


def cache_section(policies: Any) -> dict[str, Any] | None:
    section = policies_inner(policies).get("cache")
    return section if isinstance(section, dict) else None


def _ttl(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("ttl must be a duration")
    seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TTL_S:
        raise ValueError("ttl must be above 0 and at most 30 days")
    return seconds


def _check_field(name: str, value: Any) -> str | None:
    if name == "enabled":
        return None if isinstance(value, bool) else "enabled must be true or false"
    if name == "mode":
        return None if value in ("exact", "off") else "mode must be 'exact' or 'off'"
    if name == "scope":
        return None if value in ("organisation", "key") else "scope must be 'organisation' or 'key'"
    if name == "namespace":
        return (
            None
            if isinstance(value, str) and _NAMESPACE.match(value)
            else "namespace must be 1-64 letters, digits, '_', '.' or '-'"
        )
    if name == "hit_cost":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number and 0 <= value <= 1 else "hit_cost must be a number from 0 to 1"
    try:
        _ttl(value)
    except ValueError as exc:
        return str(exc)
    return None


def validate_cache(policies: Any) -> list[str]:
    """Every problem of the `cache` section of a `policies` value (empty when valid or absent)."""
    raw = policies_inner(policies).get("cache")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return ["policies.cache must be an object"]
    problems = [f"policies.cache: unknown field {name!r}" for name in sorted(set(raw) - FIELDS)]
    for name in sorted(set(raw) & FIELDS):
        problem = _check_field(name, raw[name])
        if problem:
            problems.append(f"policies.cache.{problem}")
    return problems


def enables_cache(policies: Any) -> bool:
    """Whether a `policies` value turns the cache on for its scope (the gateway wires the stage only then)."""
    section = cache_section(policies)
    return (
        section is not None
        and section.get("enabled", True) is True
        and section.get("mode", "exact") == "exact"
    )


def effective_policy(*scopes: Any) -> CachePolicy | None:
    """The call's policy from its scopes' `policies` values, widest first; None when the cache is off for it.

    Values were validated when written; anything unreadable (a row older than the check) counts as off."""
    merged: dict[str, Any] = {}
    for policies in scopes:
        section = cache_section(policies)
        if section:
            merged.update(section)
    if not merged or merged.get("enabled", True) is not True or merged.get("mode", "exact") != "exact":
        return None
    try:
        return CachePolicy(
            ttl_s=_ttl(merged.get("ttl", DEFAULT_TTL_S)),
            scope="key" if merged.get("scope") == "key" else "organisation",
            namespace=str(merged.get("namespace", "default")),
            hit_cost=float(merged.get("hit_cost", 0.0)),
        )
    except (ValueError, TypeError):
        return None
