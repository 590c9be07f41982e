"""Budgets and quotas in embedded mode: reserve → settle/release, concurrency, idempotency, events, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from odock import metrics
from odock.errors import GatewayError, PaymentRequired, TooManyRequests
from odock.governance import Governance, Receipt
from odock.governance.pricing import cost_nanos, worst_case_nanos
from odock.governance.store import Budget, Quota
from odock.model import Usage
from tests.governance.conftest import (
    KEY_ID,
    ORG_ID,
    PRICING,
    TEAM_ID,
    USER_ID,
    add_quota,
    make_ctx,
    open_embedded,
)

WORST = worst_case_nanos(PRICING, 100, 100)  # the default make_ctx call: 100 in, max_tokens 100


async def add_budget(
    gov: Governance, amount: int, owner: str = "APIKEY", owner_id: str = KEY_ID, **kw: Any
) -> Budget:
    """Create a monthly budget and make it visible to the hot path."""
    budget = await gov.store.insert_budget(
        Budget(
            id="",
            name=f"{owner}-budget",
            owner_type=owner,
            owner_id=owner_id,  # type: ignore[arg-type]
            period=kw.pop("period", "MONTHLY"),
            amount_nanos=amount,
            **kw,
        )
    )
    await gov.refresh_definitions()
    return budget


async def call(gov: Governance, usage: Usage | None = None, **kwargs: Any) -> Any:
    """Run one governed call to completion; return the ctx or the denial."""
    ctx = make_ctx(**kwargs)
    try:
        await gov.early(ctx)
        await gov.final(ctx)
    except GatewayError as exc:
        await gov.complete(ctx, None)
        return exc
    ctx.usage = usage
    ctx.upstream_started = 0.0
    await gov.complete(ctx, None)
    return ctx


def window_of(ctx_or_receipt: Any) -> str:
    """Return the first window key a call held."""
    receipt = ctx_or_receipt.governance if not isinstance(ctx_or_receipt, Receipt) else ctx_or_receipt
    return str(receipt.held[0].item.ref.key)


async def test_concurrent_reservations_never_overspend(embedded: Governance) -> None:
    """100 concurrent calls on a budget that fits 7 at worst case: at most 7 admitted, spend <= budget."""
    await add_budget(embedded, WORST * 7 + WORST // 2)
    ctxs = [make_ctx() for _ in range(100)]

    async def one(ctx: Any) -> bool:
        try:
            await embedded.early(ctx)
            await embedded.final(ctx)
        except PaymentRequired as exc:
            assert exc.status == 402 and exc.code == "budget_exceeded"
            await embedded.complete(ctx, None)
            return False
        await asyncio.sleep(0)
        ctx.usage = Usage(input_tokens=100, output_tokens=100)  # the worst case, exactly
        await embedded.complete(ctx, None)
        return True

    admitted = sum(await asyncio.gather(*(one(c) for c in ctxs)))
    assert admitted == 7
    state = await embedded.window_state(window_of(next(c for c in ctxs if c.governance.held)))
    assert state is not None and state[0] == 7 * WORST and state[1] == 0
    assert state[0] <= WORST * 7 + WORST // 2


async def test_settle_to_actual_and_release(embedded: Governance) -> None:
    """Settle replaces the reservation by the actual cost; a call without usage releases it."""
    await add_budget(embedded, 10**12)
    ctx = await call(embedded, Usage(input_tokens=10, output_tokens=5))
    key = window_of(ctx)
    assert await embedded.window_state(key) == (10 * 1000 + 5 * 2000, 0)
    await call(embedded, None)
    assert await embedded.window_state(key) == (20_000, 0)


async def test_settle_release_reserve_are_idempotent(embedded: Governance) -> None:
    """Repeated complete() and repeated ledger settle/release change nothing."""
    await add_budget(embedded, 10**12)
    ctx = make_ctx()
    await embedded.early(ctx)
    await embedded.final(ctx)
    await embedded.final(ctx)  # a second final() does not reserve twice
    key = window_of(ctx)
    assert await embedded.window_state(key) == (0, WORST)
    ctx.usage = Usage(input_tokens=1, output_tokens=1)
    await embedded.complete(ctx, None)
    await embedded.complete(ctx, None)
    rid = ctx.governance.reservation_id
    assert await embedded.local_ledger.settle(rid, {key: 999}) is None
    await embedded.local_ledger.release(rid)
    assert await embedded.window_state(key) == (3000, 0)


async def test_every_owner_scope_is_enforced(embedded: Governance) -> None:
    """Org, team, user and key budgets each refuse on their own; the error names the scope."""
    for owner, owner_id, scope in (
        ("ORG", ORG_ID, "organisation"),
        ("TEAM", TEAM_ID, "team"),
        ("USER", USER_ID, "user"),
        ("APIKEY", KEY_ID, "api_key"),
    ):
        budget = await add_budget(embedded, WORST - 1, owner, owner_id)
        result = await call(embedded, with_user=True)
        assert isinstance(result, PaymentRequired) and result.extra["scope"] == scope
        assert result.extra["budget_id"] == budget.id
        await embedded.store.delete("budget", budget.id)
        await embedded.refresh_definitions()
    assert not isinstance(await call(embedded, with_user=True), GatewayError)


async def test_all_matching_windows_must_have_room(embedded: Governance) -> None:
    """A roomy monthly budget does not help when the weekly one is full; nothing is reserved on refusal."""
    monthly = await add_budget(embedded, 10**12)
    await add_budget(embedded, WORST * 2, period="WEEKLY")
    assert not isinstance(await call(embedded, Usage(input_tokens=100, output_tokens=100)), GatewayError)
    assert not isinstance(await call(embedded, Usage(input_tokens=100, output_tokens=100)), GatewayError)
    assert isinstance(await call(embedded), PaymentRequired)
    keys = [k for k in embedded.local_ledger._windows if k.startswith(f"b:{monthly.id}:")]
    assert await embedded.window_state(keys[0]) == (2 * WORST, 0)


async def test_inactive_and_ended_budgets_are_ignored(embedded: Governance) -> None:
    """Inactive budgets and budgets whose end_at has passed are not enforced."""
    from datetime import UTC, datetime

    await add_budget(embedded, 1, active=False)
    await add_budget(embedded, 1, end_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert not isinstance(await call(embedded), GatewayError)


async def test_unpriced_model_reserves_zero_until_exhausted(embedded: Governance) -> None:
    """Without pricing the estimate is 0: calls pass while used < amount."""
    await add_budget(embedded, 5)
    for _ in range(3):
        assert not isinstance(await call(embedded, Usage(input_tokens=1), pricing={}), GatewayError)


async def test_request_and_token_quotas(embedded: Governance) -> None:
    """REQUESTS quota 2 admits 2 (429 quota_exceeded after); TOKENS quota settles to actual tokens."""
    await add_quota(embedded, "REQUESTS", 2)
    assert not isinstance(await call(embedded, Usage(input_tokens=1)), GatewayError)
    assert not isinstance(await call(embedded, Usage(input_tokens=1)), GatewayError)
    denied = await call(embedded)
    assert isinstance(denied, TooManyRequests) and denied.code == "quota_exceeded"
    assert denied.extra["limit"] == "requests" and denied.headers["Retry-After"]


async def test_token_quota_settles_exact(embedded: Governance) -> None:
    """A TOKENS quota reserves input+max_tokens and keeps only the actual total."""
    quota = await add_quota(embedded, "TOKENS", 1000)
    ctx = await call(embedded, Usage(input_tokens=30, cached_input_tokens=20, output_tokens=50))
    assert await embedded.window_state(window_of(ctx)) == (100, 0)
    assert quota.id in window_of(ctx)


async def test_error_quota_blocks_after_limit(embedded: Governance) -> None:
    """An ERRORS quota of 1 counts a failed upstream call, then refuses."""
    await add_quota(embedded, "ERRORS", 1)
    ctx = make_ctx()
    await embedded.early(ctx)
    await embedded.final(ctx)
    ctx.upstream_started, ctx.status, ctx.outcome = 0.0, 502, "failed"
    await embedded.complete(ctx, None)
    assert isinstance(await call(embedded), TooManyRequests)


async def test_threshold_events(embedded: Governance) -> None:
    """Crossing 50 % and 100 % of a budget records one event each, never twice."""
    budget = await add_budget(embedded, 10_000, thresholds=[50, 100])
    for _ in range(3):
        await call(embedded, Usage(input_tokens=3), pricing={"input": 1}, input_tokens=3)  # 3000 nanos each
    await call(embedded, Usage(input_tokens=1), pricing={"input": 1}, input_tokens=1)
    events = await embedded.budget_events(budget_id=budget.id)
    assert sorted(e.threshold for e in events) == [50, 100]
    assert all(e.amount_nanos == 10_000 for e in events)


def exceeded(kind: str) -> float:
    """The gateway_reservation_exceeded_total count of `kind`."""
    return float(metrics.RESERVATION_EXCEEDED.labels(kind)._value.get())


async def test_charges_above_the_reservation_stand_and_are_raised(embedded: Governance) -> None:
    """A budget and a token quota charged above their reservation keep the charge; the budget gets an overspend
    event (the quota only the count), a charge within the reservation raises nothing, negative usage never credits."""
    budget = await add_budget(embedded, 10**12)
    quota = await add_quota(embedded, "TOKENS", 10**9)
    before = exceeded("budget"), exceeded("quota")
    honest = await call(embedded, Usage(input_tokens=100, output_tokens=100))
    assert (exceeded("budget"), exceeded("quota")) == before
    ctx = await call(embedded, Usage(input_tokens=5_000, output_tokens=100), request_id="dishonest")
    assert (exceeded("budget"), exceeded("quota")) == (before[0] + 1, before[1] + 1)
    budget_key, quota_key = (
        h.item.ref.key for h in sorted(ctx.governance.held, key=lambda h: h.item.ref.kind)
    )
    cost = cost_nanos(PRICING, Usage(input_tokens=5_000, output_tokens=100))
    assert cost is not None and cost > WORST
    assert await embedded.window_state(budget_key) == (WORST + cost, 0)
    assert await embedded.window_state(quota_key) == (200 + 5_100, 0)
    [event] = [e for e in await embedded.budget_events(budget_id=budget.id) if e.kind == "overspend"]
    assert (event.request_id, event.reserved_nanos, event.charged_nanos) == ("dishonest", WORST, cost)
    assert event.used_nanos == WORST + cost and quota.id in quota_key
    await call(
        embedded, Usage(input_tokens=-(10**6), output_tokens=-(10**6))
    )  # a caller that skipped the clamp
    assert await embedded.window_state(budget_key) == (WORST + cost, 0)
    assert honest.governance.held


async def test_settled_spend_survives_restart(tmp_path: Path) -> None:
    """Settled charges are written behind to SQLite and reloaded by a new process."""
    gov = await open_embedded(tmp_path)
    await add_budget(gov, 10**12)
    ctx = await call(gov, Usage(input_tokens=10))
    key = window_of(ctx)
    await gov.close()  # flushes
    again = await open_embedded(tmp_path)
    try:
        await call(again, Usage(input_tokens=1))
        assert await again.window_state(key) == (11_000, 0)
    finally:
        await again.close()


async def test_stale_reservation_released_by_reconciliation(tmp_path: Path) -> None:
    """A reservation never completed is released once its TTL passes."""
    from odock.governance.ledger import LocalLedger

    gov = await open_embedded(tmp_path)
    try:
        gov.local_ledger = LocalLedger(gov.store, reservation_ttl_s=0.05)
        await add_budget(gov, 10**12)
        ctx = make_ctx()
        await gov.early(ctx)
        await gov.final(ctx)
        key = window_of(ctx)
        assert await gov.window_state(key) == (0, WORST)
        await asyncio.sleep(0.1)
        assert await gov.reconcile() == 1
        assert await gov.window_state(key) == (0, 0)
        assert await gov.reconcile() == 0
    finally:
        await gov.close()


async def test_owner_time_zone_used_when_budget_has_none(embedded: Governance) -> None:
    """A budget without a time zone uses the organisation's: the window starts at local midnight."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    await add_budget(embedded, 10**12, owner="ORG", owner_id=ORG_ID, period="DAILY")
    ctx = await call(embedded, org_timezone="Asia/Tokyo")
    start = ctx.governance.held[0].item.ref.start
    local = start.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (0, 0) and local.date() == datetime.now(
        ZoneInfo("Asia/Tokyo")
    ).date()


