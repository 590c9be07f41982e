"""Stdio MCP servers through the gateway: the official SDK client (auto and legacy) against an `MCPServer` run
by the gateway's supervised pool; 1,000 calls through a gateway process with its process and file-descriptor
counts flat; a process killed
mid-call is an error and is replaced; idle processes are reaped, old ones retired; an init timeout, start back-off
and breaker; stderr in a bounded ring; shutdown ends every process group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from odock.mcp.stdio import STDERR_RING_BYTES, StdioPools
from tests.harness import GatewayProcess
from tests.mcp.servers import LEAN, McpEnv, client, mcp_gateway, seed_lean_stdio

SCRIPT = str(Path(__file__).with_name("stdio_server.py"))
CALLS = 1000
CONCURRENCY = 16


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
        await env.add_server("flaky", "", **stdio, stdio_args=["-c", "import sys; sys.exit(4)"])
        await env.add_server(
            "mute", "", **stdio, stdio_args=[LEAN, "--mute-init"], config={"init_timeout_ms": 300}
        )
        await env.add_server("aging", "", **stdio, stdio_args=[LEAN], config={"max_lifetime_s": 0.3})
        await env.add_server("chatty", "", **stdio, stdio_args=[LEAN, "--stderr", "100000"])
        yield env


def _pool_pids(env: McpEnv, server_id: str) -> list[int]:
    pools = env.gw.gateway.mcp.stdio
    assert pools is not None
    return [p.proc.pid for p in pools.pools[server_id][1].processes]


async def _server_id(env: McpEnv, slug: str) -> str:
    return (await env.service.get_mcp_server(slug, "acme")).id


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_through_the_stdio_pool(env: McpEnv, mode: str) -> None:
    """The SDK lists (filtered) and calls tools of a stdio server; `${VAR}` in its environment was resolved."""
    async with client(env, "tools", mode, timeout=20.0) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert "echo" in names and "secret_tool" not in names
        assert "hello" in str((await mcp.call_tool("echo", {"text": "hello"})).content[0])
        who = str((await mcp.call_tool("whoami", {})).content[0])
        assert "from-env:" in who


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren, …; zombies too: an ended child never waited for is a
    leak as well), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def stdio_processes(pid: int) -> set[int]:
    """The lean stdio servers below `pid` (the gateway's usage writer is a child too, and may be started again
    while the gateway is saturated: it is not one of them)."""
    return {p for p in descendants(pid) if LEAN.encode() in _cmdline(p) or _zombie(p)}


def _zombie(pid: int) -> bool:
    """An ended child never waited for (a leak as well; its command line is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] == "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_1000_calls_keep_the_gateways_processes_and_fds_flat(tmp_path: Path) -> None:
    """1,000 tools/call (16 at a time) through a gateway process to a stdio server bounded to 2 processes: the
    gateway's child processes are the same 2 before and after (none added, none left behind, no zombie), and the
    descriptors of the gateway and of its children do not grow."""
    proc = GatewayProcess(tmp_path)
    service = await proc.open_service()
    try:
        secret = await seed_lean_stdio(service, {"max_processes": 2})
        proc.start()
        assert proc.proc is not None
        pid = proc.proc.pid
        assert stdio_processes(pid) == set()  # no stdio process before the first call
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            base_url=proc.base_url, headers=headers, timeout=30, limits=limits
        ) as http:

            async def one(i: int) -> None:
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": f"call {i}"}},
                }
                resp = await http.post("/v1/mcp/lean", json=body)
                assert resp.status_code == 200, resp.text
                answer = resp.json()
                assert answer["id"] == i and answer["result"]["content"][0]["text"] == f"call {i}"

            async def wave(start: int, count: int) -> None:
                queue = iter(range(start, start + count))

                async def worker() -> None:
                    for i in queue:
                        await one(i)

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

            await wave(0, 4 * CONCURRENCY)  # warm: the pool is full and every client connection is open
            children = stdio_processes(pid)
            before = (fd_count(pid), {child: fd_count(child) for child in children})
            await wave(10_000, CALLS)
            after_children = stdio_processes(pid)
            after = (fd_count(pid), {child: fd_count(child) for child in after_children})
        assert len(children) == 2 and after_children == children, (children, after_children)
        assert after[1] == before[1]  # each stdio process: the same descriptors
        assert after[0] <= before[0] + 2, (before[0], after[0])  # the gateway: flat
    finally:
        proc.stop()
        await service.store.close()


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


