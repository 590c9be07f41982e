"""The external guard against a real local HTTP service (aiohttp on 127.0.0.1, reached through the gateway's
own HTTP/1.1 transport): HMAC-signed calls, allow / modify / block for the request phase and for a unary answer
(the response phase), a timeout and a broken service failing closed or open, and a stream that never goes to
the guard's response phase (see `odock.pipeline.stages.safety`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from odock.pipeline.stages.safety import SafetySec
from odock.safety.engine import SafetyConfig, SafetyEngine
from odock.safety.guard import GuardConfig, WebhookGuard
from odock.safety.sessions import MemorySessions
from odock.transport.http11 import Http11Transport
from tests.inprocess import in_process_gateway
from tests.safety.test_safety_routes import oai
from tests.webhook_service import serving, signed_by

SECRET = "guard-hmac-secret"

# words in the texts the guard sees -> its verdict, per phase. The mock upstream answers "Mock reply: <the
# prompt's first words>", so a word of the prompt reaches the response phase too.
VERDICTS: dict[tuple[str, str], dict[str, Any]] = {
    ("request", "forbidden"): {"action": "block", "category": "toxicity"},
    ("request", "Paris"): {"action": "modify"},
    ("response", "Lyon"): {"action": "block", "category": "leak"},
    ("response", "Berlin"): {"action": "modify"},
    ("response", "boom"): {"action": "crash"},
    ("response", "sleepy"): {"action": "slow"},
}


class GuardService:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signed_by(SECRET, request, body):
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        self.seen.append(payload)
        text = " ".join(payload["texts"])
        verdict = next(
            (v for (phase, word), v in VERDICTS.items() if phase == payload["phase"] and word in text),
            {"action": "allow"},
        )
        if verdict["action"] == "slow":
            await asyncio.sleep(2)
        if verdict["action"] == "crash":
            return web.Response(status=500, text="down")
        if verdict["action"] == "modify":
            swap = {"Paris": "[CITY]", "Berlin": "[TOWN]"}
            texts = payload["texts"]
            for word, mark in swap.items():
                texts = [t.replace(word, mark) for t in texts]
            verdict = {"action": "modify", "texts": texts, "category": "places"}
        return web.json_response(verdict)


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, GuardService]]:
    guard = GuardService()
    async with serving(guard.handle) as url:
        yield url, guard


def ask(client: openai.AsyncOpenAI, text: str) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}])


@pytest.mark.parametrize("fail_open", [False, True])
async def test_guard_request_and_response_phases_over_http(
    tmp_path: Path, service: tuple[str, GuardService], fail_open: bool
) -> None:
    url, guard_service = service
    transport = Http11Transport()
    guard = WebhookGuard(GuardConfig(url, SECRET, timeout_s=0.5, fail_open=fail_open), transport)
    stage = SafetySec(SafetyEngine(SafetyConfig(enabled=True)), MemorySessions(), guard)
    try:
        async with in_process_gateway(tmp_path, pre_reserve=[stage]) as gw:
            client = oai(gw, gw.seeded["secret"])
            seen = guard_service.seen
            # allow both ways: the guard saw the prompt, then the answer
            reply = await ask(client, "hello there")
            assert [s["phase"] for s in seen[-2:]] == ["request", "response"]
            assert seen[-1]["texts"] == [reply.choices[0].message.content]
            assert seen[-1]["request_id"] == seen[-2]["request_id"]
            # request phase: modify, block
            reply = await ask(client, "trip to Paris")
            assert "[CITY]" in (reply.choices[0].message.content or "")
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await ask(client, "something forbidden")
            assert caught.value.body["safety"]["phase"] == "request"  # type: ignore[index]
            # response phase: modify the answer, block the answer
            reply = await ask(client, "visit Berlin")
            content = reply.choices[0].message.content or ""
            assert "[TOWN]" in content and "Berlin" not in content
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await ask(client, "visit Lyon")
            assert caught.value.body["safety"] == {  # type: ignore[index]
                "phase": "response",
                "module": "external",
                "category": "leak",
            }
            assert "Lyon" not in json.dumps(caught.value.body)
            # a broken or slow guard on the response phase: the fail mode decides
            for word in ("boom", "sleepy"):
                if fail_open:
                    reply = await ask(client, f"say {word}")
                    assert word in (reply.choices[0].message.content or "")
                else:
                    with pytest.raises(openai.InternalServerError) as failed:
                        await ask(client, f"say {word}")
                    assert failed.value.status_code == 503
            # a stream: the request phase goes to the guard, the answer does not (it is never buffered whole)
            before = len(seen)
            stream = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "visit Lyon"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert "Lyon" in text and [s["phase"] for s in seen[before:]] == ["request"]
    finally:
        await transport.close()