@pytest.mark.parametrize("metric", ["COST", "TOKENS_IN", "TOKENS_OUT", "LATENCY_MS"])
async def test_other_quota_metrics_settle(embedded: Governance, metric: str) -> None:
    """COST, TOKENS_IN, TOKENS_OUT and LATENCY_MS quotas settle to the measured amount."""
    await add_quota(embedded, metric, 10**12)
    ctx = await call(embedded, Usage(input_tokens=7, output_tokens=3))
    used = (await embedded.window_state(window_of(ctx)) or (None, None))[0]
    expected = {"COST": 7 * 1000 + 3 * 2000, "TOKENS_IN": 7, "TOKENS_OUT": 3}.get(metric)
    if expected is None:
        assert used is not None and used >= 0
    else:
        assert used == expected


async def test_failed_flush_keeps_its_charges_exactly_once(tmp_path: Path) -> None:
    """A flush that fails before or after its commit is retried under the same ids: nothing lost, nothing twice."""
    from odock.errors import DependencyUnavailable

    gov = await open_embedded(tmp_path)
    await add_budget(gov, 10**12)
    ctxs = [await call(gov, Usage(input_tokens=i)) for i in range(1, 4)]  # 1+2+3 tokens
    key = window_of(ctxs[0])
    real = gov.store.record_charges
    mode = "before"

    async def failing(charges: Any) -> list[bool]:
        if mode == "before":
            raise DependencyUnavailable("governance store unavailable", "store_unavailable")
        await real(charges)  # committed, then the caller never hears of it
        raise DependencyUnavailable("governance store unavailable", "store_unavailable")

    gov.store.record_charges = failing  # type: ignore[method-assign]
    with pytest.raises(DependencyUnavailable):
        await gov._flush()
    assert (await gov.store.windows(key.split(":")[1]))[0]["used"] == 0
    await call(gov, Usage(input_tokens=4))  # settled while the first batch waits for its retry
    mode = "after"
    with pytest.raises(DependencyUnavailable):
        await gov._flush()
    assert (await gov.store.windows(key.split(":")[1]))[0]["used"] == 10 * 1000
    gov.store.record_charges = real  # type: ignore[method-assign]
    await gov._flush()  # the same ids again: already written, not added twice
    assert not gov.local_ledger._pending and not gov.local_ledger._retry
    await gov.close()
    again = await open_embedded(tmp_path)
    try:
        assert (await again.store.windows(key.split(":")[1]))[0]["used"] == 10 * 1000
        await call(again, Usage(input_tokens=1))
        assert await again.window_state(key) == (11 * 1000, 0)
    finally:
        await again.close()


