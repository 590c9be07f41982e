"""Legacy SSE upstreams (the 2024-11-05 HTTP+SSE transport): the official SDK's SSE client through the gateway to
an `MCPServer.sse_app()`; the message endpoint is rewritten to the gateway with its session id wrapped (bound to
the key), and tools/list results on the stream are filtered."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.mcp.servers import McpEnv, demo_server, mcp_gateway, serve


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    async with (
        serve(demo_server("legacy").sse_app()) as url,
        mcp_gateway(tmp_path_factory.mktemp("sse")) as env,
    ):
        await env.add_server("legacy", url + "/sse", transport="SSE", blocked_tools=["secret_tool"])
        yield env


@contextlib.asynccontextmanager
async def legacy_client(env: McpEnv) -> AsyncIterator[Client]:
    async with Client(sse_client(env.route("legacy"), headers=env.headers()), mode="legacy") as mcp:
        yield mcp


async def test_sdk_sse_client_through_the_gateway(env: McpEnv) -> None:
    """The SDK's SSE client initializes, lists (filtered) and calls tools through the gateway."""
    async with legacy_client(env) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert "echo" in names and "secret_tool" not in names
        result = await mcp.call_tool("add", {"a": 20, "b": 22})
        assert "42" in str(result.content[0])


async def test_message_endpoint_is_the_gateways_and_key_bound(env: McpEnv, tmp_path: Path) -> None:
    """The endpoint event names the gateway's route with a signed session token; another key cannot post to it."""
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", env.route("legacy"), headers=env.headers()) as stream,
    ):
        endpoint = ""
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                endpoint = line[5:].strip()
                break
        assert endpoint.startswith("/v1/mcp/legacy/messages/?session_id=odk1.")
        created = await env.gw.service.create_key(
            {"organisation": "acme", "name": "intruder", "type": "ORGANISATION"}
        )
        await env.service.add_mcp_grant(created.key.id, "legacy")
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        stolen = await http.post(env.url + endpoint, json=ping, headers=env.headers(created.secret))
        assert stolen.status_code == 404 and stolen.json()["error"]["data"]["code"] == "mcp_session_not_found"
        with contextlib.suppress(Exception):
            await stream.aclose()