def _echo(rid: int = 1) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "t"}},
    }


async def test_a_server_that_never_initializes_times_out(env: McpEnv) -> None:
    """A process that does not answer `initialize` within `init_timeout_ms` is a 502 mcp_stdio_error in about
    that time (no hang), and it is ended, not kept in the pool."""
    async with httpx.AsyncClient(timeout=20) as http:
        started = asyncio.get_running_loop().time()
        resp = await http.post(env.route("mute"), json=_echo(), headers=env.headers())
        elapsed = asyncio.get_running_loop().time() - started
    assert resp.status_code == 502 and resp.json()["error"]["data"]["code"] == "mcp_stdio_error"
    assert "initialize" in resp.json()["error"]["message"]
    assert elapsed < 5
    assert _pool_pids(env, await _server_id(env, "mute")) == []


async def test_failed_starts_back_off_then_open_the_breaker(env: McpEnv) -> None:
    """A server that keeps failing to start: each failure is 502 mcp_stdio_error; calls during the back-off are 503
    mcp_stdio_unavailable with Retry-After (no process started); after 5 failures in a row the breaker stays open
    for 30 s."""
    failures = 0
    backed_off = 0
    async with httpx.AsyncClient(timeout=20) as http:
        for _ in range(400):
            resp = await http.post(env.route("flaky"), json=_echo(), headers=env.headers())
            code = resp.json()["error"]["data"]["code"]
            if resp.status_code == 502:
                assert code == "mcp_stdio_error"
                failures += 1
                if failures == 5:
                    break
            else:
                assert (resp.status_code, code) == (503, "mcp_stdio_unavailable")
                assert int(resp.headers["retry-after"]) >= 1
                backed_off += 1
                await asyncio.sleep(0.05)
        assert failures == 5 and backed_off >= 4  # every failure was followed by a back-off
        opened = await http.post(env.route("flaky"), json=_echo(), headers=env.headers())
    assert opened.status_code == 503 and int(opened.headers["retry-after"]) >= 29


async def test_a_process_past_its_lifetime_is_replaced(env: McpEnv) -> None:
    """A process older than `max_lifetime_s` is retired once idle (whole group) and the next call gets a new one."""
    async with httpx.AsyncClient(timeout=20) as http:
        assert (await http.post(env.route("aging"), json=_echo(), headers=env.headers())).status_code == 200
        server_id = await _server_id(env, "aging")
        [first] = _pool_pids(env, server_id)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if first not in _pool_pids(env, server_id):
                break
        assert (await http.post(env.route("aging"), json=_echo(2), headers=env.headers())).status_code == 200
    assert first not in _pool_pids(env, server_id) and _pool_pids(env, server_id)
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(first, 0)
            await asyncio.sleep(0.05)


async def test_stderr_is_kept_in_a_bounded_ring(env: McpEnv) -> None:
    """A process writing 100 kB to stderr: the gateway keeps only its last ~16 KiB (for diagnostics), and none of
    it reaches the client."""
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(env.route("chatty"), json=_echo(), headers=env.headers())
    assert resp.status_code == 200 and "eeee" not in resp.text
    pools = env.gw.gateway.mcp.stdio
    assert pools is not None
    [process] = pools.pools[await _server_id(env, "chatty")][1].processes
    for _ in range(100):  # the reader drains the pipe concurrently
        if process.stderr_tail().endswith("e" * 100) and "000099000" in process.stderr_tail():
            break
        await asyncio.sleep(0.05)
    tail = process.stderr_tail()
    assert "000099000" in tail and "000000000" not in tail  # the newest kept, the oldest dropped
    assert STDERR_RING_BYTES - 4096 < process.stderr_size <= STDERR_RING_BYTES
