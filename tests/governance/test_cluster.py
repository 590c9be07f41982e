"""Cluster mode against the real PostgreSQL and Redis: limits and budgets hold across instances and processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from odock.errors import DependencyUnavailable, GatewayError, PaymentRequired, TooManyRequests
from odock.governance import Governance
from odock.governance.pricing import worst_case_nanos
from odock.governance.store import Budget
from odock.model import Usage
from tests.governance.conftest import KEY_ID, PRICING, clean_redis, make_ctx, open_cluster, rl

pytestmark = pytest.mark.cluster
WORST = worst_case_nanos(PRICING, 100, 100)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
async def pair(
    postgres_url: str, redis_url: str, prefix: str
) -> AsyncIterator[tuple[Governance, Governance]]:
    """Two Governance instances (two simulated processes) sharing one Redis and one PostgreSQL."""
    a = await open_cluster(postgres_url, redis_url, prefix)
    b = await open_cluster(postgres_url, redis_url, prefix, create=False)
    yield a, b
    await a.close()
    await b.close()
    await clean_redis(redis_url, prefix)


async def attempt(gov: Governance, ctx: Any) -> bool:
    """Run early+final; True when admitted."""
    try:
        await gov.early(ctx)
        await gov.final(ctx)
        return True
    except TooManyRequests:
        return False


async def test_rpm_is_cluster_wide(pair: tuple[Governance, Governance]) -> None:
    """RPM 10 admits exactly 10 of 40 concurrent calls spread over two instances."""
    a, b = pair
    ctxs = [make_ctx(key=rl(rpm=10)) for _ in range(40)]
    results = await asyncio.gather(*(attempt(a if i % 2 else b, c) for i, c in enumerate(ctxs)))
    assert sum(results) == 10


async def test_concurrency_never_exceeded(pair: tuple[Governance, Governance]) -> None:
    """Concurrency 3 across two instances: never more than 3 in flight, slots come back on completion."""
    a, b = pair
    in_flight = peak = admitted = 0

    async def one(i: int) -> None:
        nonlocal in_flight, peak, admitted
        gov = a if i % 2 else b
        ctx = make_ctx(key=rl(conc=3))
        try:
            await gov.early(ctx)
        except TooManyRequests as exc:
            assert exc.code == "concurrency_exceeded"
            return
        in_flight += 1
        admitted += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        await gov.complete(ctx, None)

    for _ in range(5):
        await asyncio.gather(*(one(i) for i in range(12)))
    assert peak <= 3 and admitted >= 3


async def test_tpm_refund_across_instances(pair: tuple[Governance, Governance]) -> None:
    """TPM reservations on one instance are refunded by post-flight and visible to the other at once."""
    a, b = pair
    kwargs: dict[str, Any] = {"key": rl(tpm=1000), "input_tokens": 100, "max_tokens": 400}
    first = make_ctx(**kwargs)
    assert await attempt(a, first)
    assert await attempt(b, make_ctx(**kwargs))
    assert not await attempt(b, make_ctx(**kwargs))
    first.usage = Usage(input_tokens=50, output_tokens=50)
    await a.complete(first, None)  # 400 refunded: 600 used
    assert not await attempt(b, make_ctx(**kwargs))  # 600 + 500 > 1000
    assert await attempt(b, make_ctx(key=rl(tpm=1000), input_tokens=0, max_tokens=400))  # 1000


async def test_rate_limit_denial_shape_and_headers(pair: tuple[Governance, Governance]) -> None:
    """A Redis-backed denial carries scope, limit, retry_after; admitted calls carry X-RateLimit headers."""
    a, _ = pair
    ok = make_ctx(org=rl(rpm=1))
    await a.early(ok)
    assert a.response_headers(ok)["X-RateLimit-Remaining"] == "0"
    with pytest.raises(TooManyRequests) as info:
        await a.early(make_ctx(org=rl(rpm=1)))
    assert info.value.extra["scope"] == "organisation" and info.value.extra["retry_after"] >= 1


async def add_budget(gov: Governance, amount: int) -> Budget:
    """Create a key budget in PostgreSQL and load it."""
    budget = await gov.store.insert_budget(
        Budget(id="", name="b", owner_type="APIKEY", owner_id=KEY_ID, period="MONTHLY", amount_nanos=amount)
    )
    await gov.refresh_definitions()
    return budget


async def test_budget_never_overspent_across_instances(pair: tuple[Governance, Governance]) -> None:
    """100 concurrent calls over two instances on a budget fitting 6 at worst case: 6 admitted, spend <= budget."""
    a, b = pair
    amount = WORST * 6 + WORST // 3
    await add_budget(a, amount)
    await b.refresh_definitions()
    ctxs = [make_ctx() for _ in range(100)]

    async def one(i: int, ctx: Any) -> bool:
        gov = a if i % 2 else b
        try:
            await gov.early(ctx)
            await gov.final(ctx)
        except PaymentRequired:
            await gov.complete(ctx, None)
            return False
        await asyncio.sleep(0.005)
        ctx.usage = Usage(input_tokens=100, output_tokens=100)
        await gov.complete(ctx, None)
        return True

    admitted = sum(await asyncio.gather(*(one(i, c) for i, c in enumerate(ctxs))))
    assert admitted == 6
    key = next(c for c in ctxs if c.governance and c.governance.held).governance.held[0].item.ref.key
    used, reserved = await a.window_state(key) or (0, 0)
    assert used == 6 * WORST <= amount and reserved == 0
    windows = await a.store.windows(key.split(":")[1])
    assert windows[0]["used"] == 6 * WORST  # the durable ledger agrees


async def test_window_rebuilt_from_postgres_after_redis_loss(
    pair: tuple[Governance, Governance], redis_url: str, prefix: str
) -> None:
    """When Redis loses a window, it is rebuilt from PostgreSQL's settled total."""
    a, _ = pair
    await add_budget(a, WORST * 3)
    ctx = make_ctx()
    assert await attempt(a, ctx)
    ctx.usage = Usage(input_tokens=100, output_tokens=100)
    await a.complete(ctx, None)
    key = ctx.governance.held[0].item.ref.key
    await clean_redis(redis_url, prefix)
    assert await a.window_state(key) is None
    assert await attempt(a, make_ctx())
    assert await a.window_state(key) == (WORST, WORST)


