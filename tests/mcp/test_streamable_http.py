"""The MCP gateway over Streamable HTTP, end to end: the official `mcp` SDK client (`mode="auto"`: the
2026-07-28 stateless form; `mode="legacy"`: the initialize handshake with sessions) through a live gateway to
`MCPServer` upstreams, JSON and SSE answers, tool rules, grants, error codes and usage records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from mcp.shared.exceptions import MCPError

from odock import metrics
from odock.metrics import TALLY
from odock.state import schema
from tests.harness import wait_usage
from tests.mcp.servers import INITIALIZE, McpEnv, client, demo_server, mcp_gateway, serve


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[dict[str, str]]:
    """Two upstream servers: one answering JSON, one answering SSE (both stateful, both eras)."""
    json_server, sse_server = demo_server("json"), demo_server("sse")
    async with (
        serve(json_server.streamable_http_app(json_response=True)) as json_url,
        serve(sse_server.streamable_http_app()) as sse_url,
    ):
        yield {"json": json_url + "/mcp", "sse": sse_url + "/mcp"}


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, str]) -> AsyncIterator[McpEnv]:
    async with mcp_gateway(tmp_path_factory.mktemp("mcp")) as env:
        for kind, url in upstreams.items():
            await env.add_server(f"{kind}-open", url)
            await env.add_server(
                f"{kind}-ruled",
                url,
                blocked_tools=["secret_tool", "prompt:secret_prompt"],
                pricing={"callNanosUsd": 1000, "inputByteNanosUsd": 2, "outputByteNanosUsd": 3},
            )
        await env.add_server("ungranted", upstreams["json"], grant=False)
        await env.add_server("disabled", upstreams["json"], enabled=False)
        yield env


@pytest.mark.parametrize("kind", ["json", "sse"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_calls_a_tool_through_the_gateway(env: McpEnv, kind: str, mode: str) -> None:
    """Both eras, JSON and SSE answers: the SDK lists and calls tools, reads a resource, gets a prompt."""
    discovered = metrics.child(metrics.MCP_REQUESTS, "STREAMABLE_HTTP", "server/discover", "success")
    initialized = metrics.child(metrics.MCP_REQUESTS, "STREAMABLE_HTTP", "initialize", "success")
    TALLY.flush()
    before = (discovered._value.get(), initialized._value.get())
    async with client(env, f"{kind}-open", mode) as mcp:
        tools = await mcp.list_tools()
        assert {"echo", "add", "secret_tool"} <= {t.name for t in tools.tools}
        result = await mcp.call_tool("add", {"a": 2, "b": 40})
        assert not result.is_error
        assert "42" in str(result.content[0])
        resource = await mcp.read_resource("demo://info")
        assert "info body" in str(resource.contents[0])
        prompt = await mcp.get_prompt("greet", {"who": "Ada"})
        assert "Hello Ada" in str(prompt.messages[0].content)
    # auto: the 2026-07-28 stateless form (server/discover, no handshake); legacy: the initialize handshake
    TALLY.flush()  # (the counters get the calls within Tally.FLUSH_S; not waiting for it here)
    after = (discovered._value.get(), initialized._value.get())
    if mode == "auto":
        assert after[0] == before[0] + 1 and after[1] == before[1]
    else:
        assert after[0] == before[0] and after[1] == before[1] + 1


@pytest.mark.parametrize("kind", ["json", "sse"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_blocked_tools_are_unlisted_and_uncallable(env: McpEnv, kind: str, mode: str) -> None:
    """tools/list is filtered (JSON and SSE bodies); tools/call and prompts/get of a blocked name are refused."""
    async with client(env, f"{kind}-ruled", mode) as mcp:
        names = {t.name for t in (await mcp.list_tools()).tools}
        assert "secret_tool" not in names and "echo" in names
        with pytest.raises(MCPError) as blocked:
            await mcp.call_tool("secret_tool", {})
        assert "not allowed" in str(blocked.value)
        with pytest.raises(MCPError):
            await mcp.get_prompt("secret_prompt", {})
        assert not (await mcp.call_tool("echo", {"text": "still fine"})).is_error


async def _post(env: McpEnv, slug: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            env.route(slug),
            json=body,
            headers={**env.headers(), "accept": "application/json, text/event-stream", **(headers or {})},
        )


def _code(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["data"]["code"])


async def test_error_codes(env: McpEnv) -> None:
    """invalid_mcp_ref 400, mcp_not_found 404 (unknown or disabled), mcp_not_allowed 403, 401 without a key."""
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=10) as http:
        bare = await http.post(f"{env.url}/v1/mcp", json=ping, headers=env.headers())
        assert (bare.status_code, _code(bare)) == (400, "invalid_mcp_ref")
        bad = await http.post(f"{env.url}/v1/mcp/bad%20ref", json=ping, headers=env.headers())
        assert (bad.status_code, _code(bad)) == (400, "invalid_mcp_ref")
        anonymous = await http.post(env.route("json-open"), json=ping)
        assert (anonymous.status_code, _code(anonymous)) == (401, "unauthorized")
        put = await http.put(env.route("json-open"), json=ping, headers=env.headers())
        assert put.status_code == 405
    for slug, status, code in (
        ("nope", 404, "mcp_not_found"),
        ("disabled", 404, "mcp_not_found"),
        ("ungranted", 403, "mcp_not_allowed"),
    ):
        resp = await _post(env, slug, ping)
        assert (resp.status_code, _code(resp)) == (status, code)


async def test_model_grant_never_implies_mcp_access(env: McpEnv) -> None:
    """A key granted every model but no MCP server is refused (deny by default)."""
    created = await env.gw.service.create_key(
        {"organisation": "acme", "name": "models-only", "type": "ORGANISATION", "models": ["gpt-test"]}
    )
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(
            env.route("json-open"),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers=env.headers(created.secret),
        )
    assert (resp.status_code, _code(resp)) == (403, "mcp_not_allowed")


async def test_every_batch_element_is_checked(env: McpEnv) -> None:
    """A batch with one blocked call among allowed ones is refused whole: nothing reaches the upstream."""
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "a"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "secret_tool", "arguments": {}},
        },
    ]
    resp = await _post(env, "json-ruled", batch)
    assert (resp.status_code, _code(resp)) == (403, "mcp_guardrail_block")


async def test_routing_headers_must_match_the_body(env: McpEnv) -> None:
    """2026-07-28 headers: an Mcp-Name naming an allowed tool over a body calling a blocked one is refused."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "secret_tool", "arguments": {}},
    }
    resp = await _post(env, "json-open", body, {"mcp-method": "tools/call", "mcp-name": "echo"})
    assert (resp.status_code, _code(resp)) == (400, "mcp_header_mismatch")
    assert resp.json()["error"]["code"] == -32020
    other = await _post(env, "json-open", body, {"mcp-method": "tools/list"})
    assert _code(other) == "mcp_header_mismatch"


