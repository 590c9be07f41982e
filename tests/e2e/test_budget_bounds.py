"""Budgets hold for honest upstreams however rich the prompt: images, cached and reasoning tokens far above the old
`bytes // 4 + max_tokens` estimate never overspend under concurrency (embedded and cluster); a call without an
output cap gets the gateway's cap on every route; usage above the reservation is recorded, raised as a budget event
and counted; impossible usage (negative, absurd) is clamped and flagged, never credited."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import (
    Tenant,
    admin,
    budget_used,
    eventually,
    make_tenant,
    org_usage_rows,
    seen,
)
from tests.harness import GatewayProcess

# USD per million tokens: nanos per token = rate × 1000
PRICING = {"input": 1.0, "cached_input": 0.5, "output": 4.0}
IMAGE_TOKENS = (
    1000  # the model's documented worst case per image (its `image_tokens`), billed in full by the mock
)
MAX_OUTPUT = 40  # the model's `max_output_tokens`: the gateway's cap when a request names none
CONFIG = {"image_tokens": IMAGE_TOKENS, "max_output_tokens": MAX_OUTPUT}
# an honest bill far above the old estimate: every prompt byte a token, the image at its maximum, cached tokens,
# and 500 reasoning tokens + 300 words asked for (inside the output cap)
RICH_TEXT = (
    "[[mock image_tokens=1000 token_bytes=1 cached=40 reasoning=500 words=300 latency_ms=300]] describe"
)
CONTENT: list[Any] = [
    {"type": "text", "text": RICH_TEXT},
    {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
]


def client(gw: GatewayProcess, tenant: Tenant) -> openai.AsyncOpenAI:
    """An OpenAI SDK client on the gateway with the tenant's key (no retries: a 402 is an answer)."""
    return openai.AsyncOpenAI(api_key=tenant.secret, base_url=gw.base_url + "/v1", max_retries=0, timeout=30)


async def rich_call(sdk: openai.AsyncOpenAI) -> int | dict[str, str]:
    """One rich chat call: its response headers when answered, else the error status."""
    try:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": CONTENT}]
        )  # type: ignore[list-item]
    except openai.APIStatusError as err:
        assert err.status_code == 402 and err.code == "budget_exceeded", err
        return err.status_code
    raw.parse()
    return dict(raw.headers)


async def budget_for(gw: GatewayProcess, tenant: Tenant, amount: int) -> dict[str, Any]:
    """A daily budget of `amount` nanos on the tenant's key."""
    return (
        await admin(
            gw,
            "POST",
            "/admin/budgets",
            json={
                "name": "rich",
                "organisation": tenant.org,
                "key": "app",
                "period": "DAILY",
                "amount_nanos": amount,
            },
        )
    ).json()


async def settled_rows(gw: GatewayProcess, tenant: Tenant, count: int) -> list[dict[str, Any]]:
    """The tenant's usage records, once `count` of them are stored."""

    async def rows() -> list[dict[str, Any]] | None:
        found = await org_usage_rows(gw, tenant.org_id)
        return found if len(found) >= count else None

    result: list[dict[str, Any]] = await eventually(rows)
    return result