async def test_settle_is_idempotent_in_ledger(pair: tuple[Governance, Governance]) -> None:
    """Settling the same reservation twice charges once in Redis and in PostgreSQL."""
    a, b = pair
    await add_budget(a, 10**12)
    ctx = make_ctx()
    assert await attempt(a, ctx)
    key = ctx.governance.held[0].item.ref.key
    rid = ctx.governance.reservation_id
    assert a.redis_ledger is not None and b.redis_ledger is not None
    await a.redis_ledger.settle(rid, {key: 500})
    await b.redis_ledger.settle(rid, {key: 500})
    await a.redis_ledger.release(rid)
    assert await a.window_state(key) == (500, 0)
    assert (await a.store.windows(key.split(":")[1]))[0]["used"] == 500


async def test_crashed_instance_reservation_released(postgres_url: str, redis_url: str, prefix: str) -> None:
    """A reservation made by an instance dropped without complete() is released by another's reconciliation."""
    crashed = await open_cluster(postgres_url, redis_url, prefix, reservation_ttl_s=0.2)
    survivor = await open_cluster(postgres_url, redis_url, prefix, create=False)
    try:
        await add_budget(crashed, WORST)
        await survivor.refresh_definitions()
        ctx = make_ctx()
        assert await attempt(crashed, ctx)
        key = ctx.governance.held[0].item.ref.key
        await crashed.close()  # gone without post-flight
        with pytest.raises(PaymentRequired):
            await survivor.final(make_ctx())
        await asyncio.sleep(0.3)
        assert await survivor.reconcile() == 1
        assert await survivor.window_state(key) == (0, 0)
        assert await attempt(survivor, make_ctx())
    finally:
        await survivor.close()
        await clean_redis(redis_url, prefix)


