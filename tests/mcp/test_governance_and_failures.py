"""MCP governance and upstream failures: MCP-scope rate limits (429), budget reservation before forwarding (402)
settled on the bytes actually relayed, and every upstream failure an error to the client — unreachable, 5xx, an
empty 200, a stream cut before the answer — never a 200 holding nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from odock.admin.governance import GovernanceAdmin
from odock.governance.store import GovernanceStore
from tests.harness import free_port, wait_usage
from tests.mcp.servers import McpEnv, demo_server, mcp_gateway, serve

CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hi"}},
}


async def faulty(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An upstream that misbehaves by path: /empty answers 200 with nothing, /boom 500, /cut a cut SSE stream."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    while (await receive()).get("more_body"):
        pass
    if path == "/boom":
        await send(
            {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"upstream exploded"})
    elif path == "/cut":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    upstream = demo_server("gov").streamable_http_app(json_response=True, stateless_http=True)
    async with (
        serve(upstream) as url,
        serve(faulty, lifespan="off") as bad,
        mcp_gateway(tmp_path_factory.mktemp("gov")) as env,
    ):
        await env.add_server("limited", url + "/mcp", policies={"ratelimit": {"requests": {"per_minute": 2}}})
        await env.add_server(
            "limited-ruled",
            url + "/mcp",
            policies={"ratelimit": {"requests": {"per_minute": 1}}},
            blocked_tools=["secret_tool"],
        )
        await env.add_server(
            "priced", url + "/mcp", pricing={"callNanosUsd": 10_000_000, "outputByteNanosUsd": 1}
        )
        await env.add_server("down", f"http://127.0.0.1:{free_port()}/mcp")
        await env.add_server("filtered", url + "/mcp", semantic_filter={"blockedKeywords": ["DROP TABLE"]})
        other = await env.gw.service.create_key(
            {"organisation": "acme", "name": "scope-owner", "type": "ORGANISATION"}
        )
        await env.add_server("scoped", url + "/mcp", api_key=other.key.id)
        for path in ("empty", "boom", "cut"):
            await env.add_server(path, f"{bad}/{path}")
        yield env


async def post(env: McpEnv, slug: str, body: Any = CALL, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            env.route(slug),
            json=body,
            headers={**env.headers(), "accept": "application/json, text/event-stream", **headers},
        )


def data(resp: httpx.Response) -> dict[str, Any]:
    return dict(resp.json()["error"]["data"])


async def test_mcp_scope_rate_limit(env: McpEnv) -> None:
    """The server's policy limits its calls under the MCP scope: the third call in a minute is 429."""
    statuses = [(await post(env, "limited")).status_code for _ in range(2)]
    assert statuses == [200, 200]
    third = await post(env, "limited")
    assert third.status_code == 429
    assert data(third)["code"] == "rpm_exceeded" and data(third)["scope"] == "mcp"
    assert "retry-after" in third.headers


async def test_mcp_scope_rate_limit_runs_before_tool_rules(env: McpEnv) -> None:
    """Reference §2.3: the MCP-scope limit (step 10) comes before the tool rules (step 12): a call both over the
    limit and for a blocked tool is 429, not 403; a blocked call within the limit still counts against it."""
    blocked = {**CALL, "params": {"name": "secret_tool", "arguments": {}}}
    first = await post(env, "limited-ruled", blocked)
    assert (first.status_code, data(first)["code"]) == (403, "mcp_guardrail_block")
    second = await post(env, "limited-ruled", blocked)
    assert (second.status_code, data(second)["code"], data(second)["scope"]) == (429, "rpm_exceeded", "mcp")
    allowed = await post(env, "limited-ruled")
    assert (allowed.status_code, data(allowed)["code"]) == (429, "rpm_exceeded")


async def test_budget_reserves_before_and_settles_on_actual_bytes(env: McpEnv) -> None:
    """A key budget of 0.015 USD and 0.01 USD per call: the first call passes and is charged its actual cost; the
    second is refused with 402 before reaching the upstream."""
    gw = env.gw
    admin = GovernanceAdmin(GovernanceStore(gw.service.store), catalogue=gw.service)
    await admin.create_budget(
        {"name": "mcp", "organisation": "acme", "key": "main", "period": "DAILY", "amount_usd": "0.015"}
    )
    assert gw.gateway.governance is not None
    await gw.gateway.governance.refresh_definitions()
    first = await post(env, "priced", **{"x-request-id": "mcp-budget-1"})
    assert first.status_code == 200, first.text
    record = await wait_usage(gw.service, "mcp-budget-1")
    assert record["cost_nanos"] == 10_000_000 + len(first.content)
    second = await post(env, "priced")
    assert second.status_code == 402 and data(second)["code"] == "budget_exceeded"
    await admin.delete_budget((await admin.list_budgets())[0].id)
    await gw.gateway.governance.refresh_definitions()


@pytest.mark.parametrize(
    ("slug", "status"),
    [("down", 502), ("boom", 502), ("empty", 502)],
)
async def test_upstream_failures_are_errors(env: McpEnv, slug: str, status: int) -> None:
    """Unreachable, a 5xx, or a 200 with an empty body for a request: 502 mcp_upstream_error."""
    resp = await post(env, slug)
    assert resp.status_code == status
    assert data(resp)["code"] == "mcp_upstream_error"


async def test_a_cut_stream_ends_with_an_error_event(env: McpEnv) -> None:
    """An SSE answer that ends before the response: the client's stream ends with a JSON-RPC error for the call."""
    resp = await asyncio.wait_for(post(env, "cut"), 10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert '"id":1' in resp.text and "mcp_upstream_error" in resp.text


async def test_semantic_filter_blocks_keywords_case_insensitively(env: McpEnv) -> None:
    """A blocked keyword anywhere in the body (any case) is 403 mcp_guardrail_block; other calls pass."""
    bad = {**CALL, "params": {"name": "echo", "arguments": {"text": "please drop table users"}}}
    resp = await post(env, "filtered", bad)
    assert (resp.status_code, data(resp)["code"]) == (403, "mcp_guardrail_block")
    assert (await post(env, "filtered")).status_code == 200


async def test_key_scope_refuses_other_keys_even_with_a_grant(env: McpEnv) -> None:
    """A server scoped to another key: 403 mcp_not_allowed for this key, although it holds a grant."""
    resp = await post(env, "scoped")
    assert (resp.status_code, data(resp)["code"]) == (403, "mcp_not_allowed")
