"""Every failure has its documented status and code, surfaces as the matching openai SDK exception, and bad input
never yields a 500 or a hang."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from odock.state.service import CatalogueService
from tests.harness import GatewayProcess

MESSAGES = [{"role": "user", "content": "hi"}]


def client(gateway: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)


async def expect(
    gateway: GatewayProcess, key: str, exc: type[openai.APIStatusError], code: str, **kwargs: Any
) -> openai.APIStatusError:
    kwargs.setdefault("model", "gpt-test")
    kwargs.setdefault("messages", MESSAGES)
    async with client(gateway, key) as c:
        with pytest.raises(exc) as info:
            await c.chat.completions.create(**kwargs)
    assert info.value.code == code, info.value.body
    return info.value


async def test_missing_and_unknown_key(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """No key and an unknown key are 401 unauthorized (AuthenticationError)."""
    await expect(gateway, "sk-odock-not-a-key", openai.AuthenticationError, "unauthorized")
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post("/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"


async def test_key_in_every_documented_place(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """The key is accepted as Bearer, X-API-Key, x-goog-api-key and ?key=."""
    body = {"model": "gpt-test", "messages": MESSAGES}
    secret = seeded["secret"]
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        for headers, params in (
            ({"X-API-Key": secret}, {}),
            ({"x-goog-api-key": secret}, {}),
            ({}, {"key": secret}),
        ):
            resp = await http.post("/v1/chat/completions", json=body, headers=headers, params=params)
            assert resp.status_code == 200, resp.text


async def test_model_errors(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """Unknown model 400 model_not_found; ungranted 403 model_not_allowed; other family 400 provider_not_allowed."""
    key = seeded["secret"]
    await expect(gateway, key, openai.BadRequestError, "model_not_found", model="nope")
    await expect(gateway, key, openai.PermissionDeniedError, "model_not_allowed", model="gpt-ungranted")
    await expect(gateway, key, openai.BadRequestError, "provider_not_allowed", model="claude-test")
    await expect(
        gateway, key, openai.BadRequestError, "provider_not_allowed", extra_body={"provider": "anthropic"}
    )


async def test_unified_provider_pin_mismatch(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """/v1/llm/chat with a provider pin that does not match the model is 400 provider_not_allowed."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1/llm/chat",
            headers={"Authorization": f"Bearer {seeded['secret']}"},
            json={"model": "gpt-test", "provider": "gemini", "messages": MESSAGES},
        )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "provider_not_allowed"


async def test_upstream_error_is_502_with_upstream_body(
    gateway: GatewayProcess, seeded: dict[str, Any]
) -> None:
    """An upstream 500 is a 502 carrying the upstream's own error."""
    err = await expect(
        gateway, seeded["secret"], openai.InternalServerError, "upstream_error", model="gpt-broken"
    )
    assert err.status_code == 502
    assert isinstance(err.body, dict) and err.body["upstream_status"] == 500 and err.body["upstream_error"]


