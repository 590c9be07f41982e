"""The translation matrix of `POST /v1/llm/chat`: the same conversations to every provider type (OpenAI, Anthropic,
Gemini, vLLM), unary and streamed, through a live gateway in front of the mock provider.

Each answer is checked on its own, each stream is reassembled and compared with the unary answer of the same
conversation, and the mock's (deterministic) text is compared across providers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.harness import GatewayProcess
from tests.unified.helpers import (
    MODELS,
    PROVIDER_OF,
    WEATHER_SCHEMA,
    Answer,
    ask,
    forced_tool,
    image,
    json_answer,
    no_tool,
    plain,
    tool_call,
    tool_result,
    truncated,
)

MODES = ("unary", "stream")
CONVERSATIONS = ("plain", "tool_call", "tool_result", "image", "json", "truncated", "no_tool", "forced_tool")
_BUILDERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "plain": plain,
    "tool_call": tool_call,
    "image": image,
    "json": json_answer,
    "truncated": truncated,
    "no_tool": no_tool,
    "forced_tool": forced_tool,
}
TOOL_CONVERSATIONS = {
    "tool_call": ("get_weather", '{"city": "Paris", "unit": "celsius"}'),
    "forced_tool": ("get_time", '{"city": "Paris"}'),
}
# the mock answers "Mock reply to:" + the first six words of the last user text, then filler, 12 words in all
EXPECTED_TEXT = {
    "plain": "Mock reply to: Summarize the plot of Hamlet briefly. alpha bravo charlie",
    "tool_result": "Mock reply to: What is the weather in Paris alpha bravo charlie",
    "image": "Mock reply to: Compare these two pictures please. alpha bravo charlie delta",
    "truncated": "Mock reply to: Summarize the",
    "no_tool": "Mock reply to: What is the weather in Paris alpha bravo charlie",
}
# the mock fills a JSON schema deterministically: named defaults for strings, 1.5 for numbers, true for booleans
EXPECTED_JSON = {"city": "Paris", "temperature": 1.5, "sunny": True}

_cache: dict[tuple[str, str, str, str], Answer] = {}


@pytest.fixture()
async def http(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the live gateway."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:
        yield client


async def answer(http: httpx.AsyncClient, key: str, model: str, conversation: str, mode: str) -> Answer:
    """The answer of one cell of the matrix, asked once per session (the comparisons reuse it)."""
    slot = (str(http.base_url), model, conversation, mode)
    if slot not in _cache:
        if conversation == "tool_result":
            # the second turn replays the tool call this same mode produced (a streamed call must be usable as is)
            first = await answer(http, key, model, "tool_call", mode)
            body = tool_result(model, first.tool_calls[0])
        else:
            body = _BUILDERS[conversation](model)
        _cache[slot] = await ask(http, key, body, mode)
    return _cache[slot]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
async def test_answer(http: httpx.AsyncClient, key: str, model: str, mode: str, conversation: str) -> None:
    """Every provider answers every conversation with the expected content, tool calls, stop reason and usage."""
    got = await answer(http, key, model, conversation, mode)
    assert got.input_tokens is not None and got.input_tokens > 0
    assert got.output_tokens is not None and got.output_tokens > 0
    if conversation in TOOL_CONVERSATIONS:
        name, arguments = TOOL_CONVERSATIONS[conversation]
        assert got.stop == "tool_calls"
        assert got.content == ""
        assert [c.name for c in got.tool_calls] == [name]
        assert got.tool_calls[0].arguments == arguments
        assert got.tool_calls[0].id
        return
    assert got.tool_calls == []
    assert got.stop == ("length" if conversation == "truncated" else "stop")
    if conversation == "json":
        value = json.loads(got.content)
        assert set(value) == set(WEATHER_SCHEMA["properties"])
        assert value == EXPECTED_JSON
    else:
        assert got.content == EXPECTED_TEXT[conversation]
        assert got.output_tokens == len(got.content.split())
    if mode == "unary":
        assert got.raw["provider"] == PROVIDER_OF[model] and got.raw["model"] == model


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("model", MODELS)
async def test_stream_matches_unary(http: httpx.AsyncClient, key: str, model: str, conversation: str) -> None:
    """The reassembled stream equals the unary answer: content, tool names, byte-identical arguments, stop, usage."""
    one = await answer(http, key, model, conversation, "unary")
    streamed = await answer(http, key, model, conversation, "stream")
    assert streamed.content == one.content
    assert [c.name for c in streamed.tool_calls] == [c.name for c in one.tool_calls]
    # ids too: the mock derives them from the request, and Gemini (which has none) gets the same synthesized ones
    assert [c.id for c in streamed.tool_calls] == [c.id for c in one.tool_calls]
    assert [c.arguments.encode() for c in streamed.tool_calls] == [
        c.arguments.encode() for c in one.tool_calls
    ]
    assert streamed.stop == one.stop
    assert (streamed.input_tokens, streamed.output_tokens) == (one.input_tokens, one.output_tokens)
    assert (streamed.cached_input_tokens, streamed.reasoning_tokens) == (
        one.cached_input_tokens,
        one.reasoning_tokens,
    )


@pytest.mark.parametrize("conversation", CONVERSATIONS)
async def test_same_answer_across_providers(http: httpx.AsyncClient, key: str, conversation: str) -> None:
    """The mock's deterministic answer is the same whichever provider type the conversation was translated to."""
    answers = {model: await answer(http, key, model, conversation, "unary") for model in MODELS}
    contents = {model: a.content for model, a in answers.items()}
    assert len(set(contents.values())) == 1, contents
    calls = {model: [(c.name, c.arguments) for c in a.tool_calls] for model, a in answers.items()}
    assert len({json.dumps(c) for c in calls.values()}) == 1, calls
    outputs = {model: a.output_tokens for model, a in answers.items()}
    assert len(set(outputs.values())) == 1, outputs
    # the mock counts the text of every message (system included), so equal input means nothing was lost on the
    # way; the exception is Gemini's tool result, a structured functionResponse object that the mock does not count
    # as text (the answer still shows it arrived: the mock answers in text only after a tool result)
    inputs = {
        model: a.input_tokens
        for model, a in answers.items()
        if not (conversation == "tool_result" and model == "gemini-test")
    }
    assert len(set(inputs.values())) == 1, inputs
    if conversation == "tool_result":
        first = await answer(http, key, "gemini-test", "tool_call", "unary")
        assert answers["gemini-test"].input_tokens == first.input_tokens
