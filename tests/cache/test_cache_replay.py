"""The response cache in process, through the official SDKs: off by default, a hit never calls the upstream,
and an answer first given unary or streamed replays either way in each dialect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types

from odock.mock.server import MockApp
from tests.harness import wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway

CACHE_ON = {"cache": {"mode": "exact", "ttl": "5m"}}


async def enable(gw: InProcessGateway, policies: dict[str, Any] | None = None, *, org: str = "acme") -> None:
    """Turn the cache on for the organisation (the gateway rewires on the catalogue change)."""
    await gw.service.update_organisation(org, {"policies": policies or CACHE_ON})
    await gw.gateway.catalogue.invalidate()


def upstream_calls(mock: MockApp) -> int:
    return sum(1 for r in mock.journal if not str(r["path"]).startswith("/_mock"))


def openai_client(gw: InProcessGateway, secret: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=secret or gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


def anthropic_client(gw: InProcessGateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url="http://gateway.test",
        api_key=gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


def gemini_client(gw: InProcessGateway) -> genai.Client:
    import httpx

    return genai.Client(
        api_key=gw.seeded["secret"],
        http_options=types.HttpOptions(
            base_url="http://gateway.test",
            api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gw.app), base_url="http://gateway.test"
            ),
        ),
    )


MESSAGES: list[Any] = [{"role": "user", "content": "tell me about caches"}]


async def test_off_by_default_and_wired_by_a_policy(tmp_path: Path) -> None:
    """No policy: no cache stage (native routes stay byte relays), no header; a policy wires it."""
    async with in_process_gateway(tmp_path) as gw:
        assert "cache" not in gw.gateway.pipelines["llm"].names()
        reply = await openai_client(gw).chat.completions.with_raw_response.create(
            model="gpt-test", messages=MESSAGES
        )
        assert "x-odock-cache" not in reply.headers
        await enable(gw)
        names = gw.gateway.pipelines["llm"].names()
        assert names.index("model_access") < names.index("cache") < names.index("final_gate")
        await gw.service.update_organisation("acme", {"policies": {}})
        await gw.gateway.catalogue.invalidate()
        assert "cache" not in gw.gateway.pipelines["llm"].names()


async def test_openai_chat_unary_then_stream_replay(tmp_path: Path) -> None:
    """A unary answer is stored; the same call hits without the upstream, unary and streamed; the hit is in the
    ledger as cache_hit at cost 0."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        first = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert first.headers["x-odock-cache"] == "MISS"
        original = first.parse().choices[0].message.content
        assert original and upstream_calls(gw.mock) == 1
        again = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        assert again.headers["x-odock-cache"] == "HIT" and int(again.headers["age"]) >= 0
        assert again.parse().choices[0].message.content == original
        stream = await client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == original
        assert upstream_calls(gw.mock) == 1
        record = await wait_usage(gw.service, again.headers["x-request-id"])
        assert record["metadata"] == {"cache_hit": True}
        assert record["cost_nanos"] == 0 and record["input_tokens"] == 0 and record["status"] == 200


async def test_anthropic_stream_then_unary_replay(tmp_path: Path) -> None:
    """An Anthropic stream is stored once it ended; the unary call and a second stream hit."""
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = anthropic_client(gw)
        args: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": MESSAGES}
        async with client.messages.stream(**args) as stream:
            streamed = await stream.get_final_message()
        original = streamed.content[0].text  # type: ignore[union-attr]
        assert upstream_calls(gw.mock) == 1
        reply = await client.messages.with_raw_response.create(**args)
        assert reply.headers["x-odock-cache"] == "HIT"
        message = await reply.parse()
        assert message.content[0].text == original
        assert message.stop_reason == streamed.stop_reason
        async with client.messages.stream(**args) as stream:
            again = await stream.get_final_message()
        assert again.content[0].text == original  # type: ignore[union-attr]
        assert upstream_calls(gw.mock) == 1


