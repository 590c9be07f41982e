"""Rate limits in embedded mode (in-process counters): each limit type, every scope, post-flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from odock.errors import TooManyRequests
from odock.governance import Governance
from odock.governance.limiter import Check, LocalLimiter
from odock.model import Usage
from tests.governance.conftest import make_ctx, open_embedded, rl


async def admit(gov: Governance, ctx_kwargs: dict[str, object], n: int) -> tuple[int, list[TooManyRequests]]:
    """Run early+final for n calls (completing none); return the admitted count and the denials."""
    admitted, denials = 0, []
    for _ in range(n):
        ctx = make_ctx(**ctx_kwargs)  # type: ignore[arg-type]
        try:
            await gov.early(ctx)
            await gov.final(ctx)
            admitted += 1
        except TooManyRequests as exc:
            denials.append(exc)
    return admitted, denials


async def test_rpm_per_key(embedded: Governance) -> None:
    """An API key RPM of 3 admits 3 and refuses the 4th with rpm_exceeded, scope, limit and Retry-After."""
    admitted, denials = await admit(embedded, {"key": rl(rpm=3)}, 5)
    assert admitted == 3 and len(denials) == 2
    err = denials[0]
    assert err.status == 429 and err.code == "rpm_exceeded"
    assert err.extra["scope"] == "api_key" and err.extra["limit"] == "requests_per_minute"
    assert 1 <= err.extra["retry_after"] <= 60 and err.headers["Retry-After"] == str(err.extra["retry_after"])


async def test_broader_scope_applies_even_when_key_allows_more(embedded: Governance) -> None:
    """An organisation RPM of 2 refuses the 3rd call although the key allows 100."""
    admitted, denials = await admit(embedded, {"org": rl(rpm=2), "key": rl(rpm=100)}, 4)
    assert admitted == 2 and denials[0].extra["scope"] == "organisation"


async def test_team_and_model_scopes(embedded: Governance) -> None:
    """Team RPM is enforced in early, model RPM in final."""
    admitted, denials = await admit(embedded, {"team": rl(rpm=1)}, 2)
    assert admitted == 1 and denials[0].extra["scope"] == "team"
    admitted, denials = await admit(embedded, {"model": rl(rpm=2), "team": {}}, 3)
    assert admitted == 2 and denials[0].extra["scope"] == "model"


async def test_rps(embedded: Governance) -> None:
    """RPS 2 refuses the third call in the same second with rps_exceeded."""
    admitted, denials = await admit(embedded, {"key": rl(rps=2)}, 3)
    assert admitted == 2 and denials[0].code == "rps_exceeded"


async def test_burst(embedded: Governance) -> None:
    """A burst bucket of 3 refilled at 1/s admits 3 back-to-back calls."""
    admitted, denials = await admit(embedded, {"key": rl(burst=3, rpm=60)}, 4)
    assert admitted == 3 and denials[0].code == "burst_exceeded"


async def test_concurrency_lease_released_in_post_flight(embedded: Governance) -> None:
    """Concurrency 2: a third in-flight call is refused; completing one frees a slot."""
    ctxs = [make_ctx(key=rl(conc=2)) for _ in range(3)]
    await embedded.early(ctxs[0])
    await embedded.early(ctxs[1])
    with pytest.raises(TooManyRequests) as info:
        await embedded.early(ctxs[2])
    assert info.value.code == "concurrency_exceeded" and info.value.extra["limit"] == "concurrency"
    await embedded.complete(ctxs[0], None)
    await embedded.complete(ctxs[0], None)  # idempotent: does not free a second slot
    await embedded.early(ctxs[2])
    with pytest.raises(TooManyRequests):
        await embedded.early(make_ctx(key=rl(conc=2)))


async def test_concurrency_lease_expires_after_ttl() -> None:
    """A lease that is never released expires after its TTL."""
    limiter = LocalLimiter()
    check = Check("L", "k", 1, 1000, "concurrency_exceeded", "api_key", "concurrency")
    assert limiter.gate_now([check], "a", 10_000).ok
    assert not limiter.gate_now([check], "b", 10_500).ok
    assert limiter.gate_now([check], "b", 11_001).ok


async def test_sliding_window_is_exact_across_boundaries() -> None:
    """RPM 2 never admits more than 2 in any 60 s interval; a slot frees exactly 60 s after its use."""
    limiter = LocalLimiter()
    check = Check("W", "k", 2, 60000, "rpm_exceeded", "api_key", "requests_per_minute")
    assert limiter.gate_now([check], "a", 59_000).ok
    assert limiter.gate_now([check], "b", 59_900).ok
    denied = limiter.gate_now([check], "c", 60_100)
    assert not denied.ok and denied.retry_ms == 58_900
    assert limiter.gate_now([check], "c", 119_001).ok


async def test_tpm_running_total_follows_reserves_refunds_and_the_minute() -> None:
    """The TPM window's running total equals the sum of its seconds after reservations, refunds (unused tokens
    back, an under-estimate charged) and expiry; a second leaves the window exactly 60 s after it."""
    limiter = LocalLimiter()

    def tpm(tokens: int) -> Check:
        return Check("T", "k", 1000, tokens, "tpm_exceeded", "api_key", "tokens_per_minute")

    assert limiter.gate_now([tpm(400)], "a", 10_000).ok
    assert limiter.gate_now([tpm(400)], "b", 20_000).ok
    assert not limiter.gate_now([tpm(400)], "c", 30_000).ok
    await limiter.release([], [("k", 10, 300)], "a")  # 100 of the first 400 used
    await limiter.release([], [("k", 20, -50)], "b")  # 450 used: an under-estimate is charged
    assert limiter._token_totals["k"] == sum(limiter._tokens["k"].values()) == 550
    assert limiter.gate_now([tpm(450)], "c", 30_000).ok
    assert not limiter.gate_now([tpm(1)], "d", 69_999).ok  # second 10 is still inside the minute
    assert limiter.gate_now([tpm(100)], "d", 70_000).ok  # ...and left it now: 1000 - 900 + 100
    assert limiter._token_totals["k"] == sum(limiter._tokens["k"].values()) == 1000


async def test_tpm_reserves_and_refunds_unused(embedded: Governance) -> None:
    """TPM 1000 with 500-token reservations: the 3rd is refused until post-flight refunds unused tokens."""
    kwargs = {"key": rl(tpm=1000), "input_tokens": 100, "max_tokens": 400}
    first, second = make_ctx(**kwargs), make_ctx(**kwargs)  # type: ignore[arg-type]
    for ctx in (first, second):
        await embedded.early(ctx)
        await embedded.final(ctx)
    third = make_ctx(**kwargs)  # type: ignore[arg-type]
    await embedded.early(third)
    with pytest.raises(TooManyRequests) as info:
        await embedded.final(third)
    assert info.value.code == "tpm_exceeded" and info.value.extra["limit"] == "tokens_per_minute"
    await embedded.complete(third, None)
    first.usage = Usage(input_tokens=100, output_tokens=50)  # used 150 of 500
    await embedded.complete(first, None)
    # window now holds 150 + 500 = 650: one more 500-token call fits exactly once 350 were refunded
    fourth = make_ctx(**kwargs)  # type: ignore[arg-type]
    await embedded.early(fourth)
    with pytest.raises(TooManyRequests):
        await embedded.final(fourth)  # 650 + 500 > 1000
    await embedded.complete(fourth, None)
    second.usage = Usage(input_tokens=100, output_tokens=0)
    await embedded.complete(second, None)  # window: 150 + 100 = 250
    fifth = make_ctx(**kwargs)  # type: ignore[arg-type]
    await embedded.early(fifth)
    await embedded.final(fifth)  # 750 <= 1000


async def test_tpm_trips_at_the_configured_value(embedded: Governance) -> None:
    """A reservation equal to the TPM limit is admitted; one token more is refused."""
    ctx = make_ctx(key=rl(tpm=500), input_tokens=100, max_tokens=400)
    await embedded.early(ctx)
    await embedded.final(ctx)
    await embedded.complete(ctx, None)  # no usage: everything refunded
    big = make_ctx(key=rl(tpm=500), input_tokens=101, max_tokens=400)
    await embedded.early(big)
    with pytest.raises(TooManyRequests):
        await embedded.final(big)


async def test_payload_and_max_tokens(embedded: Governance) -> None:
    """Body bytes and max_tokens above a scope's cap are refused (payload_too_large, max_tokens_exceeded)."""
    with pytest.raises(TooManyRequests) as info:
        await embedded.early(make_ctx(org=rl(bytes=100), body_bytes=101))
    assert info.value.code == "payload_too_large" and info.value.extra["scope"] == "organisation"
    with pytest.raises(TooManyRequests) as info:
        await embedded.early(make_ctx(key=rl(max_tokens=50), max_tokens=51))
    assert info.value.code == "max_tokens_exceeded"
    ctx = make_ctx(model=rl(max_tokens=50), max_tokens=51)
    await embedded.early(ctx)
    with pytest.raises(TooManyRequests) as info:
        await embedded.final(ctx)
    assert info.value.code == "max_tokens_exceeded" and info.value.extra["scope"] == "model"


