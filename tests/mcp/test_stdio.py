"""Stdio MCP servers through the gateway: the official SDK client (auto and legacy) against an `MCPServer` run
by the gateway's supervised pool; many calls with the process and file-descriptor counts flat; a process killed
mid-call is an error and is replaced; idle processes are reaped; shutdown ends every process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from odock.mcp.stdio import StdioPools
from tests.mcp.servers import McpEnv, mcp_gateway

SCRIPT = str(Path(__file__).with_name("stdio_server.py"))
CALLS = 200  # kept modest for the suite's time; the counts are checked flat across them


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    os.environ["ODOCK_TEST_STDIO_NAME"] = "from-env"
    async with mcp_gateway(tmp_path_factory.mktemp("stdio")) as env:
        env.gw.gateway.mcp.stdio = StdioPools(reap_interval_s=0.1)
        stdio = {"transport": "STDIO", "endpoint_url": None, "stdio_command": sys.executable}
        await env.add_server(
            "tools",
            "",
            **stdio,
            stdio_args=[SCRIPT],
            stdio_env={"DEMO_NAME": "${ODOCK_TEST_STDIO_NAME}"},
            blocked_tools=["secret_tool"],
            config={"max_processes": 2},
        )
        await env.add_server("reaped", "", **stdio, stdio_args=[SCRIPT], config={"idle_ttl_s": 0.2})
        await env.add_server("broken", "", **stdio, stdio_args=["-c", "import sys; sys.exit(3)"])
        yield env


@contextlib.asynccontextmanager
async def client(env: McpEnv, slug: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=env.headers(), timeout=httpx2.Timeout(20.0)) as http,
        Client(streamable_http_client(env.route(slug), http_client=http), mode=mode) as mcp,
    ):
        yield mcp


def _pool_pids(env: McpEnv, server_id: str) -> list[int]:
    pools = env.gw.gateway.mcp.stdio
    assert pools is not None
    return [p.proc.pid for p in pools.pools[server_id][1].processes]


async def _server_id(env: McpEnv, slug: str) -> str:
    return (await env.service.get_mcp_server(slug, "acme")).id


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_through_the_stdio_pool(env: McpEnv, mode: str) -> None:
    """The SDK lists (filtered) and calls tools of a stdio server; `${VAR}` in its environment was resolved."""
    async with client(env, "tools", mode) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert "echo" in names and "secret_tool" not in names
        assert "hello" in str((await mcp.call_tool("echo", {"text": "hello"})).content[0])
        who = str((await mcp.call_tool("whoami", {})).content[0])
        assert "from-env:" in who


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_many_calls_keep_processes_and_fds_flat(env: McpEnv) -> None:
    """200 concurrent-ish calls: never more processes than the bound, and the fd count does not grow."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}},
    }
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=8)) as http:

        async def one(i: int) -> None:
            resp = await http.post(env.route("tools"), json={**body, "id": i}, headers=env.headers())
            assert resp.status_code == 200 and resp.json()["id"] == i

        await asyncio.gather(*(one(i) for i in range(20)))  # warm: pool and connections exist
        server_id = await _server_id(env, "tools")
        before_fds, before_pids = _fds(), set(_pool_pids(env, server_id))
        for start in range(0, CALLS, 8):
            await asyncio.gather(*(one(i) for i in range(start, start + 8)))
        after_fds, after_pids = _fds(), set(_pool_pids(env, server_id))
    assert len(after_pids) <= 2 and after_pids == before_pids
    assert after_fds <= before_fds + 2, (before_fds, after_fds)


async def test_a_killed_process_is_an_error_then_replaced(env: McpEnv) -> None:
    """SIGKILL mid-call: the client gets 502 mcp_stdio_error at once (no hang); the next call gets a new process."""
    server_id = await _server_id(env, "tools")
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "sleepy", "arguments": {"seconds": 30}},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        pending = asyncio.create_task(http.post(env.route("tools"), json=call, headers=env.headers()))
        for _ in range(200):
            await asyncio.sleep(0.02)
            busy = [p for p in env.gw.gateway.mcp.stdio.pools[server_id][1].processes if p.busy]  # type: ignore[union-attr]
            if busy:
                break
        os.kill(busy[0].proc.pid, signal.SIGKILL)
        resp = await asyncio.wait_for(pending, 5)
        assert resp.status_code == 502
        assert resp.json()["error"]["data"]["code"] == "mcp_stdio_error"
        echo = {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "y"}},
        }
        again = await http.post(env.route("tools"), json=echo, headers=env.headers())
        assert again.status_code == 200 and "result" in again.json()


async def test_idle_processes_are_reaped(env: McpEnv) -> None:
    """A process idle past `idle_ttl_s` is ended (whole group), without a call to trigger it."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "z"}},
    }
    async with httpx.AsyncClient(timeout=20) as http:
        assert (await http.post(env.route("reaped"), json=body, headers=env.headers())).status_code == 200
    server_id = await _server_id(env, "reaped")
    pids = _pool_pids(env, server_id)
    assert len(pids) == 1
    for _ in range(200):  # up to 10 s on a loaded machine; the reaper runs every 0.1 s
        await asyncio.sleep(0.05)
        if not _pool_pids(env, server_id):
            break
    assert _pool_pids(env, server_id) == []
    # out of the pool first, then ended and reaped: give the group's end a moment on a loaded machine
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pids[0], 0)
            await asyncio.sleep(0.05)


async def test_a_server_that_cannot_start_is_an_error(env: McpEnv) -> None:
    """A command that exits at once: 502 mcp_stdio_error, and the stderr is not in the answer."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(env.route("broken"), json=body, headers=env.headers())
    assert resp.status_code == 502
    assert resp.json()["error"]["data"]["code"] == "mcp_stdio_error"


async def test_shutdown_ends_every_process_group(tmp_path: Path) -> None:
    """Closing the pools (the gateway's shutdown) ends every process: none is left running."""
    async with mcp_gateway(tmp_path) as env:
        await env.add_server(
            "short",
            "",
            transport="STDIO",
            endpoint_url=None,
            stdio_command=sys.executable,
            stdio_args=[SCRIPT],
        )
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        async with httpx.AsyncClient(timeout=20) as http:
            assert (await http.post(env.route("short"), json=body, headers=env.headers())).status_code == 200
        pids = _pool_pids(env, await _server_id(env, "short"))
        assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
