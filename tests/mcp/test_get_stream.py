"""Server-initiated messages (handshake era): the official SDK client (`mode="legacy"`) opens its GET stream
through the gateway, and a notification the upstream sends outside any request (a notification on its standalone
channel) reaches the client — from a Streamable HTTP upstream (SSE and JSON answers) and from a legacy SSE one.
An upstream without a GET stream (one that answers it 405) makes the gateway answer the client's GET with 405, as the spec allows, never
502; a stdio server has none either (405)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.types import JSONRPCMessage, ResourceUpdatedNotification

from bench.mcp_upstream import app as bench_upstream
from tests.mcp.servers import INITIALIZE, LEAN, McpEnv, demo_server, mcp_gateway, serve


def announcing_server(name: str) -> MCPServer:
    """A tool that notifies on the session's standalone channel (a resource update): the message goes out on the
    GET stream, not on the answer to the call."""
    server: MCPServer = MCPServer(name)

    @server.tool()
    async def announce(text: str, ctx: Context) -> str:
        """Announce `text` outside this request, then answer."""
        await ctx.session.send_resource_updated(f"demo://announced/{text}")
        return "announced"

    return server


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    async with (
        serve(announcing_server("sse").streamable_http_app()) as sse_url,
        serve(announcing_server("json").streamable_http_app(json_response=True)) as json_url,
        serve(bench_upstream) as no_stream_url,
        serve(announcing_server("legacy").sse_app()) as legacy_url,
        mcp_gateway(tmp_path_factory.mktemp("get-stream")) as env,
    ):
        await env.add_server("sse", sse_url + "/mcp")
        await env.add_server("json", json_url + "/mcp")
        await env.add_server("no-stream", no_stream_url + "/mcp")
        await env.add_server("legacy", legacy_url + "/sse", transport="SSE")
        stdio = {"transport": "STDIO", "endpoint_url": None, "stdio_command": sys.executable}
        await env.add_server("lean", "", **stdio, stdio_args=[LEAN])
        yield env


async def _until_seen(mcp: Client, seen: list[str], text: str) -> None:
    """Call the tool until its notification arrives (the GET stream opens in the background after initialize)."""
    for _ in range(50):
        assert "announced" in str((await mcp.call_tool("announce", {"text": text})).content[0])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                while f"demo://announced/{text}" not in seen:
                    await asyncio.sleep(0.01)
                return
    raise AssertionError(f"no notification {text!r} reached the client: {seen}")


@pytest.mark.parametrize("slug", ["sse", "json"])
async def test_get_stream_relays_server_initiated_messages(env: McpEnv, slug: str) -> None:
    """Streamable HTTP upstream, handshake era: the SDK's GET stream (with the gateway's session token) carries
    the upstream's standalone notification to the client's message handler."""
    seen: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            seen.append(str(message.params.uri))

    async with (
        httpx2.AsyncClient(headers=env.headers(), timeout=httpx2.Timeout(20.0)) as http,
        Client(
            streamable_http_client(env.route(slug), http_client=http),
            mode="legacy",
            message_handler=on_message,
        ) as mcp,
    ):
        await _until_seen(mcp, seen, f"hello-from-{slug}")


async def test_legacy_sse_stream_relays_server_initiated_messages(env: McpEnv) -> None:
    """Legacy SSE upstream: its event stream (the GET) carries the standalone notification through the gateway."""
    seen: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            seen.append(str(message.params.uri))

    async with Client(
        sse_client(env.route("legacy"), headers=env.headers()), mode="legacy", message_handler=on_message
    ) as mcp:
        await _until_seen(mcp, seen, "hello-over-legacy-sse")


async def _get(env: McpEnv, slug: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(
            env.route(slug), headers={**env.headers(), "accept": "text/event-stream", **(headers or {})}
        )


async def _session(env: McpEnv, slug: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            env.route(slug),
            json=INITIALIZE,
            headers={**env.headers(), "accept": "application/json, text/event-stream"},
        )
    assert resp.status_code == 200
    headers = {"mcp-protocol-version": "2025-06-18"}
    if "mcp-session-id" in resp.headers:
        headers["mcp-session-id"] = resp.headers["mcp-session-id"]
    return headers


@pytest.mark.parametrize("slug", ["no-stream", "lean"])
async def test_an_upstream_without_a_get_stream_answers_405(env: McpEnv, slug: str) -> None:
    """A Streamable HTTP upstream that answers GET with 405 (bench/mcp_upstream.py) and a stdio server have no GET
    stream: the client's GET is answered 405 (what the spec allows a server without one), not a 502, and the
    SDK's legacy client works on."""
    resp = await _get(env, slug, await _session(env, slug))
    assert resp.status_code == 405, resp.text
    async with (
        httpx2.AsyncClient(headers=env.headers(), timeout=httpx2.Timeout(20.0)) as http,
        Client(streamable_http_client(env.route(slug), http_client=http), mode="legacy") as mcp,
    ):
        assert {t.name for t in (await mcp.list_tools()).tools} >= (
            {"announce"} if slug == "stateless" else {"echo"}
        )


class MemoryEventStore(EventStore):
    """The upstream's event store (resumability): ids are `<stream>.<n>`, so `<stream>.0` replays a whole stream."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, JSONRPCMessage]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        n = sum(1 for s, _, _ in self.events if s == stream_id) + 1
        if message is not None:
            self.events.append((stream_id, n, message))
        return f"{stream_id}.{n}"

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream, _, after = last_event_id.rpartition(".")
        for sid, n, message in self.events:
            if sid == stream and n > int(after):
                await send_callback(EventMessage(message, f"{sid}.{n}"))
        return stream


async def test_a_resumed_stream_is_filtered_too(tmp_path: Path) -> None:
    """A GET with Last-Event-ID replays a POST's stream, `tools/list` answer included: the replay is filtered by
    the tool rules as the first answer was (a blocked tool never shows through a resumption)."""
    async with (
        serve(demo_server("resumable").streamable_http_app(event_store=MemoryEventStore())) as url,
        mcp_gateway(tmp_path) as env,
    ):
        await env.add_server("resumable", url + "/mcp", blocked_tools=["secret_tool"])
        headers = {**env.headers(), "accept": "application/json, text/event-stream"}
        headers.update(await _session(env, "resumable"))
        async with httpx.AsyncClient(timeout=10) as http:
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (
                await http.post(env.route("resumable"), json=initialized, headers=headers)
            ).status_code == 202
            listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
            first = await http.post(env.route("resumable"), json=listing, headers=headers)
            assert "echo" in first.text and "secret_tool" not in first.text
            event_ids = [line[3:].strip() for line in first.text.splitlines() if line.startswith("id:")]
            assert event_ids  # the upstream numbers its events: the stream can be resumed from its start
            start = event_ids[0].rpartition(".")[0] + ".0"
            async with http.stream(
                "GET", env.route("resumable"), headers={**headers, "last-event-id": start}
            ) as replay:
                assert replay.status_code == 200
                text = ""
                async for chunk in replay.aiter_text():
                    text += chunk
                    if '"tools"' in text:  # the gateway relays whole events
                        break
        assert "echo" in text and "secret_tool" not in text
