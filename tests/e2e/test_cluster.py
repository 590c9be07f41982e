"""Cluster mode end to end: two live gateway processes on one PostgreSQL database and one Redis enforce RPM,
concurrency, TPM (with refunds) and budgets exactly across both."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import (
    NANOS_PER_OUTPUT_TOKEN,
    Tenant,
    admin,
    budget_used,
    chat_body,
    eventually,
    limits,
    make_tenant,
    post_chat,
    seen,
)
from tests.harness import GatewayProcess

pytestmark = pytest.mark.cluster

WORDS = 10
WORST = WORDS * NANOS_PER_OUTPUT_TOKEN


Pair = tuple[GatewayProcess, GatewayProcess]


async def tenant_on(
    pair: Pair, mock: MockServer, *, budget_nanos: int | None = None, **policies: Any
) -> tuple[Tenant, dict[str, Any] | None]:
    """Create a tenant (and a key budget) through A's admin API; B learns the budget through its own admin API."""
    a, b = pair
    tenant = await make_tenant(a, mock.base_url, **policies)
    budget = None
    if budget_nanos is not None:
        budget = (
            await admin(
                a,
                "POST",
                "/admin/budgets",
                json={
                    "name": "shared",
                    "organisation": tenant.org,
                    "key": "app",
                    "period": "DAILY",
                    "amount_nanos": budget_nanos,
                },
            )
        ).json()
        # a no-op change through B's admin API reloads B's definitions now (otherwise within its 1 s poll)
        await admin(b, "PATCH", f"/admin/budgets/{budget['id']}", json={"active": True})
    return tenant, budget


def max_overlap(entries: list[dict[str, Any]], duration_s: float) -> int:
    """Most upstream calls in flight at once, each taken as [arrival, arrival + duration]."""
    edges = sorted(
        [(e["time"], 1) for e in entries] + [(e["time"] + duration_s, -1) for e in entries],
        key=lambda edge: (edge[0], edge[1]),
    )
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


async def test_rpm_is_exact_across_processes(shared_pair: Pair, mock: MockServer) -> None:
    """RPM 10 on a key: of 30 concurrent calls spread over both processes exactly 10 are answered 200."""
    a, b = shared_pair
    tenant, _ = await tenant_on(shared_pair, mock, key_policies=limits(rpm=10))
    body = chat_body(max_tokens=5)
    async with httpx.AsyncClient(timeout=20) as http:
        answers = await asyncio.gather(*(post_chat(http, (a, b)[i % 2], tenant, body) for i in range(30)))
    assert Counter(r.status_code for r in answers) == {200: 10, 429: 20}
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {"rpm_exceeded"}
    assert all(r.headers["retry-after"] for r in answers if r.status_code == 429)
    assert len(seen(mock, tenant)) == 10


async def test_concurrency_never_exceeded_across_processes(shared_pair: Pair, mock: MockServer) -> None:
    """Concurrency 3 over both processes: each wave admits 3, the upstream never sees more than 3 at once."""
    a, b = shared_pair
    tenant, _ = await tenant_on(shared_pair, mock, key_policies=limits(concurrency=3))
    latency_s = 0.6
    body = chat_body(max_tokens=5, latency_ms=int(latency_s * 1000))
    async with httpx.AsyncClient(timeout=20) as http:
        for _wave in range(2):
            answers = await asyncio.gather(*(post_chat(http, (a, b)[i % 2], tenant, body) for i in range(12)))
            assert Counter(r.status_code for r in answers) == {200: 3, 429: 9}
            assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {
                "concurrency_exceeded"
            }
    entries = seen(mock, tenant)
    assert len(entries) == 6
    assert max_overlap(entries, latency_s) == 3


async def test_sequential_calls_find_their_lease_back(shared_pair: Pair, mock: MockServer) -> None:
    """Concurrency 1 and a budget: back-to-back calls are all served — post-flight gives the lease back at once,
    not when the (batched) budget settle runs."""
    a, _ = shared_pair
    tenant, _ = await tenant_on(shared_pair, mock, budget_nanos=10**15, key_policies=limits(concurrency=1))
    async with httpx.AsyncClient(timeout=20) as http:
        statuses = [
            (await post_chat(http, a, tenant, chat_body(max_tokens=5))).status_code for _ in range(20)
        ]
    assert (
        statuses.count(200) >= 19
    )  # the very next call may race the post-flight; a 5 ms hold would fail most


async def test_tpm_refund_across_processes(shared_pair: Pair, mock: MockServer) -> None:
    """TPM 1000: A's in-flight reservation blocks the same call on B; after A refunds unused tokens it fits."""
    a, b = shared_pair
    tenant, _ = await tenant_on(shared_pair, mock, key_policies=limits(tpm=1000))
    fast = chat_body(max_tokens=600, words=5, pad=120)
    slow = chat_body(max_tokens=600, words=5, latency_ms=500, pad=120)
    assert 600 + len(fast) // 4 <= 1000 < 2 * (600 + len(fast) // 4)
    async with httpx.AsyncClient(timeout=20) as http:
        first = asyncio.ensure_future(post_chat(http, a, tenant, slow))
        await eventually(lambda: _arrived(mock, tenant, 1))
        blocked = await post_chat(http, b, tenant, fast)
        assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "tpm_exceeded", blocked.text
        assert blocked.json()["error"]["limit"] == "tokens_per_minute"
        assert (await first).status_code == 200
        # the refund is A's post-flight, after its answer went out: the next call may need a moment to see it
        refunded = await eventually(lambda: _admitted(http, b, tenant, fast))
        assert refunded.status_code == 200, refunded.text
    assert len(seen(mock, tenant)) == 2


async def _arrived(mock: MockServer, tenant: Tenant, count: int) -> bool:
    return len(seen(mock, tenant)) >= count


async def test_budget_never_overspent_across_processes(shared_pair: Pair, mock: MockServer) -> None:
    """100 concurrent calls over both processes on a budget fitting 7: 7 × 200, 93 × 402, spend <= budget."""
    k = 7
    amount = k * WORST + WORST - 1
    a, b = shared_pair
    tenant, budget = await tenant_on(shared_pair, mock, budget_nanos=amount)
    assert budget is not None
    body = chat_body(max_tokens=WORDS, words=WORDS, latency_ms=100)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as http:
        answers = await asyncio.gather(*(post_chat(http, (a, b)[i % 2], tenant, body) for i in range(100)))
    assert Counter(r.status_code for r in answers) == {200: k, 402: 100 - k}
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 402} == {"budget_exceeded"}
    assert len(seen(mock, tenant)) == k
    used = await budget_used(b, budget["id"])  # settle writes PostgreSQL before answering the ledger
    assert used == k * WORST <= amount


async def _admitted(http: httpx.AsyncClient, gw: GatewayProcess, tenant: Tenant, body: bytes) -> Any:
    """The answer when it is a 200, else None (for `eventually`)."""
    answer = await post_chat(http, gw, tenant, body)
    return answer if answer.status_code == 200 else None
