"""Upstream auth injected by the gateway: bearer, static header, and OAuth2 client credentials (one token fetch
for many concurrent calls, cached; a failing token endpoint is 502 mcp_auth_error). The client's own
`Authorization` (its Odock key) never reaches the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.mcp.servers import McpEnv, demo_server, mcp_gateway, serve

SEEN: list[dict[str, str]] = []
TOKEN_CALLS: list[dict[str, str]] = []


def recording(app: Any) -> Any:
    """The MCP app, noting the auth headers of every request it gets."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            SEEN.append({k: headers[k] for k in ("authorization", "x-upstream-key") if k in headers})
        await app(scope, receive, send)

    return wrapped


async def token_endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An OAuth2 token endpoint (client credentials); /broken answers 500. Slow, so that calls pile up."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    TOKEN_CALLS.append(dict(pair.split("=", 1) for pair in body.decode().split("&")))
    await asyncio.sleep(0.2)
    status, answer = (
        (500, b"{}")
        if scope["path"] == "/broken"
        else (
            200,
            json.dumps({"access_token": f"tok-{len(TOKEN_CALLS)}", "expires_in": 3600}).encode(),
        )
    )
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    upstream = recording(demo_server("authed").streamable_http_app(json_response=True, stateless_http=True))
    async with (
        serve(upstream) as url,
        serve(token_endpoint, lifespan="off") as tokens,
        mcp_gateway(tmp_path_factory.mktemp("auth")) as env,
    ):
        mcp = url + "/mcp"
        await env.add_server("bearer", mcp, auth={"type": "BEARER", "token": "static-token"})
        await env.add_server(
            "header", mcp, auth={"type": "HEADER", "name": "X-Upstream-Key", "value": "k-123"}
        )
        oauth = {
            "type": "OAUTH2",
            "tokenUrl": f"{tokens}/token",
            "clientId": "odock",
            "clientSecret": "s3cret",
        }
        await env.add_server("oauth", mcp, auth={**oauth, "scope": "tools"})
        await env.add_server("oauth-broken", mcp, auth={**oauth, "tokenUrl": f"{tokens}/broken"})
        yield env


CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "a"}},
}


async def post(env: McpEnv, slug: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            env.route(slug),
            json=CALL,
            headers={**env.headers(), "accept": "application/json, text/event-stream"},
        )


@pytest.mark.parametrize(
    ("slug", "expected"),
    [("bearer", {"authorization": "Bearer static-token"}), ("header", {"x-upstream-key": "k-123"})],
)
async def test_static_auth_replaces_the_clients(env: McpEnv, slug: str, expected: dict[str, str]) -> None:
    """The server's credential is sent; the client's Odock key is not."""
    SEEN.clear()
    assert (await post(env, slug)).status_code == 200
    assert [expected] == SEEN


async def test_oauth2_one_fetch_for_concurrent_calls_then_cached(env: McpEnv) -> None:
    """Ten concurrent calls make one token request; later calls reuse the cached token."""
    SEEN.clear()
    TOKEN_CALLS.clear()
    answers = await asyncio.gather(*(post(env, "oauth") for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert (await post(env, "oauth")).status_code == 200
    assert len(TOKEN_CALLS) == 1
    assert TOKEN_CALLS[0] == {
        "grant_type": "client_credentials",
        "client_id": "odock",
        "client_secret": "s3cret",
        "scope": "tools",
    }
    assert {s["authorization"] for s in SEEN} == {"Bearer tok-1"}


async def test_oauth2_failure_is_502_mcp_auth_error(env: McpEnv) -> None:
    """A token endpoint that fails: 502 mcp_auth_error, and the upstream is not called."""
    SEEN.clear()
    resp = await post(env, "oauth-broken")
    assert resp.status_code == 502
    assert resp.json()["error"]["data"]["code"] == "mcp_auth_error"
    assert SEEN == []