async def test_flush_writes_a_large_backlog(embedded: Governance) -> None:
    """Hundreds of settled calls over four windows are written as one charge per window and add up exactly."""
    await add_budget(embedded, 10**15)
    await add_budget(embedded, 10**15, owner="ORG", owner_id=ORG_ID)
    await add_quota(embedded, "REQUESTS", 10**6)
    await add_quota(embedded, "TOKENS", 10**9)
    ctxs = await asyncio.gather(
        *(call(embedded, Usage(input_tokens=10, output_tokens=5)) for _ in range(400))
    )
    assert len(embedded.local_ledger._pending) == 4  # summed per window in memory
    await embedded._flush()
    assert embedded.local_ledger._pending == {}
    expected = {"REQUESTS": 400, "TOKENS": 400 * 15}
    for h in ctxs[0].governance.held:
        d = h.definition
        stored = (await embedded.store.windows(d.id))[0]["used"]
        assert stored == (expected[d.metric] if isinstance(d, Quota) else 400 * (10 * 1000 + 5 * 2000))


async def test_window_is_computed_once_per_period(embedded: Governance) -> None:
    """The current window is reused within its period, replaced at the boundary, and never outlives `end_at`."""
    from datetime import UTC, datetime

    jan = datetime(2031, 1, 20, 12, tzinfo=UTC)
    budget = Budget(
        id="b1",
        name="b",
        owner_type="APIKEY",
        owner_id=KEY_ID,
        period="MONTHLY",
        amount_nanos=10,
        end_at=datetime(2031, 2, 10, tzinfo=UTC),
    )
    first = embedded._window(budget, "b", 10, jan, "UTC")
    assert first is not None and (first.start.month, first.end.month) == (1, 2)
    assert embedded._window(budget, "b", 10, jan.replace(day=30), "UTC") is first
    feb = embedded._window(budget, "b", 10, datetime(2031, 2, 2, tzinfo=UTC), "UTC")
    assert feb is not None and feb is not first and feb.start.month == 2
    assert embedded._window(budget, "b", 10, datetime(2031, 2, 11, tzinfo=UTC), "UTC") is None  # ended
    # an edited definition is a new object: its window is computed afresh
    wider = Budget(id="b1", name="b", owner_type="APIKEY", owner_id=KEY_ID, period="DAILY", amount_nanos=10)
    day = embedded._window(wider, "b", 10, jan, "UTC")
    assert day is not None and day.end.day == 21


