"""Upstream MCP servers written with the official SDK (`MCPServer`), served by uvicorn on 127.0.0.1 in this
process, and a gateway served the same way, so the SDK's own HTTP client talks to the gateway over a socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from odock.mcp.auth import UpstreamAuth
from odock.mcp.service import McpCatalogueService
from odock.transport.http11 import Http11Transport
from tests.inprocess import InProcessGateway, in_process_gateway

# a handshake-era client's first message (the raw JSON-RPC tests send it themselves)
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


# a stdio MCP server with one `echo` tool and nothing else to load (cheap to start, for process tests)
LEAN = str(Path(__file__).with_name("lean_stdio_server.py"))


async def seed_lean_stdio(service: Any, config: dict[str, Any] | None = None) -> str:
    """An organisation, a key granted the lean stdio server `lean` (with `config`), in a live gateway's catalogue
    (`GatewayProcess.open_service()`); return the key's secret."""
    await service.create_organisation({"name": "acme"})
    created = await service.create_key({"organisation": "acme", "name": "k", "type": "ORGANISATION"})
    mcp = McpCatalogueService(service.store)
    await mcp.create_mcp_server(
        {"organisation": "acme", "name": "lean", "transport": "STDIO", "stdio_command": sys.executable,
         "stdio_args": [LEAN], **({"config": config} if config else {})}
    )  # fmt: skip
    await mcp.add_mcp_grant(created.key.id, "lean")
    return str(created.secret)


def demo_server(name: str = "demo") -> MCPServer:
    """Tools, a prompt and a resource; `secret_tool`, `secret_prompt` and `secret://x` are what rules block."""
    server: MCPServer = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def secret_tool() -> str:
        """A tool the gateway's rules refuse."""
        return "SHOULD-NEVER-RUN"

    @server.tool()
    async def sleepy(seconds: float) -> str:
        """Wait, then answer (to kill the server mid-call)."""
        await asyncio.sleep(seconds)
        return "woke"

    @server.prompt()
    def greet(who: str) -> str:
        """A greeting prompt."""
        return f"Hello {who}"

    @server.prompt()
    def secret_prompt() -> str:
        """A refused prompt."""
        return "no"

    @server.resource("demo://info")
    def info() -> str:
        """A readable resource."""
        return "info body"

    return server


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve an ASGI app on a free 127.0.0.1 port for the block; yields its base URL."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", loop="none", http="h11")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
        sock.close()


@dataclass
class McpEnv:
    gw: InProcessGateway
    url: str  # the gateway's base URL
    service: McpCatalogueService
    secret: str  # the seeded key's secret
    key_id: str

    def route(self, slug: str) -> str:
        return f"{self.url}/v1/mcp/{slug}"

    def headers(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.secret}"}

    async def post(self, slug: str, body: Any, request_id: str) -> httpx.Response:
        """One raw JSON-RPC POST through the gateway, under a request id (to find its usage record)."""
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.post(
                self.route(slug),
                json=body,
                headers={
                    **self.headers(),
                    "accept": "application/json, text/event-stream",
                    "x-request-id": request_id,
                },
            )

    async def add_server(self, slug: str, upstream: str, *, grant: bool = True, **fields: Any) -> str:
        info = await self.service.create_mcp_server(
            {
                "organisation": "acme",
                "name": slug,
                "transport": "STREAMABLE_HTTP",
                "endpoint_url": upstream,
                **fields,
            }
        )
        if grant:
            await self.service.add_mcp_grant(self.key_id, info.id)
        return info.id


@contextlib.asynccontextmanager
async def mcp_gateway(tmp_path: Path, **settings: Any) -> AsyncIterator[McpEnv]:
    """The seeded in-process gateway served on a socket, its MCP upstream calls over real HTTP."""
    async with in_process_gateway(tmp_path, **settings) as gw:
        http = Http11Transport()
        runtime = gw.gateway.mcp
        runtime.transport = http
        runtime.auth = UpstreamAuth(http)
        try:
            async with serve(gw.app, lifespan="off") as url:
                service = McpCatalogueService(gw.gateway.store)
                yield McpEnv(gw, url, service, gw.seeded["secret"], gw.seeded["key_id"])
        finally:
            await http.close()


@contextlib.asynccontextmanager
async def client(
    env: McpEnv, slug: str, mode: str = "auto", secret: str | None = None, timeout: float = 10.0
) -> AsyncIterator[Client]:
    """The SDK's client through the gateway (its HTTP client carries the Odock key, and is closed after)."""
    async with (
        httpx2.AsyncClient(headers=env.headers(secret), timeout=httpx2.Timeout(timeout)) as http,
        Client(streamable_http_client(env.route(slug), http_client=http), mode=mode) as mcp,
    ):
        yield mcp