async def assert_never_overspent(
    gws: tuple[GatewayProcess, ...], tenant: Tenant, mock: MockServer, budget: dict[str, Any]
) -> None:
    """40 concurrent rich calls spread over `gws`: some answered, the rest 402, and spend <= the budget."""
    sdks = [client(gw, tenant) for gw in gws]
    try:
        answers = await asyncio.gather(*(rich_call(sdks[i % len(sdks)]) for i in range(40)))
    finally:
        for sdk in sdks:
            await sdk.close()
    statuses = Counter(a if isinstance(a, int) else 200 for a in answers)
    assert statuses[200] >= 1 and statuses[402] >= 1 and set(statuses) == {200, 402}, statuses
    rows = [r for r in await settled_rows(gws[0], tenant, 40) if r["status"] == 200]  # refused calls too
    assert len(rows) == statuses[200]
    spent = sum(r["cost_nanos"] for r in rows)
    used = await eventually(lambda: _used_when(gws[-1], budget["id"], spent))
    assert used == spent <= budget["amount_nanos"]
    # each call is billed several times what the old estimate (bytes // 4 + the output cap) reserved for it
    assert spent > 4 * statuses[200] * (len(str(CONTENT)) // 4 * 1000 + MAX_OUTPUT * 4000)
    for row in rows:  # the honest bill: image at its maximum, cached tokens, reasoning inside the cap
        assert row["input_tokens"] + row["cached_input_tokens"] > IMAGE_TOKENS
        assert row["cached_input_tokens"] == 40
        assert (row["output_tokens"], row["reasoning_tokens"]) == (MAX_OUTPUT, MAX_OUTPUT - 1)
    # no cap in the request: the gateway reserved the model's maximum output, said so, and sent it upstream
    assert {a.get("x-odock-reserved-output-tokens") for a in answers if isinstance(a, dict)} == {
        str(MAX_OUTPUT)
    }
    entries = seen(mock, tenant)
    assert len(entries) == statuses[200] and all("max_completion_tokens" in e["keys"] for e in entries)


async def _used_when(gw: GatewayProcess, budget_id: str, expected: int) -> int | None:
    used = await budget_used(gw, budget_id)
    return used if used == expected else None


async def test_rich_prompts_never_overspend_embedded(embedded: GatewayProcess, mock: MockServer) -> None:
    """Embedded: 40 concurrent image + cached + reasoning calls, billed far above the old estimate, spend <= budget."""
    tenant = await make_tenant(embedded, mock.base_url, pricing=PRICING, model_config=CONFIG)
    budget = await budget_for(embedded, tenant, 8_000_000)
    await assert_never_overspent((embedded,), tenant, mock, budget)


@pytest.mark.cluster
async def test_rich_prompts_never_overspend_cluster(
    shared_pair: tuple[GatewayProcess, GatewayProcess], mock: MockServer
) -> None:
    """Cluster: the same 40 calls over two processes (Redis + PostgreSQL ledger), spend <= budget."""
    a, b = shared_pair
    tenant = await make_tenant(a, mock.base_url, pricing=PRICING, model_config=CONFIG)
    budget = await budget_for(a, tenant, 8_000_000)
    await admin(b, "PATCH", f"/admin/budgets/{budget['id']}", json={"active": True})  # B reloads now
    await assert_never_overspent((a, b), tenant, mock, budget)


# --- the output cap on every route ----------------------------------------------------------------------------

CAP = 7
# (provider type, route, body): no output cap in any of them; the mock would answer 500 words uncapped
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "/v1/responses", {"model": "chat", "input": "[[mock words=500]] hi"}),
    (
        "gemini",
        "/v1beta/models/chat:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "[[mock words=500]] hi"}]}]},
    ),
    (
        "anthropic",
        "/v1/llm/chat",
        {"model": "chat", "messages": [{"role": "user", "content": "[[mock words=500]] hi"}]},
    ),
    (
        "gemini",
        "/v1/llm/chat",
        {"model": "chat", "messages": [{"role": "user", "content": "[[mock words=500]] hi"}]},
    ),
    (
        "vllm",
        "/v1/vllm/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "[[mock words=500]] hi"}]},
    ),
    ("vllm", "/v1/vllm/completions", {"model": "chat", "prompt": "[[mock words=500]] hi"}),
]


@pytest.mark.parametrize(
    ("provider_type", "path", "body"), ROUTES, ids=[f"{t}:{p.rsplit('/', 1)[-1]}" for t, p, _ in ROUTES]
)
async def test_uncapped_calls_get_the_reserved_cap(
    embedded: GatewayProcess, mock: MockServer, provider_type: str, path: str, body: dict[str, Any]
) -> None:
    """A budgeted call naming no output cap is sent upstream with the cap it reserved, and says so in a header."""
    tenant = await make_tenant(
        embedded,
        mock.base_url,
        pricing=PRICING,
        model_config={"max_output_tokens": CAP},
        provider_type=provider_type,
    )
    await budget_for(embedded, tenant, 10**12)
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            embedded.base_url + path, json=body, headers={"Authorization": f"Bearer {tenant.secret}"}
        )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-odock-reserved-output-tokens"] == str(CAP)
    [row] = await settled_rows(embedded, tenant, 1)
    assert row["output_tokens"] == CAP  # the upstream stopped at the cap (500 words uncapped)


# --- upstreams that report impossible or dishonest usage ------------------------------------------------------


