"""SafetySec and plugins on MCP calls (issue 13): off by default; a server that opts in has its tool arguments
screened before the upstream (block: 403 safety_blocked, redact: the upstream receives the redacted arguments) and
its results screened in JSON and SSE bodies; plugins see a normalized view, may change or block it; decisions go
to the usage record, never the text. The SDK client through a live gateway against `MCPServer` upstreams."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.harness import wait_usage
from tests.mcp.servers import McpEnv, client, mcp_gateway, serve

SEEN: list[str] = []  # what the upstream's `store` tool was given


def guarded_server() -> MCPServer:
    server: MCPServer = MCPServer("guarded")

    @server.tool()
    def store(note: str) -> str:
        """Keep a note (the tests read what the upstream received)."""
        SEEN.append(note)
        return "stored"

    @server.tool()
    def reveal() -> str:
        """Answer with personal data."""
        return "write to alice@example.com"

    @server.tool()
    def profile() -> dict[str, str]:
        """Answer with structured content holding personal data."""
        return {"name": "Bob", "email": "bob@example.com"}

    @server.tool()
    def classified() -> str:
        """Answer with what the response phase blocks."""
        return "code SECRET-1234"

    @server.prompt()
    def greet(who: str) -> str:
        """A prompt echoing its argument."""
        return f"Hello {who}"

    @server.resource("demo://contact")
    def contact() -> str:
        """A resource holding personal data."""
        return "reach carol@example.com"

    return server


SAFETY = {
    "enabled": True,
    "patterns": [
        {"name": "ticket", "regex": "TICKET-[0-9]{6}", "action": "block", "phases": ["request"]},
        {"name": "classified", "regex": "SECRET-[0-9]{4}", "action": "block", "phases": ["response"]},
    ],
}
PLUGINS = {
    "plugins": [
        {"name": "mask", "type": "pii_mask"},
        {"name": "gate", "type": "tests.mcp.plugins:ArgumentGate", "config": {"word": "forbidden"}},
        {"name": "audit", "type": "audit_log"},
    ],
    "phases": {
        "pre_upstream": {"sequential": ["gate", "mask"]},
        "post_upstream": {"sequential": ["mask"]},
        "post_response": {"sequential": ["audit"], "async": False},
    },
}


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    tmp = tmp_path_factory.mktemp("mcp-screening")
    (tmp / "plugins.json").write_text(json.dumps(PLUGINS))
    upstream = guarded_server()
    json_app = upstream.streamable_http_app(json_response=True, stateless_http=True)
    sse_app = guarded_server().streamable_http_app(json_response=False, stateless_http=True)
    async with (
        serve(json_app) as json_url,
        serve(sse_app) as sse_url,
        mcp_gateway(tmp, plugins_config_path=str(tmp / "plugins.json")) as env,
    ):
        for kind, url in (("json", json_url), ("sse", sse_url)):
            await env.add_server(f"{kind}-safe", url + "/mcp", policies={"safety": SAFETY})
            await env.add_server(f"{kind}-plugged", url + "/mcp", config={"plugins": True})
            await env.add_server(f"{kind}-plain", url + "/mcp")
        await env.gw.gateway.rewire()
        yield env


def call(tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}},
    }


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_safety_blocks_tool_arguments(env: McpEnv, kind: str) -> None:
    """A blocked pattern in the arguments: 403 safety_blocked as a JSON-RPC error the SDK raises; never forwarded."""
    SEEN.clear()
    async with client(env, f"{kind}-safe") as mcp:
        with pytest.raises(MCPError, match="blocked by SafetySec"):
            await mcp.call_tool("store", {"note": "see TICKET-123456"})
    resp = await env.post(f"{kind}-safe", call("store", {"note": "TICKET-654321"}), f"blk-{kind}")
    assert resp.status_code == 403
    assert resp.json()["error"]["data"]["code"] == "safety_blocked"
    assert SEEN == []
    record = await wait_usage(env.service, f"blk-{kind}")
    assert record["status"] == 403 and record["error_code"] == "safety_blocked"
    assert record["metadata"]["security"] == [
        {"phase": "request", "module": "custom", "category": "ticket", "action": "block"}
    ]
    assert "TICKET" not in json.dumps(record["metadata"])


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_safety_redacts_arguments_before_the_upstream(env: McpEnv, kind: str) -> None:
    """Personal data in the arguments reaches the upstream redacted (the default request action)."""
    SEEN.clear()
    async with client(env, f"{kind}-safe") as mcp:
        result = await mcp.call_tool("store", {"note": "mail alice@example.com today"})
    assert text_of(result) == "stored"
    assert SEEN == ["mail [REDACTED_EMAIL] today"]


@pytest.mark.parametrize("kind", ["json", "sse"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_safety_redacts_results(env: McpEnv, kind: str, mode: str) -> None:
    """Result text and structuredContent come back redacted, in JSON and SSE bodies."""
    async with client(env, f"{kind}-safe", mode) as mcp:
        reveal = await mcp.call_tool("reveal", {})
        profile = await mcp.call_tool("profile", {})
    assert text_of(reveal) == "write to [REDACTED_EMAIL]"
    assert profile.structured_content == {"name": "Bob", "email": "[REDACTED_EMAIL]"}
    assert "bob@example.com" not in text_of(profile)


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_safety_screens_prompts_and_resources(env: McpEnv, kind: str) -> None:
    """prompts/get arguments are screened before the upstream (a block refuses the call); prompt messages and
    resources/read text come back redacted."""
    async with client(env, f"{kind}-safe") as mcp:
        with pytest.raises(MCPError, match="blocked by SafetySec"):
            await mcp.get_prompt("greet", {"who": "TICKET-123456"})
        prompt = await mcp.get_prompt("greet", {"who": "dave@example.com"})
        resource = await mcp.read_resource("demo://contact")
    assert "Hello [REDACTED_EMAIL]" in str(prompt.messages[0].content)
    assert getattr(resource.contents[0], "text", "") == "reach [REDACTED_EMAIL]"


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_safety_blocks_a_result(env: McpEnv, kind: str) -> None:
    """A blocked pattern in a result: the client gets an error for that call, never the text; recorded."""
    async with client(env, f"{kind}-safe") as mcp:
        with pytest.raises(MCPError, match="blocked by SafetySec") as caught:
            await mcp.call_tool("classified", {})
        assert "SECRET-1234" not in str(caught.value)
    resp = await env.post(f"{kind}-safe", call("classified"), f"res-{kind}")
    assert "SECRET-1234" not in resp.text and "safety_blocked" in resp.text
    record = await wait_usage(env.service, f"res-{kind}")
    assert {"phase": "response", "module": "custom", "category": "classified", "action": "block"} in record[
        "metadata"
    ]["security"]


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_plugins_change_arguments_and_results(
    env: McpEnv, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """pii_mask masks the arguments the upstream receives and the result the client reads; audit_log's
    post_response runs on the MCP call; the runs are in the usage record."""
    SEEN.clear()
    with caplog.at_level(logging.INFO, logger="odock.audit"):
        async with client(env, f"{kind}-plugged") as mcp:
            stored = await mcp.call_tool("store", {"note": "call bob@example.com"})
            reveal = await mcp.call_tool("reveal", {})
        resp = await env.post(f"{kind}-plugged", call("profile"), f"plug-{kind}")
    assert text_of(stored) == "stored" and SEEN == ["call [REDACTED_EMAIL]"]
    assert text_of(reveal) == "write to [REDACTED_EMAIL]"
    assert "bob@example.com" not in resp.text and "[REDACTED_EMAIL]" in resp.text
    assert any(r.audit["request_id"] == f"plug-{kind}" for r in caplog.records if hasattr(r, "audit"))
    record = await wait_usage(env.service, f"plug-{kind}")
    runs = {(run["plugin"], run["phase"], run["outcome"]) for run in record["metadata"]["plugins"]}
    assert {("gate", "pre_upstream", "allow"), ("mask", "post_upstream", "modify")} <= runs


async def test_a_plugin_blocks_a_tool_call(env: McpEnv) -> None:
    """A plugin's block reaches the client with its own status and code; the upstream never sees the call."""
    SEEN.clear()
    async with client(env, "json-plugged") as mcp:
        with pytest.raises(MCPError, match="store refused"):
            await mcp.call_tool("store", {"note": "forbidden words"})
    resp = await env.post("json-plugged", call("store", {"note": "forbidden"}), "plug-block")
    assert resp.status_code == 409 and resp.json()["error"]["data"]["code"] == "tool_refused"
    assert SEEN == []


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_off_by_default(env: McpEnv, kind: str) -> None:
    """A server that did not opt in: arguments and results pass untouched, nothing recorded, though SafetySec
    and plugins are on for its neighbours."""
    SEEN.clear()
    async with client(env, f"{kind}-plain") as mcp:
        await mcp.call_tool("store", {"note": "mail alice@example.com TICKET-123456 forbidden"})
        reveal = await mcp.call_tool("reveal", {})
        classified = await mcp.call_tool("classified", {})
    assert SEEN == ["mail alice@example.com TICKET-123456 forbidden"]
    assert text_of(reveal) == "write to alice@example.com" and text_of(classified) == "code SECRET-1234"
    await env.post(f"{kind}-plain", call("reveal"), f"plain-{kind}")
    assert (await wait_usage(env.service, f"plain-{kind}"))["metadata"] is None


async def test_the_stage_is_wired_only_while_a_server_opts_in(tmp_path: Any) -> None:
    """No server opted in: the MCP pipeline carries no screening stage (zero cost); one opts in: it does."""
    async with mcp_gateway(tmp_path) as env:
        gateway = env.gw.gateway
        assert "mcp_screen" not in gateway.pipelines["mcp"].names()
        await env.add_server("plain", "http://127.0.0.1:9/mcp")
        await gateway.rewire()
        assert "mcp_screen" not in gateway.pipelines["mcp"].names()
        await env.add_server("opted", "http://127.0.0.1:9/mcp", policies={"safety": {"enabled": True}})
        await gateway.rewire()
        assert "mcp_screen" in gateway.pipelines["mcp"].names()
