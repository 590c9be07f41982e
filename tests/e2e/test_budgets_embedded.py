"""Budgets through a live embedded gateway: concurrent admission never overspends, threshold events are recorded,
and `odock usage` agrees with the usage records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from typing import Any

import httpx

from odock.mock.testing import MockServer
from tests.e2e.conftest import (
    NANOS_PER_OUTPUT_TOKEN,
    admin,
    budget_used,
    chat_body,
    eventually,
    make_tenant,
    org_usage_rows,
    post_chat,
    seen,
    unique,
)
from tests.harness import GatewayProcess

WORDS = 10
WORST = WORDS * NANOS_PER_OUTPUT_TOKEN  # max_tokens = words = 10, input priced 0: worst case == actual cost


async def test_concurrent_calls_never_overspend(embedded: GatewayProcess, mock: MockServer) -> None:
    """100 concurrent calls on a budget fitting 7 at worst case: 7 answered 200, 93 answered 402, used <= budget."""
    tenant = await make_tenant(embedded, mock.base_url)
    k = 7
    amount = k * WORST + WORST - 1
    budget = (
        await admin(
            embedded,
            "POST",
            "/admin/budgets",
            json={
                "name": "burst",
                "organisation": tenant.org,
                "key": "app",
                "period": "DAILY",
                "amount_nanos": amount,
            },
        )
    ).json()
    body = chat_body(max_tokens=WORDS, words=WORDS, latency_ms=200)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as http:
        answers = await asyncio.gather(*(post_chat(http, embedded, tenant, body) for _ in range(100)))
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: k, 402: 100 - k}, statuses
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 402} == {"budget_exceeded"}
    assert len(seen(mock, tenant)) == k  # refused calls never reached the upstream
    used = await eventually(lambda: _settled(embedded, budget["id"], k * WORST))
    assert used <= amount


async def _settled(gw: GatewayProcess, budget_id: str, expected: int) -> int | None:
    used = await budget_used(gw, budget_id)
    assert used <= expected, f"settled {used} > {expected}"
    return used if used == expected else None


async def test_threshold_events_and_usage_cli(embedded: GatewayProcess, mock: MockServer) -> None:
    """Spend crossing 50/80/90/100 % records one budget event each; `odock usage` sums equal the usage records."""
    tenant = await make_tenant(embedded, mock.base_url)
    budget = (
        await admin(
            embedded,
            "POST",
            "/admin/budgets",
            json={
                "name": "ten-calls",
                "organisation": tenant.org,
                "key": "app",
                "period": "MONTHLY",
                "amount_nanos": 10 * WORST,
            },
        )
    ).json()
    assert budget["thresholds"] == [50, 80, 90, 100]
    body = chat_body(max_tokens=WORDS, words=WORDS)
    ids = [unique("e2e-req") for _ in range(11)]
    async with httpx.AsyncClient(timeout=10) as http:
        statuses = [
            (await post_chat(http, embedded, tenant, body, request_id=rid)).status_code for rid in ids
        ]
    assert statuses == [200] * 10 + [402]

    async def events() -> list[dict[str, Any]] | None:
        found = (
            await admin(embedded, "GET", "/admin/budget-events", params={"budget_id": budget["id"]})
        ).json()
        return found if len(found) >= 4 else None

    crossed = sorted(await eventually(events), key=lambda e: e["threshold"])
    assert [(e["threshold"], e["used_nanos"], e["amount_nanos"]) for e in crossed] == [
        (50, 5 * WORST, 10 * WORST),
        (80, 8 * WORST, 10 * WORST),
        (90, 9 * WORST, 10 * WORST),
        (100, 10 * WORST, 10 * WORST),
    ]
    assert len({e["window_key"] for e in crossed}) == 1

    async def records() -> list[dict[str, Any]] | None:
        rows = await org_usage_rows(embedded, tenant.org_id)
        return rows if len(rows) == 11 else None

    rows = await eventually(records)
    assert {r["request_id"] for r in rows} == set(ids)
    assert sum(r["cost_nanos"] or 0 for r in rows) == 10 * WORST
    expected = {
        "requests": 11,
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
        "cost_nanos": 10 * WORST,
    }
    assert expected["output_tokens"] == 10 * WORDS and expected["input_tokens"] > 0
    days = {r["created_at"].strftime("%Y-%m-%d") for r in rows}
    groups = (("key", tenant.key_id), ("model", "chat"), ("day", None))
    outputs = await _cli(
        embedded, *(["usage", "--group-by", g, "--org", tenant.org, "--json"] for g, _ in groups)
    )
    for (group_by, group), out in zip(groups, outputs, strict=True):
        if group_by == "day" and len(days) > 1:  # the calls straddled midnight UTC: compare the totals
            assert sum(r["requests"] for r in out) == 11
            continue
        assert len(out) == 1, out
        row = out[0]
        assert row["group"] == (group if group is not None else days.pop())
        assert {k: row[k] for k in expected} == expected, (group_by, row)


# one interpreter runs the `odock` command line several times (its imports take ~2 s per process on this machine)
_RUNNER = """
import json, sys
from odock.cli import main
for argv in json.loads(sys.argv[1]):
    print("\\x1e", flush=True)
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            raise
"""


async def _cli(gw: GatewayProcess, *commands: list[str]) -> list[Any]:
    """Run `odock ARGS` for each command on the gateway's database; return each one's parsed JSON output."""
    env = {**os.environ, "ODOCK_DATABASE_URL": gw.database_url, "ODOCK_SECRET_KEY": gw.secret_key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUNNER,
        json.dumps(commands),
        env=env,
        cwd=str(gw.workdir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    return [json.loads(part) for part in out.decode().split("\x1e")[1:]]
