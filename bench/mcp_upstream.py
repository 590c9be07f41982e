"""A minimal, fast Streamable HTTP MCP server for `bench --mcp` (raw ASGI, JSON answers, stateless): its own cost
is tiny, so the gateway's added latency is what the comparison shows. `python -m bench.mcp_upstream PORT`."""

from __future__ import annotations

import json
import sys
from typing import Any

_TOOLS = {"tools": [{"name": "echo", "description": "echo", "inputSchema": {"type": "object"}}]}
_INIT = {
    "protocolVersion": "2025-06-18",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "bench-upstream", "version": "1"},
}


def _result(message: dict[str, Any]) -> dict[str, Any]:
    method = message.get("method")
    if method == "tools/call":
        text = json.dumps(message.get("params", {}).get("arguments", {}))
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if method == "tools/list":
        return _TOOLS
    if method == "initialize":
        return _INIT
    return {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    request = json.loads(body)
    if "id" not in request:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": _result(request)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools", loop="uvloop"
    )
