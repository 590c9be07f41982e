"""Stdio MCP servers: a supervised pool of processes per server (placeholder, replaced below)."""

from __future__ import annotations

from odock.errors import UpstreamError
from odock.mcp.call import McpRequest
from odock.mcp.records import McpServer


class StdioPools:
    async def close(self) -> None:
        return None


async def relay_stdio(
    pools: StdioPools, server: McpServer, state: McpRequest, method: str
) -> tuple[int, bytes]:
    raise UpstreamError("stdio transport not available", "mcp_stdio_error")
