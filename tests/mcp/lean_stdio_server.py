"""A lean stdio MCP server (standard library only: it starts in milliseconds and answers in microseconds), for
the tests that make many calls: `initialize`, `ping`, `tools/list` and an `echo` tool, newline-delimited
JSON-RPC as the SDK's stdio transport speaks it. The SDK-written stdio server is tests/mcp/stdio_server.py.

`--mute-init`: never answers `initialize` (an init timeout); `--stderr N`: writes N bytes to stderr first."""

from __future__ import annotations

import json
import sys
from typing import Any

TOOLS = [{"name": "echo", "description": "Echo the text back.", "inputSchema": {"type": "object"}}]


def result(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "lean", "version": "1"},
        }
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call" and params.get("name") == "echo":
        text = str(params.get("arguments", {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if method == "ping":
        return {}
    return None


def main() -> None:
    out = sys.stdout
    mute_init = "--mute-init" in sys.argv
    if "--stderr" in sys.argv:
        size = int(sys.argv[sys.argv.index("--stderr") + 1])
        for start in range(0, size, 1000):
            sys.stderr.write(f"{start:09d}" + "e" * (min(1000, size - start) - 9))
        sys.stderr.flush()
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message or "method" not in message:
            continue  # notifications and responses need no answer
        if mute_init and message["method"] == "initialize":
            continue
        answer = result(message["method"], message.get("params") or {})
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if answer is None:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        else:
            reply["result"] = answer
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
