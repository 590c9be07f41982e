"""Cluster mode against the real PostgreSQL and Redis: limits and budgets hold across instances and processes."""

from __future__ import annotations

import asyncio
import contextlib
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
from odock.governance import Governance, ledger
from odock.governance.pricing import cost_nanos, worst_case_nanos
from odock.governance.store import Budget, Quota
from odock.model import Usage
from tests.governance.conftest import (
    KEY_ID,
    ORG_ID,
    PRICING,
    add_quota,
    clean_redis,
    make_ctx,
    open_cluster,
    rl,
)

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
        limited = make_ctx(model=rl(tpm=10**6))  # the final gate and the reservation would share one write
        await gov.early(limited)
        with pytest.raises(DependencyUnavailable) as info:
            await gov.final(limited)
        assert info.value.code == "rate_limit_unavailable"
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
        # a key whose only budget is its organisation's: the final gate and the reservation fall back together
        await gov.store.insert_budget(
            Budget(
                id="", name="org", owner_type="ORG", owner_id=ORG_ID, period="MONTHLY", amount_nanos=10**12
            )
        )
        await gov.refresh_definitions()
        limited = make_ctx(model=rl(tpm=10**6), key_id="key-other")
        assert await attempt(gov, limited)
        assert limited.governance.ledger is gov.local_ledger and limited.governance.tokens
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


# --- ledger: many windows, group commit, script runner ----------------------------------------------------------


async def test_cold_redis_reserves_across_many_windows(
    pair: tuple[Governance, Governance], redis_url: str, prefix: str
) -> None:
    """Six windows (budgets and quotas on org and key), none in Redis: one rebuild round, admitted, settled right."""
    a, _ = pair
    ledger_a = a.redis_ledger
    assert ledger_a is not None
    big = 10**15
    definitions: list[Budget | Quota] = [
        await add_budget(a, big),
        await a.store.insert_budget(
            Budget(id="", name="ob", owner_type="ORG", owner_id=ORG_ID, period="MONTHLY", amount_nanos=big)
        ),
        await add_quota(a, "REQUESTS", 1000),
        await add_quota(a, "TOKENS", big),
        await add_quota(a, "REQUESTS", 1000, owner="ORG", owner_id=ORG_ID),
        await add_quota(a, "TOKENS_IN", big, owner="ORG", owner_id=ORG_ID),
    ]
    await a.refresh_definitions()
    rebuilds: list[int] = []
    rebuild = ledger_a._rebuild

    async def counting(refs: list[ledger.WindowRef]) -> None:
        rebuilds.append(len(refs))
        await rebuild(refs)

    ledger_a._rebuild = counting  # type: ignore[method-assign]
    usage = Usage(input_tokens=100, output_tokens=50)
    expected = {
        "COST": cost_nanos(PRICING, usage),
        "REQUESTS": 1,
        "TOKENS": usage.total,
        "TOKENS_IN": usage.total_input,
    }

    def metric(d: Budget | Quota) -> str:
        return d.metric if isinstance(d, Quota) else "COST"

    async def one_call() -> dict[str, str]:
        ctx = make_ctx()
        assert await attempt(a, ctx)  # admitted: no RuntimeError / 500 on a cold key
        ctx.usage = usage
        await a.complete(ctx, None)
        assert len(ctx.governance.held) == 6
        return {h.definition.id: h.item.ref.key for h in ctx.governance.held}

    keys = await one_call()
    assert rebuilds == [6]  # every missing window reported and rebuilt at once
    for d in definitions:
        assert await a.window_state(keys[d.id]) == (expected[metric(d)], 0)
        assert (await a.store.windows(d.id))[0]["used"] == expected[metric(d)]

    await clean_redis(redis_url, prefix)  # Redis loses everything: windows come back from PostgreSQL
    await one_call()
    assert rebuilds == [6, 6]
    for d in definitions:
        assert await a.window_state(keys[d.id]) == (2 * expected[metric(d)], 0)
        assert (await a.store.windows(d.id))[0]["used"] == 2 * expected[metric(d)]


async def test_reserve_gives_up_when_windows_keep_vanishing(pair: tuple[Governance, Governance]) -> None:
    """Windows that never stay in Redis: a bounded number of attempts, then 503 (a Redis fault), not a 500."""
    a, _ = pair
    assert a.redis_ledger is not None
    await add_budget(a, 10**12)
    calls = 0

    async def lost(refs: list[ledger.WindowRef]) -> None:
        nonlocal calls
        calls += 1

    a.redis_ledger._rebuild = lost  # type: ignore[method-assign]
    ctx = make_ctx()
    await a.early(ctx)
    with pytest.raises(DependencyUnavailable) as info:
        await a.final(ctx)
    assert info.value.status == 503 and calls == ledger._RESERVE_ATTEMPTS
    await a.complete(ctx, None)


def spy_charges(gov: Governance, *, delay: float = 0.0, fail_first: bool = False) -> list[int]:
    """Wrap the store's record_charges: record each call's batch size; optionally slow it or fail the first call."""
    sizes: list[int] = []
    real = gov.store.record_charges

    async def spy(charges: Any) -> list[bool]:
        items = list(charges)
        sizes.append(len(items))
        await asyncio.sleep(delay)
        if fail_first and len(sizes) == 1:
            raise DependencyUnavailable("governance store unavailable", "store_unavailable")
        return await real(items)

    gov.store.record_charges = spy  # type: ignore[method-assign]
    return sizes