async def test_reconciliation_settles_from_ledger(postgres_url: str, redis_url: str, prefix: str) -> None:
    """A call charged in PostgreSQL but never settled in Redis (crash in between) is settled, not released."""
    gov = await open_cluster(postgres_url, redis_url, prefix, reservation_ttl_s=0.1)
    try:
        await add_budget(gov, 10**12)
        ctx = make_ctx()
        assert await attempt(gov, ctx)
        key = ctx.governance.held[0].item.ref.key
        await gov.store.record_charges([(ctx.governance.reservation_id, key, 1234)])
        await asyncio.sleep(0.2)
        assert await gov.reconcile() == 1
        assert await gov.window_state(key) == (1234, 0)
    finally:
        await gov.close()
        await clean_redis(redis_url, prefix)


async def test_redis_down_fails_closed(postgres_url: str) -> None:
    """With Redis unreachable, limited calls get 503 rate_limit_unavailable."""
    gov = await open_cluster(postgres_url, "redis://127.0.0.1:1/0", "x")
    try:
        with pytest.raises(DependencyUnavailable) as info:
            await gov.early(make_ctx(key=rl(rpm=5)))
        assert info.value.status == 503 and info.value.code == "rate_limit_unavailable"
        await add_budget(gov, 10**12)
        ctx = make_ctx()
        await gov.early(ctx)  # no limits: the limiter is not consulted
        with pytest.raises(DependencyUnavailable):
            await gov.final(ctx)
        await gov.complete(ctx, None)  # never raises
    finally:
        await gov.close()


async def test_redis_down_fail_open_uses_local_limits(postgres_url: str) -> None:
    """With redis_fail_open, limits fall back to in-process counters (still enforced) and budgets to memory."""
    gov = await open_cluster(postgres_url, "redis://127.0.0.1:1/0", "x", redis_fail_open=True)
    try:
        results = [await attempt(gov, make_ctx(key=rl(rpm=2))) for _ in range(3)]
        assert results == [True, True, False]
        await add_budget(gov, WORST)
        first = make_ctx()
        assert await attempt(gov, first)
        with pytest.raises(PaymentRequired):
            await gov.final(make_ctx())
        first.usage = Usage(input_tokens=1)
        await gov.complete(first, None)
    finally:
        await gov.close()


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {repo!r})
    from odock.errors import TooManyRequests
    from tests.governance.conftest import make_ctx, open_cluster, rl

    async def main():
        gov = await open_cluster({pg!r}, {redis!r}, {prefix!r}, create=False)
        admitted = 0
        try:
            for _ in range(25):
                ctx = make_ctx(key=rl(rpm=20))
                try:
                    await gov.early(ctx)
                    admitted += 1
                except TooManyRequests:
                    pass
        finally:
            await gov.close()
        print(json.dumps({{"admitted": admitted}}))

    asyncio.run(main())
    """
)


async def test_two_os_processes_share_the_limit(postgres_url: str, redis_url: str, prefix: str) -> None:
    """Two real gateway processes against one Redis admit exactly RPM 20 between them."""
    setup = await open_cluster(postgres_url, redis_url, prefix)
    await setup.close()
    code = WORKER.format(repo=str(REPO), pg=postgres_url, redis=redis_url, prefix=prefix)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO)
        )
        for _ in range(2)
    ]
    try:
        outputs = [await asyncio.wait_for(p.communicate(), timeout=60) for p in procs]
    finally:
        await clean_redis(redis_url, prefix)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    admitted = [json.loads(out.decode().strip().splitlines()[-1])["admitted"] for out, _ in outputs]
    assert sum(admitted) == 20


async def test_budget_deny_is_gateway_error_402(pair: tuple[Governance, Governance]) -> None:
    """A full budget answers 402 budget_exceeded before the upstream call."""
    a, _ = pair
    await add_budget(a, WORST - 1)
    ctx = make_ctx()
    await a.early(ctx)
    with pytest.raises(GatewayError) as info:
        await a.final(ctx)
    assert info.value.status == 402 and info.value.code == "budget_exceeded"
