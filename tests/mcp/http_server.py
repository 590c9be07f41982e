"""An upstream MCP server (official SDK, Streamable HTTP) in its own process, to be killed with SIGKILL:
`python tests/mcp/http_server.py PORT json|sse`."""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("killable")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool()
async def sleepy(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return "woke"


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    app = server.streamable_http_app(json_response=mode == "json", stateless_http=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
