"""Plugins on every route with the official SDKs, unary and streamed: a pass, a modification (request_transform's
system prompt and output cap upstream, an answer changed by post_upstream / stream_chunk), a block before the
upstream (403 plugin_blocked, or the plugin's own 4xx), and a block mid-stream (an error event, never a clean end).
One plugin serves all dialects unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from odock.transport.base import UpstreamRequest
from tests.harness import wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

SYSTEM = "PLUGIN-SYSTEM-PROMPT"
CAP = 64
CONFIG = {
    "plugins": [
        {
            "name": "transform",
            "type": "request_transform",
            "config": {"system_prompt": SYSTEM, "max_tokens_cap": CAP},
        },
        {"name": "gate", "type": "tests.plugins.sample:Gate", "config": {"word": "forbidden"}},
        {
            "name": "embargo",
            "type": "tests.plugins.sample:Gate",
            "config": {
                "word": "embargoed",
                "status": 451,
                "code": "region_embargo",
                "message": "not in this region",
            },
        },
        {"name": "upper", "type": "tests.plugins.sample:Upper"},
        {"name": "audit", "type": "audit_log"},
    ],
    "phases": {
        "pre_route": {"sequential": ["transform", "gate"]},
        "pre_upstream": {"sequential": ["embargo"]},
        "post_upstream": {"sequential": ["upper"]},
        "stream_chunk": {"sequential": ["upper"]},
        "post_response": {"parallel": ["audit"], "async": True},
    },
}


class Blocked(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


Ask = Callable[[str, bool], Awaitable[str]]


def _openai(gw: InProcessGateway, path: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://gateway.test{path}",
        api_key=gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )


def chat_driver(gw: InProcessGateway, model: str, path: str = "/v1") -> Ask:
    client = _openai(gw, path)

    async def ask(text: str, stream: bool) -> str:
        messages: Any = [{"role": "user", "content": text}]
        try:
            if not stream:
                reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=256)
                return reply.choices[0].message.content or ""
            said = ""
            chunks = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=256, stream=True
            )
            async for chunk in chunks:
                if chunk.choices:
                    said += chunk.choices[0].delta.content or ""
            return said
        except openai.APIStatusError as err:
            raise Blocked(err.status_code, err.message) from None
        except openai.APIError as err:  # an error event mid-stream
            raise Blocked(0, err.message) from None

    return ask


def responses_driver(gw: InProcessGateway) -> Ask:
    client = _openai(gw)

    async def ask(text: str, stream: bool) -> str:
        try:
            if not stream:
                reply = await client.responses.create(model="gpt-test", input=text, max_output_tokens=256)
                return reply.output_text
            said = ""
            events = await client.responses.create(
                model="gpt-test", input=text, max_output_tokens=256, stream=True
            )
            async for event in events:
                if event.type == "response.output_text.delta":
                    said += event.delta
                elif event.type in ("error", "response.failed"):
                    raise Blocked(0, str(getattr(event, "message", "") or event))
            return said
        except openai.APIStatusError as err:
            raise Blocked(err.status_code, err.message) from None
        except openai.APIError as err:
            raise Blocked(0, err.message) from None

    return ask


def anthropic_driver(gw: InProcessGateway) -> Ask:
    client = anthropic.AsyncAnthropic(
        base_url="http://gateway.test",
        api_key=gw.seeded["secret"],
        max_retries=0,
        http_client=gw.sdk_client(),
    )

    async def ask(text: str, stream: bool) -> str:
        messages: Any = [{"role": "user", "content": text}]
        try:
            if not stream:
                reply = await client.messages.create(model="claude-test", max_tokens=256, messages=messages)
                return "".join(b.text for b in reply.content if b.type == "text")
            said = ""
            async with client.messages.stream(
                model="claude-test", max_tokens=256, messages=messages
            ) as events:
                async for piece in events.text_stream:
                    said += piece
            return said
        except anthropic.APIStatusError as err:
            raise Blocked(err.status_code, err.message) from None
        except anthropic.APIError as err:
            raise Blocked(0, err.message) from None

    return ask


def gemini_driver(gw: InProcessGateway) -> Ask:
    client = genai.Client(
        api_key=gw.seeded["secret"],
        http_options=types.HttpOptions(
            base_url="http://gateway.test",
            api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=gw.sdk_client(),
        ),
    )
    config = types.GenerateContentConfig(max_output_tokens=256)

    async def ask(text: str, stream: bool) -> str:
        try:
            if not stream:
                reply = await client.aio.models.generate_content(
                    model="gemini-test", contents=text, config=config
                )
                return reply.text or ""
            said = ""
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-test", contents=text, config=config
            ):
                said += chunk.text or ""
            return said
        except genai_errors.APIError as err:
            raise Blocked(err.code, err.message or "") from None

    return ask


def unified_driver(gw: InProcessGateway) -> Ask:
    async def ask(text: str, stream: bool) -> str:
        body = {"model": "claude-test", "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
        headers = {"Authorization": f"Bearer {gw.seeded['secret']}"}
        async with gw.client() as http:
            reply = await http.post("/v1/llm/chat", json={**body, "stream": stream}, headers=headers)
        if reply.status_code != 200:
            raise Blocked(reply.status_code, reply.json()["error"]["message"])
        if not stream:
            return str(reply.json()["content"])
        said = ""
        for line in reply.text.splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise Blocked(0, event["error"]["message"])
                said += "".join(c["delta"].get("content") or "" for c in event["choices"])
        return said

    return ask


ROUTES: dict[str, Callable[[InProcessGateway], Ask]] = {
    "openai.chat": lambda gw: chat_driver(gw, "gpt-test"),
    "openai.responses": responses_driver,
    "anthropic.messages": anthropic_driver,
    "gemini": gemini_driver,
    "vllm.chat": lambda gw: chat_driver(gw, "vllm-test", "/v1/vllm"),
    "unified.chat": unified_driver,
}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("plugins")
    path = tmp / "plugins.json"
    path.write_text(json.dumps(CONFIG))
    async with in_process_gateway(tmp, plugins_config_path=str(path)) as gateway:
        yield gateway


@pytest.fixture()
def upstream_bodies(gw: InProcessGateway) -> AsyncIterator[list[dict[str, Any]]]:
    """The JSON bodies the gateway sends upstream during one test."""
    bodies: list[dict[str, Any]] = []
    transport = gw.gateway.transport
    send = transport.send

    async def capture(request: UpstreamRequest) -> Any:
        bodies.append(json.loads(request.body or b"{}"))
        return await send(request)

    transport.send = capture  # type: ignore[method-assign]
    yield bodies  # type: ignore[misc]
    del transport.send  # type: ignore[method-assign]


def _cap_of(body: dict[str, Any]) -> Any:
    generation = body.get("generationConfig") or {}
    for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if field in body:
            return body[field]
    return generation.get("maxOutputTokens")


@pytest.mark.parametrize("route", list(ROUTES))
async def test_pass_modify_and_block_on_every_route(
    gw: InProcessGateway, upstream_bodies: list[dict[str, Any]], route: str
) -> None:
    """On each route, unary and streamed: a plain call passes (with the operator's system prompt and output cap
    sent upstream), "shout" comes back upper-cased, a forbidden word is refused before any upstream call with 403
    plugin_blocked, a plugin's own 451 reaches the SDK, and a block mid-stream ends the stream with an error."""
    ask = ROUTES[route](gw)
    for stream in (False, True):
        upstream_bodies.clear()
        plain = await ask("hello there", stream)
        assert plain and plain != plain.upper(), (route, stream, plain)
        assert len(upstream_bodies) == 1
        sent = json.dumps(upstream_bodies[0])
        assert SYSTEM in sent, (route, sent)
        assert _cap_of(upstream_bodies[0]) == CAP, (route, upstream_bodies[0])

        loud = await ask("please shout this", stream)
        assert loud and loud == loud.upper() and loud != loud.lower(), (route, stream, loud)

        upstream_bodies.clear()
        with pytest.raises(Blocked) as refused:
            await ask("a forbidden question", stream)
        assert refused.value.status == 403 and "blocked by plugin 'gate'" in refused.value.message
        with pytest.raises(Blocked) as embargoed:
            await ask("an embargoed question", stream)
        assert embargoed.value.status == 451 and "not in this region" in embargoed.value.message
        assert upstream_bodies == []  # neither block reached the upstream

    with pytest.raises(Blocked) as cut:
        await ask("explode slowly please", True)
    assert "stopped mid-stream" in cut.value.message, (route, cut.value.message)


