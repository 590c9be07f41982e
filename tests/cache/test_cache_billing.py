"""A cache hit billed honestly, embedded (SQLite) and cluster (PostgreSQL + Redis): its `hit_cost` is charged once
to every budget that covers the call, a budget that cannot cover it refuses it (402 budget_exceeded), and it counts
as one request in REQUESTS quotas and request rate limits (the model's too) but as no tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from odock import metrics
from odock.admin.governance import GovernanceAdmin
from odock.governance import Governance
from odock.governance.periods import window_at
from odock.governance.store import GovernanceStore
from odock.state.crypto import generate_key_text
from tests.cache.test_cache_replay import MESSAGES, openai_client, upstream_calls
from tests.harness import wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway


@pytest.fixture(params=["embedded", "cluster"])
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The gateway's settings for each mode (cluster: a fresh PostgreSQL database and the shared Redis)."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": request.getfixturevalue("redis_url"),
        "secret_key": generate_key_text(),
    }


@asynccontextmanager
async def cached_gateway(
    tmp_path: Path, mode: dict[str, Any], policies: dict[str, Any]
) -> AsyncIterator[Any]:
    async with in_process_gateway(tmp_path, **mode) as gw:
        await gw.service.update_organisation("acme", {"policies": policies})
        await gw.gateway.catalogue.invalidate()
        admin = GovernanceAdmin(GovernanceStore(gw.service.store), catalogue=gw.service)
        yield gw, admin


async def ask(gw: InProcessGateway) -> tuple[str, str]:
    """One chat call: its cache verdict and request id."""
    reply = await openai_client(gw).chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES
    )
    return reply.headers["x-odock-cache"], reply.headers["x-request-id"]


def governance(gw: InProcessGateway) -> Governance:
    gov = gw.gateway.governance
    assert gov is not None
    return gov


async def used(gw: InProcessGateway, definition: Any, *, expect: int | None = None) -> int:
    """A DAILY window's settled amount as the enforcing backend sees it (polled until `expect`: the post-flight
    settles after the answer left)."""
    start, _ = window_at("DAILY", datetime.now(UTC), "UTC", None, None)  # type: ignore[misc]
    prefix = "b" if hasattr(definition, "amount_nanos") else "q"
    key = f"{prefix}:{definition.id}:{int(start.timestamp())}"
    deadline = time.monotonic() + 5
    while True:
        state = await governance(gw).window_state(key) or (0, 0)
        if expect is None or state == (expect, 0) or time.monotonic() > deadline:
            assert state[1] == 0, f"{key} still holds a reservation: {state}"
            return state[0]
        await asyncio.sleep(0.05)


async def test_a_hit_is_charged_to_every_budget_once_and_refused_when_it_cannot_be_covered(
    tmp_path: Path, mode: dict[str, Any]
) -> None:
    policies = {"cache": {"mode": "exact", "hit_cost": 0.5}}
    async with cached_gateway(tmp_path, mode, policies) as (gw, admin):
        org_budget = await admin.create_budget(
            {"name": "org", "organisation": "acme", "period": "DAILY", "amount_nanos": 10**12}
        )
        key_budget = await admin.create_budget(
            {"name": "key", "organisation": "acme", "key": "main", "period": "DAILY", "amount_nanos": 10**12}
        )
        await governance(gw).refresh_definitions()
        verdict, miss_id = await ask(gw)
        assert verdict == "MISS"
        original = (await wait_usage(gw.service, miss_id))["cost_nanos"]
        half = round(original * 0.5)
        assert original > 0 and half > 0
        assert await used(gw, key_budget, expect=original) == original

        verdict, hit_id = await ask(gw)
        assert verdict == "HIT"
        assert (await wait_usage(gw.service, hit_id))["cost_nanos"] == half
        for budget in (org_budget, key_budget):  # each covering budget, exactly once
            assert await used(gw, budget, expect=original + half) == original + half

        # the key's budget has room for less than one more hit: refused like any call, nothing charged
        await admin.update_budget(key_budget.id, {"amount_nanos": original + 2 * half - 1})
        await governance(gw).refresh_definitions()
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(gw)
        assert refused.value.status_code == 402
        assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
        assert await used(gw, org_budget) == original + half
        await admin.update_budget(key_budget.id, {"amount_nanos": original + 2 * half})
        await governance(gw).refresh_definitions()
        assert (await ask(gw))[0] == "HIT"
        assert await used(gw, key_budget, expect=original + 2 * half) == original + 2 * half
        assert upstream_calls(gw.mock) == 1


async def test_a_hit_is_one_request_and_no_tokens(tmp_path: Path, mode: dict[str, Any]) -> None:
    """REQUESTS quotas and the model's requests-per-minute count a hit; token quotas do not (reserved at 0, which
    must settle too: Redis refused the "-0" a Lua script sent for it, and the reservation stayed held)."""
    settle_errors = metrics.child(metrics.GOVERNANCE_ERRORS, "settle")
    errors_before = settle_errors._value.get()
    async with cached_gateway(tmp_path, mode, {"cache": {"mode": "exact"}}) as (gw, admin):
        requests = await admin.create_quota(
            {
                "name": "r",
                "organisation": "acme",
                "key": "main",
                "period": "DAILY",
                "metric": "REQUESTS",
                "limit": 3,
            }
        )
        tokens = await admin.create_quota(
            {
                "name": "t",
                "organisation": "acme",
                "key": "main",
                "period": "DAILY",
                "metric": "TOKENS",
                "limit": 10**9,
            }
        )
        await governance(gw).refresh_definitions()
        verdict, miss_id = await ask(gw)
        assert verdict == "MISS"
        record = await wait_usage(gw.service, miss_id)
        spent = record["input_tokens"] + record["output_tokens"]
        assert spent > 0 and await used(gw, tokens, expect=spent) == spent
        assert [(await ask(gw))[0] for _ in range(2)] == ["HIT", "HIT"]
        assert await used(gw, requests, expect=3) == 3
        assert await used(gw, tokens) == spent  # the hits used no tokens
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(gw)
        assert refused.value.body["code"] == "quota_exceeded"  # type: ignore[index]
        assert upstream_calls(gw.mock) == 1

        # the model's own request rate counts hits as well (the early gate counts the organisation, team, key)
        await gw.service.update_model(
            "gpt-test", {"policies": {"ratelimit": {"requests": {"per_minute": 2}}}}, "acme"
        )
        await admin.update_quota(requests.id, {"limit": 100})
        await gw.gateway.catalogue.invalidate()
        await governance(gw).refresh_definitions()
        assert [(await ask(gw))[0] for _ in range(2)] == ["HIT", "HIT"]
        with pytest.raises(openai.RateLimitError) as limited:
            await ask(gw)
        assert limited.value.body["code"] == "rpm_exceeded"  # type: ignore[index]
    assert settle_errors._value.get() == errors_before
