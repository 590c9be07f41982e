"""The Redis TPM window's running total: buckets leave it exactly once, when their second leaves the window.

Redis's clock cannot be moved, so the window's past is written into the hash directly (buckets 70 s and 30 s old)
and the real script then runs against it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from odock.governance.limiter import Check, RedisLimiter

pytestmark = pytest.mark.cluster


@pytest.fixture()
async def limiter(redis_url: str) -> AsyncIterator[tuple[RedisLimiter, redis.asyncio.Redis, str]]:
    client = redis.asyncio.Redis.from_url(redis_url)
    prefix = "odock-test-" + os.urandom(6).hex()
    lim = RedisLimiter(client, prefix)
    yield lim, client, f"{prefix}:rl:key:k1:tpm2"
    await lim.close()
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def tpm(tokens: int) -> Check:
    return Check("T", "key:k1:tpm2", 1000, tokens, "tpm_exceeded", "api_key", "tokens_per_minute")


async def test_expired_buckets_leave_the_running_total_once(
    limiter: tuple[RedisLimiter, redis.asyncio.Redis, str],
) -> None:
    lim, client, key = limiter
    now_s = int((await client.time())[0])
    await client.hset(key, mapping={str(now_s - 70): 500, str(now_s - 30): 300, "t": 800, "o": now_s - 70})
    # only the 30 s old bucket is still in the window: 300 + 600 fits a limit of 1000
    result = await lim.gate([tpm(600)], "tok-1")
    assert result.ok and result.remaining == [100]
    sec = result.now_ms // 1000
    state = {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}
    assert str(now_s - 70) not in state  # expired bucket dropped, and subtracted once
    assert state["t"] == 900 and state[str(sec)] == 600 and state["o"] >= now_s - 60
    # a refund comes back out of both the bucket and the total
    await lim.release([], [(key.split(":rl:", 1)[1], sec, 400)], "tok-1")
    state = {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}
    assert state["t"] == 500 and state[str(sec)] == 200
    # 500 + 600 is over: retry once the 30 s old bucket leaves (then 200 + 600 fits)
    denied = await lim.gate([tpm(600)], "tok-2")
    assert not denied.ok
    assert 28_000 <= denied.retry_ms <= 31_000
    assert int(await client.hget(key, "t")) == 500  # a refusal changes nothing


async def test_headers_report_the_tightest_request_window(
    limiter: tuple[RedisLimiter, redis.asyncio.Redis, str],
) -> None:
    """Of an RPS and an RPM window, the one with less left is reported, with the time its oldest entry frees."""
    from odock.governance.core import _header

    lim, _, _ = limiter
    checks = [
        Check("W", "key:k1:rpm", 100, 60000, "rpm_exceeded", "api_key", "requests_per_minute"),
        Check("W", "key:k1:rps", 5, 1000, "rps_exceeded", "api_key", "requests_per_second"),
    ]
    for n in range(3):
        result = await lim.gate(checks, f"tok-{n}")
        assert result.ok
    assert result.remaining == [97, 2]
    assert 0 < result.reset_ms[1] <= 1000  # measured from the oldest of the three
    assert _header(checks, result) == (5, 2, 1)
    for n in range(3, 5):
        assert (await lim.gate(checks, f"tok-{n}")).ok
    refused = await lim.gate(checks, "tok-5")
    assert not refused.ok and refused.denied == 1 and 0 < refused.retry_ms <= 1000