async def test_upstream_unreachable_is_502(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService
) -> None:
    """A provider whose address refuses connections gives 502 upstream_unreachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    await service.create_provider(
        {
            "organisation": seeded["org"],
            "name": "dead",
            "type": "openai",
            "base_url": f"http://127.0.0.1:{dead}/v1",
            "api_key": "x",
        }
    )
    await service.create_model(
        {"organisation": seeded["org"], "name": "gpt-dead", "provider": "dead", "slug": "gpt-4o"}
    )
    await service.add_grant(seeded["key_id"], "gpt-dead")
    await asyncio.sleep(1.2)  # a CLI-style change reaches the gateway by its version poll
    err = await expect(
        gateway, seeded["secret"], openai.InternalServerError, "upstream_unreachable", model="gpt-dead"
    )
    assert err.status_code == 502


async def test_disabled_provider_is_403(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService
) -> None:
    """A model whose provider is disabled is 403 provider_disabled."""
    await service.create_provider(
        {
            "organisation": seeded["org"],
            "name": "off",
            "type": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "x",
            "enabled": False,
        }
    )
    await service.create_model(
        {"organisation": seeded["org"], "name": "gpt-off", "provider": "off", "slug": "gpt-4o"}
    )
    await service.add_grant(seeded["key_id"], "gpt-off")
    await asyncio.sleep(1.2)
    await expect(
        gateway, seeded["secret"], openai.PermissionDeniedError, "provider_disabled", model="gpt-off"
    )


async def admin(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as http:
        return await http.request(method, path, **kwargs)


async def test_revoke_and_rotate_take_effect_on_next_request(
    gateway: GatewayProcess, seeded: dict[str, Any]
) -> None:
    """Through the admin API: revoke → the next request is 401 api_key_revoked; rotate → old secret 401, new works."""
    created = await admin(
        gateway,
        "POST",
        "/admin/keys",
        json={
            "organisation": seeded["org"],
            "name": "rotating",
            "type": "ORGANISATION",
            "models": ["gpt-test"],
        },
    )
    assert created.status_code in (200, 201), created.text
    key_id, secret = created.json()["id"], created.json()["secret"]
    async with client(gateway, secret) as c:
        await c.chat.completions.create(model="gpt-test", messages=MESSAGES)  # warms the key cache
    rotated = await admin(gateway, "POST", f"/admin/keys/{key_id}/rotate", json={})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    await expect(gateway, secret, openai.AuthenticationError, "unauthorized")
    async with client(gateway, new_secret) as c:
        await c.chat.completions.create(model="gpt-test", messages=MESSAGES)
    revoked = await admin(gateway, "POST", f"/admin/keys/{key_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    await expect(gateway, new_secret, openai.AuthenticationError, "api_key_revoked")


async def test_expired_key(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService
) -> None:
    """A key past its expiry is 401 api_key_expired, even while cached (the cache never outlives the expiry)."""
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    created = await service.create_key(
        {
            "organisation": seeded["org"],
            "name": "short-lived",
            "type": "ORGANISATION",
            "expires_at": soon.isoformat(),
            "models": ["gpt-test"],
        }
    )
    async with client(gateway, created.secret) as c:
        await c.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    await expect(gateway, created.secret, openai.AuthenticationError, "api_key_expired")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_request_body"),
        (b"[1, 2]", "invalid_request_body"),
        (b"", "invalid_request_body"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "invalid_request"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "invalid_request"),
        (b'{"model": "gpt-test", "messages": []}', "invalid_request"),
        (b'{"model": "gpt-test", "messages": [{"role": "robot", "content": "x"}]}', "invalid_request"),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "invalid_request",
        ),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            "invalid_request",
        ),
    ],
)
async def test_bad_bodies_are_400(
    gateway: GatewayProcess, seeded: dict[str, Any], body: bytes, code: str
) -> None:
    """Malformed JSON, wrong types, missing model and empty messages are 400 with a specific code."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        for path in ("/v1/chat/completions", "/v1/llm/chat"):
            resp = await http.post(
                path,
                content=body,
                headers={"Authorization": f"Bearer {seeded['secret']}", "Content-Type": "application/json"},
            )
            assert resp.status_code == 400, (path, resp.text)
            assert resp.json()["error"]["code"] == code, (path, resp.text)


async def test_unified_refuses_unknown_fields(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """A field the unified endpoint cannot carry is refused by name, never dropped silently."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1/llm/chat",
            headers={"Authorization": f"Bearer {seeded['secret']}"},
            json={"model": "gpt-test", "messages": MESSAGES, "logit_bias": {"1": 2}},
        )
    assert resp.status_code == 400 and "logit_bias" in resp.json()["error"]["message"]


async def test_routing_errors(gateway: GatewayProcess) -> None:
    """Unknown route 404 not_found; wrong method 405 method_not_allowed with Allow."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        missing = await http.post("/v1/nowhere", json={})
        wrong = await http.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


async def test_body_over_limit_is_413(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """A body over ODOCK_MAX_BODY_BYTES is refused with 413 payload_too_large, by header and by streamed size."""
    big = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"x" * 40_000_000 + b'"}]}'
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        resp = await http.post(
            "/v1/chat/completions", content=big, headers={"Authorization": f"Bearer {seeded['secret']}"}
        )

        async def chunks() -> Any:
            for _ in range(40):
                yield b"x" * 1_000_000

        chunked = await http.post(
            "/v1/chat/completions", content=chunks(), headers={"Authorization": f"Bearer {seeded['secret']}"}
        )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    assert chunked.status_code == 413


async def test_slow_client_gets_408(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """A client that stops sending its body is answered 408 request_timeout, not left hanging."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + seeded["secret"].encode() + b'\r\nContent-Length: 100\r\n\r\n{"mo'
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.read(4096), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408"), head[:200]
