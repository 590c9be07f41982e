"""The webhook plugin type against a real local HTTP service: HMAC-signed requests, allow / modify / block
decisions reaching the SDK and the upstream, and a slow or broken service handled by the plugin's on_error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from odock.transport.base import UpstreamRequest
from tests.inprocess import InProcessGateway, in_process_gateway
from tests.plugins.test_plugins_routes import _openai
from tests.webhook_service import serving, signed_by

SECRET = "webhook-test-secret"


class Guard:
    """A guard service: blocks "nope", rewrites "rewrite", stalls on "stall", fails on "crash"."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signed_by(SECRET, request, body):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        self.seen.append(payload)
        text = " ".join(str(m.get("content")) for m in payload["request"]["messages"])
        if "stall" in text:
            await asyncio.sleep(0.6)
        if "crash" in text:
            return web.Response(status=500, text="guard down")
        if "nope" in text:
            return web.json_response(
                {"action": "block", "status": 403, "code": "guard_refused", "message": "the guard says no"}
            )
        if "rewrite" in text:
            changed = payload["request"]
            changed["messages"] = [{"role": "user", "content": "rewritten by the guard"}]
            return web.json_response({"action": "modify", "request": changed, "findings": ["rewritten"]})
        return web.json_response({"action": "allow"})


@pytest.fixture(scope="module")
async def guard_url() -> AsyncIterator[tuple[str, Guard]]:
    guard = Guard()
    async with serving(guard.handle) as url:
        yield url, guard


@pytest.fixture(scope="module")
async def gw(
    tmp_path_factory: pytest.TempPathFactory, guard_url: tuple[str, Guard]
) -> AsyncIterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("webhook")
    url = guard_url[0]
    document = {
        "plugins": [
            {
                "name": "guard",
                "type": "webhook",
                "timeout_ms": 300,
                "on_error": "closed",
                "config": {"url": url, "secret_env": "GUARD_SECRET", "timeout_ms": 200},
            }
        ],
        "phases": {"pre_route": {"sequential": ["guard"]}},
    }
    path = tmp / "plugins.json"
    path.write_text(json.dumps(document))
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUGINS_ENV_GUARD_SECRET", SECRET)
    try:
        async with in_process_gateway(tmp, plugins_config_path=str(path)) as gateway:
            yield gateway
    finally:
        mp.undo()


def ask(gw: InProcessGateway, text: str) -> Any:
    return _openai(gw).chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}])


async def test_allow_modify_block_through_the_service(
    gw: InProcessGateway, guard_url: tuple[str, Guard]
) -> None:
    """Signed calls; "allow" passes, "modify" changes what the upstream receives, "block" is the service's own
    403 code and message in the OpenAI SDK; no provider credential or raw payload is ever sent to the service."""
    guard = guard_url[1]
    sent: list[bytes] = []
    transport = gw.gateway.transport
    send = transport.send

    async def capture(request: UpstreamRequest) -> Any:
        sent.append(request.body or b"")
        return await send(request)

    transport.send = capture  # type: ignore[method-assign]
    try:
        assert (await ask(gw, "hello")).choices[0].message.content
        reply = await ask(gw, "please rewrite this")
        assert "rewritten" in (reply.choices[0].message.content or "")
        assert b"rewritten by the guard" in sent[-1] and b"please rewrite" not in sent[-1]
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await ask(gw, "nope")
        body = refused.value.body
        assert isinstance(body, dict) and body["code"] == "guard_refused"
        assert "the guard says no" in refused.value.message
    finally:
        del transport.send  # type: ignore[method-assign]
    assert guard.bad_signatures == 0 and len(guard.seen) == 3
    payload = guard.seen[0]
    assert payload["phase"] == "pre_route" and payload["model"] == "gpt-test"
    assert "upstream" not in payload["request"] and "raw" not in payload["request"]


async def test_a_slow_or_broken_service_fails_closed(gw: InProcessGateway) -> None:
    """on_error closed: a service that stalls past the time limit or answers 500 fails the call (500
    plugin_error), quickly, never hanging."""
    for text in ("stall please", "crash please"):
        with pytest.raises(openai.InternalServerError) as failed:
            await asyncio.wait_for(ask(gw, text), 5)
        body = failed.value.body
        assert isinstance(body, dict) and body["code"] == "plugin_error"


def test_webhook_needs_its_secret(tmp_path: Path) -> None:
    """A webhook without its HMAC key in PLUGINS_ENV_* is a configuration error."""
    from odock.plugins import PluginConfigError, Plugins, parse_plugins_config

    document = {
        "plugins": [
            {"name": "g", "type": "webhook", "config": {"url": "http://127.0.0.1:9/x", "secret_env": "NOPE"}}
        ],
        "phases": {"pre_route": {"sequential": ["g"]}},
    }
    with pytest.raises(PluginConfigError, match="PLUGINS_ENV_NOPE is not set"):
        Plugins.build(parse_plugins_config(document), env={})
