"""Policy parsing and scope combination (reference §5.1, §5.2)."""

from __future__ import annotations

import ipaddress

from odock.governance.policy import Limits, effective, ip_denied, parse_ip, parse_policy

ENVELOPE = {
    "policies": {
        "ip": {"allowlist": ["10.0.0.0/8"], "blocklist": ["10.9.0.0/16"]},
        "ratelimit": {
            "requests": {"per_second": 20, "per_minute": 1200, "burst": 50},
            "tokens": {"per_minute": 120000},
            "concurrency": {"max": 40, "lease_ttl_seconds": 30},
            "payload": {"max_request_bytes": 2097152, "max_tokens": 8192},
        },
    }
}


def test_envelope_and_inner_dict_parse_the_same() -> None:
    """The {"policies": …} envelope and its inner dict give the same limits."""
    a = parse_policy(ENVELOPE)
    assert a == parse_policy(ENVELOPE["policies"])
    assert (a.rps, a.rpm, a.burst, a.tpm, a.concurrency, a.lease_ttl_s) == (20, 1200, 50, 120000, 40, 30.0)
    assert (a.max_request_bytes, a.max_tokens) == (2097152, 8192)


def test_zero_omitted_negative_and_junk_mean_no_limit() -> None:
    """0, omitted, negative and non-numeric values are no limit."""
    limits = parse_policy({"ratelimit": {"requests": {"per_minute": 0, "per_second": -3, "burst": "x"}}})
    assert limits.empty
    assert parse_policy(None).empty and parse_policy({}).empty


def test_narrower_scope_never_relaxes() -> None:
    """Combining scopes keeps the strictest non-zero value of each field."""
    org = parse_policy({"ratelimit": {"requests": {"per_minute": 10}, "tokens": {"per_minute": 500}}})
    key = parse_policy({"ratelimit": {"requests": {"per_minute": 100, "per_second": 2}}})
    combined = effective([org, key])
    assert (combined.rpm, combined.rps, combined.tpm) == (10, 2, 500)
    assert effective([key, org]).rpm == 10
    assert effective([Limits(), org]).rpm == 10


def test_ip_rules() -> None:
    """Blocklist wins over allowlist; a non-empty allowlist refuses everything else; v4-mapped v6 unwrapped."""
    limits = parse_policy(ENVELOPE)
    assert ip_denied(limits, parse_ip("10.1.2.3")) is None
    assert ip_denied(limits, parse_ip("10.9.1.1")) == "ip_blocklist"
    assert ip_denied(limits, parse_ip("192.168.1.1")) == "ip_allowlist"
    assert ip_denied(limits, parse_ip("::ffff:10.1.2.3")) is None
    assert parse_ip("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert ip_denied(parse_policy({}), parse_ip("1.2.3.4")) is None