async def test_global_policy_and_ip_rules(tmp_path: Path) -> None:
    """Global RPM counts in pre_auth; blocked IPs get 429 ip_not_allowed; scoped IP rules apply in early."""
    gov = await open_embedded(tmp_path, ratelimit_global_policy=rl(rpm=2, block=["203.0.113.0/24"]))
    try:
        with pytest.raises(TooManyRequests) as info:
            await gov.pre_auth("203.0.113.9")
        assert info.value.code == "ip_not_allowed" and info.value.extra["scope"] == "ip"
        await gov.pre_auth("10.0.0.1")
        await gov.pre_auth("10.0.0.2")
        with pytest.raises(TooManyRequests) as info:
            await gov.pre_auth("10.0.0.3")
        assert info.value.code == "rpm_exceeded" and info.value.extra["scope"] == "global"
        with pytest.raises(TooManyRequests) as info:
            await gov.early(make_ctx(key=rl(allow=["10.0.0.0/8"]), client_ip="192.168.0.1"))
        assert info.value.code == "ip_not_allowed" and info.value.extra["scope"] == "api_key"
        await gov.early(make_ctx(key=rl(allow=["10.0.0.0/8"]), client_ip="10.1.1.1"))
    finally:
        await gov.close()


async def test_rate_limit_headers(embedded: Governance) -> None:
    """Admitted calls carry X-RateLimit-Limit/-Remaining/-Reset of the tightest request window."""
    ctx = make_ctx(org=rl(rpm=10), key=rl(rpm=5))
    await embedded.early(ctx)
    headers = embedded.response_headers(ctx)
    assert headers["X-RateLimit-Limit"] == "5" and headers["X-RateLimit-Remaining"] == "4"
    assert 1 <= int(headers["X-RateLimit-Reset"]) <= 60
    assert embedded.response_headers(make_ctx()) == {}


async def test_concurrent_gates_never_exceed(embedded: Governance) -> None:
    """100 concurrent calls against RPM 10 and concurrency 7 admit exactly 7 in flight."""
    ctxs = [make_ctx(key=rl(rpm=10, conc=7)) for _ in range(100)]
    results = await asyncio.gather(*(embedded.early(c) for c in ctxs), return_exceptions=True)
    assert sum(r is None for r in results) == 7