async def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    """A counter's value from the gateway's /metrics (0 when the series does not exist yet)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(gw.base_url + "/metrics")).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def test_negative_usage_is_clamped_and_never_credits(
    embedded: GatewayProcess, mock: MockServer
) -> None:
    """Negative counts from the upstream (a broken image bill of -16,000 output tokens) cost 0, are flagged and
    counted, never credit."""
    tenant = await make_tenant(embedded, mock.base_url, pricing=PRICING)
    budget = await budget_for(embedded, tenant, 10**12)
    before = await metric(embedded, "gateway_usage_anomalies_total", provider="openai", kind="negative")
    sdk = client(embedded, tenant)
    try:
        await sdk.images.generate(model="chat", prompt="[[mock misreport_output=-16000]] a cat")
        await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    finally:
        await sdk.close()
    rows = sorted(await settled_rows(embedded, tenant, 2), key=lambda r: r["route"])
    chat, images = rows
    assert images["route"] == "openai.images.generations" and images["raw_usage"]["output_tokens"] == -16000
    assert images["output_tokens"] == 0 and images["cost_nanos"] == images["input_tokens"] * 1000 >= 0
    assert images["metadata"]["usage_flags"] == ["negative"] and "usage_flags" not in chat["metadata"]
    spent = images["cost_nanos"] + chat["cost_nanos"]
    assert await eventually(lambda: _used_when(embedded, budget["id"], spent)) == spent
    after = await metric(embedded, "gateway_usage_anomalies_total", provider="openai", kind="negative")
    assert after == before + 1


async def test_absurd_usage_is_clamped_to_the_ceiling(embedded: GatewayProcess, mock: MockServer) -> None:
    """A count above ODOCK_USAGE_MAX_TOKENS (10M) is recorded at the ceiling and flagged."""
    tenant = await make_tenant(embedded, mock.base_url, pricing=PRICING)
    sdk = client(embedded, tenant)
    try:
        await sdk.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "[[mock cached=25000000]] hi"}]
        )
    finally:
        await sdk.close()
    [row] = await settled_rows(embedded, tenant, 1)
    assert row["cached_input_tokens"] == 10_000_000 and row["metadata"]["usage_flags"] == ["above_ceiling"]
    assert row["raw_usage"]["prompt_tokens_details"]["cached_tokens"] == 25_000_000


async def assert_overspend_recorded(
    gw: GatewayProcess, reader: GatewayProcess, tenant: Tenant, budget: dict[str, Any]
) -> None:
    """One call billed far above its reservation: charged in full, an overspend event, the metric counted."""
    before = await metric(gw, "gateway_reservation_exceeded_total", kind="budget")
    sdk = client(gw, tenant)
    try:
        await sdk.chat.completions.create(
            model="chat",
            max_tokens=5,
            messages=[{"role": "user", "content": "[[mock cached=2000000]] hi"}],
            extra_headers={"X-Request-Id": "dishonest-" + tenant.slug},
        )
    finally:
        await sdk.close()
    [row] = await settled_rows(reader, tenant, 1)
    assert row["cached_input_tokens"] == 2_000_000 and row["cost_nanos"] > 2_000_000 * 500
    assert row["metadata"]["usage_flags"] == ["above_reservation"]
    assert await eventually(lambda: _used_when(reader, budget["id"], row["cost_nanos"])) == row["cost_nanos"]

    async def overspends() -> list[dict[str, Any]] | None:
        found = (
            await admin(reader, "GET", "/admin/budget-events", params={"budget_id": budget["id"]})
        ).json()
        return [e for e in found if e["kind"] == "overspend"] or None

    [event] = await eventually(overspends)
    assert event["request_id"] == "dishonest-" + tenant.slug
    assert event["charged_nanos"] == row["cost_nanos"] > event["reserved_nanos"] > 0
    assert event["used_nanos"] == row["cost_nanos"] and event["amount_nanos"] == budget["amount_nanos"]
    assert await metric(gw, "gateway_reservation_exceeded_total", kind="budget") == before + 1


async def test_usage_above_the_reservation_is_recorded_embedded(
    embedded: GatewayProcess, mock: MockServer
) -> None:
    """Embedded: a dishonest upstream's excess is charged, listed as an overspend budget event and counted."""
    tenant = await make_tenant(embedded, mock.base_url, pricing=PRICING)
    budget = await budget_for(embedded, tenant, 10**12)
    await assert_overspend_recorded(embedded, embedded, tenant, budget)


@pytest.mark.cluster
async def test_usage_above_the_reservation_is_recorded_cluster(
    shared_pair: tuple[GatewayProcess, GatewayProcess], mock: MockServer
) -> None:
    """Cluster: the same excess through A is charged in the shared ledger and listed by B."""
    a, b = shared_pair
    tenant = await make_tenant(a, mock.base_url, pricing=PRICING)
    budget = await budget_for(a, tenant, 10**12)
    await admin(b, "PATCH", f"/admin/budgets/{budget['id']}", json={"active": True})
    await assert_overspend_recorded(a, b, tenant, budget)
