"""Cluster failures end to end: a gateway process SIGKILLed mid-call, and Redis unreachable (at start or lost
while serving) — fail closed by default, fail open to in-process limits when configured."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import (
    NANOS_PER_OUTPUT_TOKEN,
    ClusterFactory,
    Tenant,
    admin,
    budget_used,
    chat_body,
    eventually,
    limits,
    make_tenant,
    org_usage_rows,
    post_chat,
    seen,
    unique,
)
from tests.harness import GatewayProcess, free_port

pytestmark = pytest.mark.cluster

WORDS = 10
WORST = WORDS * NANOS_PER_OUTPUT_TOKEN
FAST_RECONCILE = {"ODOCK_RESERVATION_TTL": "1s", "ODOCK_RECONCILE_INTERVAL": "200ms"}


async def test_killed_process_reservation_released_and_acknowledged_usage_kept(
    cluster: ClusterFactory, mock: MockServer
) -> None:
    """A SIGKILLed mid-call: B's reconciliation frees A's reservation; acknowledged usage records are all kept."""
    a, b = cluster(FAST_RECONCILE), cluster(FAST_RECONCILE)
    await asyncio.to_thread(a.start)
    tenant = await make_tenant(a, mock.base_url)
    budget = (
        await admin(
            a,
            "POST",
            "/admin/budgets",
            json={
                "name": "three-calls",
                "organisation": tenant.org,
                "key": "app",
                "period": "DAILY",
                "amount_nanos": 3 * WORST,
            },
        )
    ).json()
    await asyncio.to_thread(b.start)
    fast = chat_body(max_tokens=WORDS, words=WORDS)
    acknowledged = [unique("e2e-ack") for _ in range(2)]
    async with httpx.AsyncClient(timeout=20) as http:
        for rid in acknowledged:
            assert (await post_chat(http, a, tenant, fast, request_id=rid)).status_code == 200
        slow = asyncio.ensure_future(
            post_chat(http, a, tenant, chat_body(max_tokens=WORDS, words=WORDS, latency_ms=3000))
        )
        await eventually(lambda: _seen_at_least(mock, tenant, 3))
        full = await post_chat(http, b, tenant, fast)  # 2 settled + 1 reserved in flight = the whole budget
        assert full.status_code == 402 and full.json()["error"]["code"] == "budget_exceeded"
        await asyncio.sleep(
            0.2
        )  # > ODOCK_USAGE_FLUSH_INTERVAL (50 ms): acknowledged records are written behind
        a.stop(signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            await slow

        async def admitted() -> httpx.Response | None:
            resp = await post_chat(http, b, tenant, fast)
            assert resp.status_code in (200, 402), resp.text
            return resp if resp.status_code == 200 else None

        # only B's reconciliation can free A's reservation (B never held it): after ODOCK_RESERVATION_TTL
        await eventually(admitted, timeout=10, interval=0.2)
    assert await budget_used(b, budget["id"]) == 3 * WORST  # the killed call was charged nothing
    rows = {r["request_id"]: r for r in await org_usage_rows(b, tenant.org_id)}
    for rid in acknowledged:
        assert rid in rows and rows[rid]["status"] == 200 and rows[rid]["cost_nanos"] == WORST
    restarted = cluster(FAST_RECONCILE)
    await asyncio.to_thread(restarted.start)
    async with httpx.AsyncClient(timeout=20) as http:
        again = await post_chat(http, restarted, tenant, fast)
    assert again.status_code == 402 and again.json()["error"]["code"] == "budget_exceeded"
    assert len(seen(mock, tenant)) == 4


async def _seen_at_least(mock: MockServer, tenant: Tenant, count: int) -> bool:
    return len(seen(mock, tenant)) >= count


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    return free_port()


def sdk(gw: GatewayProcess, tenant: Tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=tenant.secret, max_retries=0, timeout=10)


ASK: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": WORDS}


async def test_redis_unreachable_at_start(cluster: ClusterFactory, mock: MockServer) -> None:
    """Redis down at start: governed calls fail closed (503); ODOCK_REDIS_FAIL_OPEN=true enforces local limits."""
    # the gateway still starts (liveness 200, readiness 503); calls with no limit and no budget never need Redis
    dead = f"redis://127.0.0.1:{_closed_port()}/0"
    closed = cluster(redis_url=dead)
    opened = cluster({"ODOCK_REDIS_FAIL_OPEN": "true"}, redis_url=dead)
    await asyncio.to_thread(closed.start)
    await asyncio.to_thread(opened.start)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(closed.base_url + "/v1/healthz")).status_code == 503
    governed = await make_tenant(closed, mock.base_url, key_policies=limits(rpm=2))
    free = await make_tenant(closed, mock.base_url)
    async with sdk(closed, governed) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(**ASK)
        assert info.value.status_code == 503 and info.value.code == "rate_limit_unavailable"
    assert seen(mock, governed) == []
    async with sdk(closed, free) as client:
        await client.chat.completions.create(**ASK)  # no limit, no budget: Redis is not consulted
    # fail open: the same RPM 2 is enforced by in-process counters
    async with sdk(opened, governed) as client:
        for _ in range(2):
            await client.chat.completions.create(**ASK)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(**ASK)
        assert limited.value.code == "rpm_exceeded"
    assert len(seen(mock, governed)) == 2
    # fail open: budgets fall back to in-process windows (still never overspent)
    await admin(
        opened,
        "POST",
        "/admin/budgets",
        json={
            "name": "one-call",
            "organisation": free.org,
            "key": "app",
            "period": "DAILY",
            "amount_nanos": WORST,
        },
    )
    async with sdk(opened, free) as client:
        await client.chat.completions.create(**ASK)
        with pytest.raises(openai.APIStatusError) as broke:
            await client.chat.completions.create(**ASK)
        assert broke.value.status_code == 402 and broke.value.code == "budget_exceeded"


@pytest.fixture()
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes], list[str]]]:
    """A throwaway redis-server on a free loopback port (no persistence); always stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        yield f"redis://127.0.0.1:{port}/0", proc, command
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"redis-server did not listen on {port}")


async def test_redis_lost_while_serving(
    cluster: ClusterFactory, mock: MockServer, own_redis: tuple[str, subprocess.Popen[bytes], list[str]]
) -> None:
    """Redis lost after start: governed calls get 503 rate_limit_unavailable, and pass again once it is back."""
    url, redis_proc, command = own_redis
    gw = cluster(redis_url=url)
    await asyncio.to_thread(gw.start)
    tenant = await make_tenant(gw, mock.base_url, key_policies=limits(rpm=50))
    async with sdk(gw, tenant) as client:
        await client.chat.completions.create(**ASK)
        redis_proc.kill()
        redis_proc.wait(5)
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(**ASK)
        assert info.value.status_code == 503 and info.value.code == "rate_limit_unavailable"
        assert len(seen(mock, tenant)) == 1
        revived = await asyncio.to_thread(
            subprocess.Popen, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_listening(int(url.rsplit(":", 1)[1].split("/")[0]))

            async def served() -> bool:
                try:
                    await client.chat.completions.create(**ASK)
                except openai.InternalServerError:
                    return False
                return True

            await eventually(served, timeout=5, interval=0.1)
        finally:
            revived.kill()
            revived.wait(5)
    assert len(seen(mock, tenant)) == 2