async def test_decisions_reach_their_counters_by_the_next_flush(tmp_path: Path) -> None:
    """Admitted calls' decisions are tallied on the hot path and added to the Prometheus counters by the background
    loop within a flush interval (and on close): each admitted, reserved and settled call is counted once."""

    def counts() -> tuple[float, ...]:
        value = metrics.REGISTRY.get_sample_value
        return tuple(
            value(name, labels) or 0.0
            for name, labels in (
                ("gateway_ratelimit_decisions_total", {"ratelimit_stage": "early", "decision": "allow"}),
                ("gateway_ratelimit_decisions_total", {"ratelimit_stage": "final", "decision": "allow"}),
                ("gateway_budget_decisions_total", {"decision": "reserved"}),
                ("gateway_budget_decisions_total", {"decision": "settled"}),
                ("gateway_budget_decisions_total", {"decision": "released"}),
            )
        )

    gov = await open_embedded(tmp_path, usage_flush_interval_s=0.05)
    try:
        await add_budget(gov, 10 * WORST)
        before = counts()
        for settled in (True, True, False):
            ctx = make_ctx()
            await gov.early(ctx)
            await gov.final(ctx)
            ctx.usage = Usage(input_tokens=10, output_tokens=10) if settled else None
            await gov.complete(ctx, None)
        expected = [3, 3, 3, 2, 1]
        for _ in range(100):  # the background loop adds them within its interval
            if [a - b for a, b in zip(counts(), before, strict=True)] == expected:
                break
            await asyncio.sleep(0.02)
        assert [a - b for a, b in zip(counts(), before, strict=True)] == expected
        ctx = make_ctx()
        await gov.early(ctx)
    finally:
        await gov.close()
    assert counts()[0] - before[0] == 4  # tallied just before close: added by close
