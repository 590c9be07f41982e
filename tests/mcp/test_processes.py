"""Process behaviour of the MCP gateway: an upstream killed with SIGKILL mid-call is an error to the SDK client
(never a hang), and a session opened through one gateway process continues through another (cluster mode:
PostgreSQL + Redis), with the SDK's requests spread over both processes."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx2
import pytest
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from odock.mcp.service import McpCatalogueService
from tests import harness
from tests.conftest import REDIS_HOST, REDIS_PORT, require_service
from tests.harness import GatewayProcess, free_port
from tests.mcp.servers import demo_server, mcp_gateway, serve

SCRIPT = str(Path(__file__).with_name("http_server.py"))
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = 4 + 2 * (
    _WORKER % 6
)  # the e2e pair of this worker (tests/e2e/conftest.py), flushed around the test


def start_upstream(mode: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, str(port), mode], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=0.5)
        except urllib.error.HTTPError:
            return proc, url  # it answers (405/406 to a bare GET): up
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("upstream did not start")


@pytest.mark.parametrize("mode", ["json", "sse"])
async def test_upstream_killed_mid_call_is_an_error(tmp_path: Path, mode: str) -> None:
    """SIGKILL the upstream while a tools/call waits on it: the SDK raises within seconds, no hang."""
    proc, url = start_upstream(mode)
    try:
        async with mcp_gateway(tmp_path) as env:
            await env.add_server("killable", url)
            async with (
                httpx2.AsyncClient(headers=env.headers(), timeout=httpx2.Timeout(30.0)) as http,
                Client(streamable_http_client(env.route("killable"), http_client=http), mode="auto") as mcp,
            ):
                assert "ok" in str((await mcp.call_tool("echo", {"text": "ok"})).content[0])
                call = asyncio.create_task(mcp.call_tool("sleepy", {"seconds": 60}))
                await asyncio.sleep(0.5)
                os.kill(proc.pid, signal.SIGKILL)
                started = time.monotonic()
                with pytest.raises(MCPError) as failed:
                    await asyncio.wait_for(call, 10)
                assert time.monotonic() - started < 5
                assert "MCP server" in str(failed.value) or "upstream" in str(failed.value).lower()
    finally:
        proc.kill()
        proc.wait()


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next gateway process in turn (a load balancer without stickiness)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.turn = 0
        self.inner = httpx2.AsyncHTTPTransport()
        self.seen: set[int] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        self.seen.add(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_session_continues_on_another_process(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateway processes on one PostgreSQL + Redis: the SDK (legacy mode: initialize, Mcp-Session-Id) has
    every request sent to the next process in turn, and its session works throughout."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    # two processes start at once; on a loaded 2-core machine one start alone can take 15 s
    monkeypatch.setattr(harness, "START_TIMEOUT_S", 90.0)
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    flush = aioredis.from_url(redis_url)
    await flush.flushdb()
    secret_key = base64.b64encode(os.urandom(32)).decode()
    gateways = [
        GatewayProcess(tmp_path / name, database_url=postgres_url, redis_url=redis_url, secret_key=secret_key)
        for name in ("a", "b")
    ]
    for gw in gateways:
        gw.workdir.mkdir()
    upstream = demo_server("cluster")
    async with serve(upstream.streamable_http_app()) as url:
        service = await gateways[0].open_service()
        try:
            await service.create_organisation({"name": "acme"})
            created = await service.create_key({"organisation": "acme", "name": "k", "type": "ORGANISATION"})
            mcp_service = McpCatalogueService(service.store)
            await mcp_service.create_mcp_server(
                {"organisation": "acme", "name": "shared", "endpoint_url": url + "/mcp"}
            )
            await mcp_service.add_mcp_grant(created.key.id, "shared")
        finally:
            await service.store.close()
        try:
            await asyncio.gather(*(asyncio.to_thread(gw.start) for gw in gateways))
            balancer = RoundRobin([gw.port for gw in gateways])
            headers = {"Authorization": f"Bearer {created.secret}"}
            async with (
                httpx2.AsyncClient(transport=balancer, headers=headers, timeout=httpx2.Timeout(15.0)) as http,
                Client(
                    streamable_http_client(f"{gateways[0].base_url}/v1/mcp/shared", http_client=http),
                    mode="legacy",
                ) as mcp,
            ):
                for i in range(4):
                    result = await mcp.call_tool("add", {"a": i, "b": 1})
                    assert str(i + 1) in str(result.content[0])
                assert {t.name for t in (await mcp.list_tools()).tools} >= {"echo", "add"}
            assert balancer.seen == {gw.port for gw in gateways}
        finally:
            for gw in gateways:
                gw.stop()
            await flush.flushdb()
            await flush.aclose()