async def test_session_token_is_bound_to_the_key(env: McpEnv) -> None:
    """The session id the client holds is a gateway token: another key presenting it gets 404, never the session
    (also once the owner's use has the token verified and memoized)."""
    created = await env.gw.service.create_key(
        {"organisation": "acme", "name": "other", "type": "ORGANISATION"}
    )
    await env.service.add_mcp_grant(created.key.id, "json-open")
    resp = await _post(env, "json-open", INITIALIZE)
    assert resp.status_code == 200
    token = resp.headers["mcp-session-id"]
    assert token.startswith("odk1.")
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=10) as http:
        owned = await http.post(
            env.route("json-open"),
            json=listing,
            headers={**env.headers(), "mcp-session-id": token, "accept": "application/json"},
        )
        assert owned.status_code == 200 and owned.headers["mcp-session-id"] == token
        stolen = await http.post(
            env.route("json-open"),
            json=listing,
            headers={**env.headers(created.secret), "mcp-session-id": token, "accept": "application/json"},
        )
        forged = await http.post(
            env.route("json-open"),
            json=listing,
            headers={**env.headers(), "mcp-session-id": token[:-4] + "AAAA", "accept": "application/json"},
        )
    assert (stolen.status_code, _code(stolen)) == (404, "mcp_session_not_found")
    assert (forged.status_code, _code(forged)) == (404, "mcp_session_not_found")


async def test_usage_record_and_cost(env: McpEnv) -> None:
    """A tools/call in a session leaves a UsageRecord with provider mcp, the server's slug and the priced cost, and
    its MCP usage record (same id) with the method, tool and bytes."""
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}},
    }
    headers = {"x-request-id": "mcp-usage-1", "mcp-protocol-version": "2025-06-18"}
    token = (await _post(env, "json-ruled", INITIALIZE)).headers["mcp-session-id"]
    resp = await _post(env, "json-ruled", body, {**headers, "mcp-session-id": token})
    assert resp.status_code == 200, resp.text
    record = await wait_usage(env.gw.service, "mcp-usage-1")
    assert record is not None
    assert record["provider"] == "mcp" and record["model"] == "json-ruled"
    table = schema.mcp_usage_records
    async with env.gw.gateway.store.read() as conn:
        query = sa.select(table).where(table.c.id == record["id"])
        details = (await conn.execute(query)).mappings().one()
    assert details["method"] == "tools/call" and details["tool"] == "echo"
    assert details["bytes_out"] == len(resp.content)
    expected = 1000 + 2 * details["bytes_in"] + 3 * details["bytes_out"]
    assert record["cost_nanos"] == details["cost_nanos"] == expected


async def test_resources_read_is_ruled(env: McpEnv) -> None:
    """A `resource:URI` rule refuses resources/read of that resource (403 mcp_guardrail_block, never forwarded);
    other resources still read."""
    await env.add_server("resource-ruled", (await env.service.get_mcp_server("json-open", "acme")).endpoint_url or "",
                         blocked_tools=["resource:demo://info"])  # fmt: skip
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "demo://info"}}
    resp = await _post(env, "resource-ruled", read)
    assert (resp.status_code, _code(resp)) == (403, "mcp_guardrail_block")
    assert "demo://info" in resp.json()["error"]["message"]
    async with client(env, "resource-ruled", "legacy") as mcp, client(env, "json-open", "legacy") as open_mcp:
        with pytest.raises(MCPError):
            await mcp.read_resource("demo://info")
        assert "info body" in str((await open_mcp.read_resource("demo://info")).contents[0])


async def test_delete_ends_the_upstream_session(env: McpEnv) -> None:
    """DELETE with the session token ends the upstream's session (the upstream's answer comes back); the token
    then leads to the upstream's 404, passed through so that the client starts a new session."""
    token = (await _post(env, "json-open", INITIALIZE)).headers["mcp-session-id"]
    session = {"mcp-session-id": token, "mcp-protocol-version": "2025-06-18"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    assert (await _post(env, "json-open", listing, session)).status_code == 200
    async with httpx.AsyncClient(timeout=10) as http:
        ended = await http.delete(env.route("json-open"), headers={**env.headers(), **session})
    assert ended.status_code == 200, ended.text
    after = await _post(env, "json-open", listing, session)
    assert after.status_code == 404