async def test_gemini_unary_then_stream_replay(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = gemini_client(gw)
        first = await client.aio.models.generate_content(model="gemini-test", contents="tell me about caches")
        assert first.text and upstream_calls(gw.mock) == 1
        second = await client.aio.models.generate_content(
            model="gemini-test", contents="tell me about caches"
        )
        assert second.text == first.text
        chunks = await client.aio.models.generate_content_stream(
            model="gemini-test", contents="tell me about caches"
        )
        text = "".join([chunk.text or "" async for chunk in chunks])
        assert text == first.text
        # without ?alt=sse Gemini streams a JSON array: the replay speaks it too
        reply = await gw.client().post(
            "/v1beta/models/gemini-test:streamGenerateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "tell me about caches"}]}]},
            headers={"x-goog-api-key": gw.seeded["secret"]},
        )
        assert reply.headers["x-odock-cache"] == "HIT"
        parts = [
            part.get("text", "")
            for chunk in reply.json()
            for candidate in chunk.get("candidates", [])
            for part in candidate.get("content", {}).get("parts", [])
        ]
        assert "".join(parts) == first.text
        assert upstream_calls(gw.mock) == 1


async def test_responses_stream_then_unary_replay(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        client = openai_client(gw)
        stream = await client.responses.create(model="gpt-test", input="tell me about caches", stream=True)
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        assert text and upstream_calls(gw.mock) == 1
        reply = await client.responses.with_raw_response.create(
            model="gpt-test", input="tell me about caches"
        )
        assert reply.headers["x-odock-cache"] == "HIT"
        assert reply.parse().output_text == text
        assert upstream_calls(gw.mock) == 1


async def test_unified_route_replays_and_keeps_provider_options_in_the_key(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        await enable(gw)
        http = gw.client()
        headers = {"authorization": f"Bearer {gw.seeded['secret']}"}
        body: dict[str, Any] = {"model": "claude-test", "messages": MESSAGES, "max_tokens": 32}
        first = await http.post("/v1/llm/chat", json=body, headers=headers)
        assert first.status_code == 200 and first.headers["x-odock-cache"] == "MISS"
        second = await http.post("/v1/llm/chat", json=body, headers=headers)
        assert second.headers["x-odock-cache"] == "HIT"
        assert second.json()["content"] == first.json()["content"]
        optioned = {**body, "provider_options": {"anthropic": {"top_k": 5}}}
        third = await http.post("/v1/llm/chat", json=optioned, headers=headers)
        assert third.headers["x-odock-cache"] == "MISS"
        raw = await http.post("/v1/llm/chat", json={**body, "include_raw": True}, headers=headers)
        assert raw.headers["x-odock-cache"] == "BYPASS" and "raw" in raw.json()
        assert upstream_calls(gw.mock) == 3


async def test_a_call_the_cache_does_not_cover_stays_a_byte_relay(tmp_path: Path) -> None:
    """Once some organisation turns the cache on, the stage is wired for every call; for a call it does not
    cover it steps aside, so the native route relays the answer's bytes undecoded, as with no cache at all."""
    from odock.pipeline.call import Call
    from odock.pipeline.stage import Stage

    seen: list[tuple[bool, int]] = []

    class Look(Stage):
        name = "look"

        async def before(self, call: Call) -> None:
            seen.append((call.needs_response, len(call.delta_stages)))

    async with in_process_gateway(tmp_path, pre_upstream=[Look()]) as gw:
        await enable(gw)
        client = openai_client(gw)
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        key = await gw.service.create_key(
            {
                "organisation": "acme",
                "name": "uncached",
                "type": "ORGANISATION",
                "models": ["gpt-test"],
                "policies": {"cache": {"enabled": False}},
            }
        )
        await gw.gateway.catalogue.invalidate()
        await openai_client(gw, key.secret).chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert seen == [(True, 1), (False, 0)]
