"""Rate-limit policies (reference §5.1): parse the envelope of one scope into `Limits`.

Every scope (global, organisation, team, API key, model) keeps its own limits and its own counters; a request must
pass all of them, so a narrower scope can never relax a broader one. `effective()` shows the combined result (the
smallest non-zero value of each field), for headers, docs and tests. An omitted, 0, negative or non-numeric field
means "no limit" (reference §5.1 [INF]: 0 is unset).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, fields, replace
from typing import Any

log = logging.getLogger("odock.governance")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# scope labels used in error bodies and Redis keys
GLOBAL, ORGANISATION, TEAM, API_KEY, MODEL, IP = "global", "organisation", "team", "api_key", "model", "ip"

DEFAULT_LEASE_TTL_S = 600.0  # longer than any upstream call we let run, so a live call never loses its lease


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one scope sets; 0 means none."""

    rps: int = 0
    rpm: int = 0
    burst: int = 0
    tpm: int = 0
    concurrency: int = 0
    lease_ttl_s: float = 0.0
    max_request_bytes: int = 0
    max_tokens: int = 0
    allow: tuple[IPNetwork, ...] = ()
    block: tuple[IPNetwork, ...] = ()

    @property
    def requests_limited(self) -> bool:
        return bool(self.rps or self.rpm or self.burst or self.concurrency)

    @property
    def empty(self) -> bool:
        return self == _EMPTY


_EMPTY = Limits()


def _num(node: Any, key: str) -> int:
    if not isinstance(node, dict):
        return 0
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value < 0:
        log.warning("ignoring negative rate-limit value %s=%r", key, value)
        return 0
    return int(value)


def _networks(items: Any) -> tuple[IPNetwork, ...]:
    if not isinstance(items, list):
        return ()
    result: list[IPNetwork] = []
    for item in items:
        try:
            result.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            log.warning("ignoring invalid IP rule %r", item)
    return tuple(result)


def parse_policy(raw: dict[str, Any] | None) -> Limits:
    """Parse one scope's policy: the §5.1 envelope `{"policies": {...}}` or its inner dict."""
    if not raw or not isinstance(raw, dict):
        return _EMPTY
    inner = raw.get("policies", raw)
    if not isinstance(inner, dict):
        return _EMPTY
    rl = inner.get("ratelimit") or {}
    ip = inner.get("ip") or {}
    if not isinstance(rl, dict):
        rl = {}
    requests, tokens = rl.get("requests"), rl.get("tokens")
    concurrency, payload = rl.get("concurrency"), rl.get("payload")
    ttl = _num(concurrency, "lease_ttl_seconds")
    limits = Limits(
        rps=_num(requests, "per_second"),
        rpm=_num(requests, "per_minute"),
        burst=_num(requests, "burst"),
        tpm=_num(tokens, "per_minute"),
        concurrency=_num(concurrency, "max"),
        lease_ttl_s=float(ttl),
        max_request_bytes=_num(payload, "max_request_bytes"),
        max_tokens=_num(payload, "max_tokens"),
        allow=_networks(ip.get("allowlist")) if isinstance(ip, dict) else (),
        block=_networks(ip.get("blocklist")) if isinstance(ip, dict) else (),
    )
    return _EMPTY if limits == _EMPTY else limits


class PolicyCache:
    """Parsed policies keyed by the identity of the record's dict (records are immutable once cached)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        # keep the raw object alive so its id() cannot be reused by another dict while cached
        self._items: dict[int, tuple[dict[str, Any], Limits]] = {}

    def get(self, raw: dict[str, Any] | None) -> Limits:
        """Return the parsed limits of `raw`, parsing it once."""
        if not raw:
            return _EMPTY
        hit = self._items.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        limits = parse_policy(raw)
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[id(raw)] = (raw, limits)
        return limits


def effective(scopes: list[Limits]) -> Limits:
    """Combine scopes the way enforcement does: each numeric field is the smallest non-zero value."""
    result = _EMPTY
    for limits in scopes:
        updates: dict[str, Any] = {}
        for f in fields(Limits):
            if f.name in ("allow", "block"):
                continue
            mine, theirs = getattr(result, f.name), getattr(limits, f.name)
            if theirs and (not mine or theirs < mine):
                updates[f.name] = theirs
        updates["block"] = result.block + limits.block
        # an allowlist at any scope must be satisfied; keep them all (checked one by one by ip_denied)
        updates["allow"] = result.allow + limits.allow
        result = replace(result, **updates)
    return result


def ip_denied(limits: Limits, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str | None:
    """Return "ip_blocklist" / "ip_allowlist" when the address is refused by this scope, else None."""
    if not limits.allow and not limits.block:
        return None
    if address is None:
        return "ip_allowlist" if limits.allow else None
    if any(address in net for net in limits.block if net.version == address.version):
        return "ip_blocklist"
    if limits.allow and not any(address in net for net in limits.allow if net.version == address.version):
        return "ip_allowlist"
    return None


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse a client IP (IPv4-mapped IPv6 unwrapped); None when it is not an address."""
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
