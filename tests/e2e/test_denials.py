"""Every governance denial (429/402) as the official openai SDK sees it from a live embedded gateway, refused before
any upstream call; governed 200s carry X-RateLimit headers."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import Tenant, admin, limits, make_tenant, seen
from tests.harness import GatewayProcess


def sdk(gw: GatewayProcess, tenant: Tenant) -> openai.AsyncOpenAI:
    """An SDK client without retries (a retry would hide the first answer)."""
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=tenant.secret, max_retries=0, timeout=10)


def ask(text: str = "hi", max_tokens: int = 10) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


async def refused(
    client: openai.AsyncOpenAI, exc: type[openai.APIStatusError], code: str, **kwargs: Any
) -> openai.APIStatusError:
    """Make one call that must fail with `exc` and `code`; return the error."""
    with pytest.raises(exc) as info:
        await client.chat.completions.create(**{**ask(), **kwargs})
    assert info.value.code == code, info.value.body
    return info.value


def assert_retry_after(err: openai.APIStatusError) -> int:
    """The body's retry_after is a positive integer equal to the Retry-After header."""
    body = err.body
    assert isinstance(body, dict)
    retry = body["retry_after"]
    assert isinstance(retry, int) and retry >= 1
    assert err.response.headers["retry-after"] == str(retry)
    return retry


async def test_rpm_denial_shape_and_ratelimit_headers(embedded: GatewayProcess, mock: MockServer) -> None:
    """RPM 2: two 200s with X-RateLimit-Limit/-Remaining/-Reset, then RateLimitError rpm_exceeded + Retry-After."""
    tenant = await make_tenant(embedded, mock.base_url, key_policies=limits(rpm=2))
    async with sdk(embedded, tenant) as client:
        remaining = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(**ask())
            assert raw.http_response.status_code == 200
            assert raw.headers["x-ratelimit-limit"] == "2"
            assert 0 < int(raw.headers["x-ratelimit-reset"]) <= 60
            remaining.append(int(raw.headers["x-ratelimit-remaining"]))
        assert remaining == [1, 0]
        err = await refused(client, openai.RateLimitError, "rpm_exceeded")
    assert err.status_code == 429
    assert isinstance(err.body, dict)
    assert err.body["scope"] == "api_key" and err.body["limit"] == "requests_per_minute"
    assert assert_retry_after(err) <= 60
    assert len(seen(mock, tenant)) == 2


async def test_tpm_denial(embedded: GatewayProcess, mock: MockServer) -> None:
    """TPM 200: a call reserving more than 200 tokens is RateLimitError tpm_exceeded; a small one then passes."""
    tenant = await make_tenant(embedded, mock.base_url, key_policies=limits(tpm=200))
    async with sdk(embedded, tenant) as client:
        err = await refused(client, openai.RateLimitError, "tpm_exceeded", max_tokens=500)
        assert isinstance(err.body, dict)
        assert err.body["scope"] == "api_key" and err.body["limit"] == "tokens_per_minute"
        assert_retry_after(err)
        assert seen(mock, tenant) == []
        await client.chat.completions.create(**ask(max_tokens=20))
    assert len(seen(mock, tenant)) == 1


async def test_concurrency_denial(embedded: GatewayProcess, mock: MockServer) -> None:
    """Concurrency 1: a second call while one is in flight is RateLimitError concurrency_exceeded; the slot returns."""
    tenant = await make_tenant(embedded, mock.base_url, key_policies=limits(concurrency=1))
    async with sdk(embedded, tenant) as client:
        slow = asyncio.ensure_future(client.chat.completions.create(**ask("[[mock latency_ms=600]] slow")))
        for _ in range(100):  # bounded: wait until the slow call reached the upstream (it holds the lease)
            if seen(mock, tenant):
                break
            await asyncio.sleep(0.02)
        err = await refused(client, openai.RateLimitError, "concurrency_exceeded")
        assert isinstance(err.body, dict)
        assert err.body["scope"] == "api_key" and err.body["limit"] == "concurrency"
        assert_retry_after(err)
        await slow
        await client.chat.completions.create(**ask())  # the lease was released in post-flight
    assert len(seen(mock, tenant)) == 2


async def test_max_tokens_cap(embedded: GatewayProcess, mock: MockServer) -> None:
    """An organisation max_tokens cap of 50 refuses max_tokens 100 with RateLimitError max_tokens_exceeded."""
    tenant = await make_tenant(embedded, mock.base_url, org_policies=limits(max_tokens=50))
    async with sdk(embedded, tenant) as client:
        err = await refused(client, openai.RateLimitError, "max_tokens_exceeded", max_tokens=100)
        assert isinstance(err.body, dict)
        assert err.body["scope"] == "organisation" and err.body["limit"] == "max_tokens"
        await client.chat.completions.create(**ask(max_tokens=50))
    assert len(seen(mock, tenant)) == 1


async def test_requests_quota_exceeded(embedded: GatewayProcess, mock: MockServer) -> None:
    """A daily REQUESTS quota of 2 on the key admits 2; the third is RateLimitError quota_exceeded + Retry-After."""
    tenant = await make_tenant(embedded, mock.base_url)
    quota = (
        await admin(
            embedded,
            "POST",
            "/admin/quotas",
            json={
                "name": "daily-requests",
                "organisation": tenant.org,
                "key": "app",
                "period": "DAILY",
                "metric": "REQUESTS",
                "limit": 2,
            },
        )
    ).json()
    assert quota["owner_type"] == "APIKEY" and quota["owner_id"] == tenant.key_id
    async with sdk(embedded, tenant) as client:
        for _ in range(2):
            await client.chat.completions.create(**ask())
        err = await refused(client, openai.RateLimitError, "quota_exceeded")
    assert isinstance(err.body, dict)
    assert err.body["scope"] == "api_key" and err.body["limit"] == "requests"
    assert err.body["quota_id"] == quota["id"]
    assert assert_retry_after(err) <= 86400 + 3600
    assert len(seen(mock, tenant)) == 2


async def test_budget_exceeded_402(embedded: GatewayProcess, mock: MockServer) -> None:
    """A key budget below one call's worst case answers APIStatusError 402 budget_exceeded, upstream untouched."""
    tenant = await make_tenant(embedded, mock.base_url)
    budget = (
        await admin(
            embedded,
            "POST",
            "/admin/budgets",
            json={
                "name": "tiny",
                "organisation": tenant.org,
                "key": "app",
                "period": "MONTHLY",
                "amount_nanos": 10 * 2000 - 1,
            },
        )
    ).json()  # max_tokens 10 at 2000 nanos/token does not fit
    async with sdk(embedded, tenant) as client:
        err = await refused(client, openai.APIStatusError, "budget_exceeded")
        assert type(err) is openai.APIStatusError and err.status_code == 402
        assert isinstance(err.body, dict)
        assert err.body["scope"] == "api_key" and err.body["budget_id"] == budget["id"]
        assert err.body["retry_after"] >= 1
        assert err.response.headers["retry-after"] == str(err.body["retry_after"])
        assert seen(mock, tenant) == []
        await client.chat.completions.create(**ask(max_tokens=9))  # 9 × 2000 fits
    assert len(seen(mock, tenant)) == 1