async def governed(gov: Governance, usage: Usage) -> Any:
    """One admitted call settled with `usage`."""
    ctx = make_ctx()
    assert await attempt(gov, ctx)
    ctx.usage = usage
    await gov.complete(ctx, None)
    return ctx


async def test_settles_are_group_committed(
    pair: tuple[Governance, Governance], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settles arriving while a write is in flight share the next one (capped); every charge lands exactly once."""
    a, _ = pair
    budget = await add_budget(a, 10**15)
    usage = Usage(input_tokens=10, output_tokens=10)
    cost = cost_nanos(PRICING, usage)
    sizes = spy_charges(a, delay=0.02)
    first = await governed(a, usage)
    assert sizes == [1]  # alone: written at once, no waiting for company
    monkeypatch.setattr(ledger, "MAX_BATCH", 7)
    await asyncio.gather(*(governed(a, usage) for _ in range(60)))
    assert sum(sizes) == 61 and len(sizes) < 30 and max(sizes) == 7
    key = first.governance.held[0].item.ref.key
    assert await a.window_state(key) == (61 * cost, 0)
    assert (await a.store.windows(budget.id))[0]["used"] == 61 * cost


async def test_group_commit_failure_reaches_every_caller(pair: tuple[Governance, Governance]) -> None:
    """A failed batch fails each of its callers: they settle in Redis, and reconciliation writes their charges."""
    a, _ = pair
    assert a.redis_ledger is not None
    # the background reconciliation would retry the failed batch at its own time: this test calls it itself
    if a._task is not None:
        a._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a._task
        a._task = None
    budget = await add_budget(a, 10**15)
    usage = Usage(input_tokens=10, output_tokens=10)
    cost = cost_nanos(PRICING, usage)
    sizes = spy_charges(a, delay=0.02, fail_first=True)
    ctxs = await asyncio.gather(*(governed(a, usage) for _ in range(20)))
    key = ctxs[0].governance.held[0].item.ref.key
    assert len(a.redis_ledger._unwritten) == sizes[0] and sum(sizes) == 20
    assert await a.window_state(key) == (20 * cost, 0)  # Redis settled every call
    assert (await a.store.windows(budget.id))[0]["used"] == (20 - sizes[0]) * cost
    await a.reconcile()
    assert a.redis_ledger._unwritten == []
    assert (await a.store.windows(budget.id))[0]["used"] == 20 * cost
    assert await a.window_state(key) == (20 * cost, 0)


async def test_concurrent_repeat_settles_charge_once(pair: tuple[Governance, Governance]) -> None:
    """Two settles of one reservation in the same batch: one charge in PostgreSQL and in Redis."""
    a, _ = pair
    assert a.redis_ledger is not None
    budget = await add_budget(a, 10**12)
    ctx = make_ctx()
    assert await attempt(a, ctx)
    key = ctx.governance.held[0].item.ref.key
    rid = ctx.governance.reservation_id
    spy_charges(a, delay=0.02)
    results = await asyncio.gather(*(a.redis_ledger.settle(rid, {key: 500}) for _ in range(3)))
    assert results.count(None) == 2 and {key: 500} in results
    assert await a.window_state(key) == (500, 0)
    assert (await a.store.windows(budget.id))[0]["used"] == 500


async def test_ledger_scripts_bypass_redis_py(pair: tuple[Governance, Governance]) -> None:
    """Reserve, rebuild and settle go through the lean script runner: no redis-py command on the request path."""
    a, _ = pair
    assert a.redis is not None
    await add_budget(a, 10**12)
    await add_quota(a, "REQUESTS", 100)
    commands: list[Any] = []
    real = a.redis.execute_command

    async def spy(*args: Any, **kwargs: Any) -> Any:
        commands.append(args[0])
        return await real(*args, **kwargs)

    a.redis.execute_command = spy  # type: ignore[method-assign]
    ctx = await governed(a, Usage(input_tokens=1))
    assert commands == []
    a.redis.execute_command = real  # type: ignore[method-assign]
    assert await a.window_state(ctx.governance.held[0].item.ref.key) == (1000, 0)


async def test_final_gate_and_reservation_share_one_round_trip(pair: tuple[Governance, Governance]) -> None:
    """The final gate and the reservation go to Redis in one write; a call the gate refuses holds nothing."""
    a, _ = pair
    budget = await add_budget(a, 10**12)
    assert a.redis_runner is not None
    sent: list[int] = []
    real = a.redis_runner.run_many

    async def spy(calls: Any) -> list[Any]:
        sent.append(len(calls))
        return await real(calls)

    a.redis_runner.run_many = spy  # type: ignore[method-assign]
    first = make_ctx(model=rl(tpm=300), input_tokens=100, max_tokens=100)
    assert await attempt(a, first)
    assert sent == [2]
    refused = make_ctx(model=rl(tpm=300), input_tokens=100, max_tokens=100)  # 200 + 200 > 300
    with pytest.raises(TooManyRequests) as info:
        await a.early(refused)
        await a.final(refused)
    assert info.value.code == "tpm_exceeded" and sent == [2, 2, 1]  # 1: its reservation released
    window = first.governance.held[0].item.ref.key
    assert first.governance.held[0].definition.id == budget.id
    used, reserved = await a.window_state(window)  # type: ignore[misc]
    assert (used, reserved) == (0, first.governance.held[0].item.amount)  # only the admitted call's hold
    await a.complete(first, None)
    assert sent == [2, 2, 1, 1]  # post-flight: the rate-limit release at once, the settle in its batch
    assert await a.window_state(window) == (0, 0)
    assert await attempt(a, make_ctx(model=rl(tpm=300), input_tokens=100, max_tokens=100))  # tokens refunded