async def test_plugin_runs_reach_the_usage_record(gw: InProcessGateway) -> None:
    """The usage record lists each plugin execution (plugin, phase, outcome, duration) and a block's code."""
    client = _openai(gw)
    reply = await client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "shout it"}]
    )
    record = await wait_usage(gw.service, reply.headers["x-request-id"])
    runs = record["metadata"]["plugins"]
    seen = [(r["plugin"], r["phase"], r["outcome"]) for r in runs]
    assert seen == [
        ("transform", "pre_route", "modify"),
        ("gate", "pre_route", "allow"),
        ("embargo", "pre_upstream", "allow"),
        ("upper", "post_upstream", "modify"),
    ]
    assert all(isinstance(r["duration_us"], int) for r in runs)
    assert runs[0]["findings"] == ["system_prompt", "max_tokens_cap"]
    assert "shout" not in json.dumps(record["metadata"])  # never the prompt

    with pytest.raises(openai.PermissionDeniedError) as refused:
        await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "forbidden"}]
        )
    record = await wait_usage(gw.service, refused.value.response.headers["x-request-id"])
    assert (record["status"], record["error_code"]) == (403, "plugin_blocked")
    assert record["metadata"]["plugins"][-1]["outcome"] == "block"
    body = refused.value.body
    assert isinstance(body, dict) and body.get("code") == "plugin_blocked" and body.get("plugin") == "gate"


async def test_routes_without_a_chat_dialect_still_run_plugins(gw: InProcessGateway) -> None:
    """Embeddings have no normalized chat request: plugins run with `request` None and the call is answered."""
    reply = await _openai(gw).embeddings.with_raw_response.create(model="embed-test", input="forbidden words")
    assert reply.parse().data[0].embedding
    record = await wait_usage(gw.service, reply.headers["x-request-id"])
    runs = [(r["plugin"], r["phase"], r["outcome"]) for r in record["metadata"]["plugins"]]
    assert ("gate", "pre_route", "allow") in runs


async def test_metrics_count_plugin_executions(gw: InProcessGateway) -> None:
    """gateway_plugin_executions_total and the duration histogram carry plugin and phase labels."""
    async with gw.client() as http:
        text = (await http.get("/metrics")).text
    assert (
        'gateway_plugin_executions_total{outcome="allow",plugin_name="gate",plugin_stage="pre_route"}' in text
    )
    assert (
        'gateway_plugin_execution_duration_seconds_count{plugin_name="upper",plugin_stage="stream_chunk"}'
        in text
    )
