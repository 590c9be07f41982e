"""A stdio MCP server written with the official SDK, run by the gateway's stdio pool as a subprocess
(self-contained: it imports only the SDK, so it starts fast)."""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("stdio-demo")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool()
def secret_tool() -> str:
    """A tool the gateway's rules refuse."""
    return "SHOULD-NEVER-RUN"


@server.tool()
def whoami() -> str:
    """The name the gateway passed in the environment, and this process's id."""
    return f"{os.environ.get('DEMO_NAME', '?')}:{os.getpid()}"


@server.tool()
async def sleepy(seconds: float) -> str:
    """Wait, then answer (to kill the process mid-call)."""
    await asyncio.sleep(seconds)
    return "woke"


if __name__ == "__main__":
    print("stdio demo starting", file=sys.stderr)
    server.run("stdio")
