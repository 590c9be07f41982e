"""The mock's Anthropic Messages format, driven by the official `anthropic` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from odock.mock.testing import MockServer

USER = [{"role": "user", "content": "Plan a trip to Rome"}]
TOOL = {
    "name": "get_weather",
    "description": "w",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    },
}


@pytest.fixture()
async def client(mock: MockServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """An Anthropic client pointed at the mock, without retries."""
    async with anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=mock.base_url, max_retries=0) as c:
        yield c


async def test_messages_unary(client: anthropic.AsyncAnthropic) -> None:
    """A unary message has a text block, end_turn and Anthropic usage fields."""
    message = await client.messages.create(model="claude-test", max_tokens=256, messages=USER)  # type: ignore[arg-type]
    assert message.model == "claude-test"
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text" and block.text.startswith("Mock reply to: Plan a trip to Rome")
    assert message.usage.input_tokens == 5 and message.usage.output_tokens == 12
    assert message.usage.cache_read_input_tokens == 0


async def test_messages_stream_text_events(client: anthropic.AsyncAnthropic) -> None:
    """The stream has message_start, ping, block start/delta/stop, message_delta and message_stop."""
    async with client.messages.stream(model="claude-test;cached=3", max_tokens=256, messages=USER) as stream:  # type: ignore[arg-type]
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds and "content_block_stop" in kinds
    assert final.content[0].type == "text" and final.content[0].text.startswith("Mock reply to:")
    assert final.usage.output_tokens == 12
    assert final.usage.cache_read_input_tokens == 3
    assert final.usage.input_tokens == 2  # 5 tokens of which 3 read from cache


async def test_messages_stream_tool_use_and_thinking(client: anthropic.AsyncAnthropic) -> None:
    """Thinking (with signature) then a tool_use whose input arrives as many input_json_delta pieces."""
    async with client.messages.stream(
        model="claude-test",
        max_tokens=2048,
        messages=USER,
        tools=[TOOL],  # type: ignore[arg-type,list-item]
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        json_deltas = 0
        thinking_deltas = 0
        async for event in stream:
            if event.type == "content_block_delta":
                json_deltas += event.delta.type == "input_json_delta"
                thinking_deltas += event.delta.type == "thinking_delta"
        final = await stream.get_final_message()
    assert json_deltas > 3 and thinking_deltas > 0
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    assert final.content[0].type == "thinking" and final.content[0].signature
    assert final.content[1].type == "tool_use" and final.content[1].input == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert final.stop_reason == "tool_use"


async def test_tool_directive_forces_a_call(client: anthropic.AsyncAnthropic) -> None:
    """tool=<name> in a [[mock]] marker answers with a call to that tool even when none was offered."""
    message = await client.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=[{"role": "user", "content": "search please [[mock tool=search]]"}],
    )
    assert message.content[0].type == "tool_use" and message.content[0].name == "search"


async def test_error_shapes_map_to_sdk_exceptions(client: anthropic.AsyncAnthropic) -> None:
    """status=429/529 answer Anthropic's error shape: RateLimitError (with retry-after) and OverloadedError."""
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="claude;status=429", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert info.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Mock upstream failure (status 429)."},
    }
    assert info.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.create(model="claude;status=529", max_tokens=10, messages=USER)  # type: ignore[arg-type]


async def test_named_errors_carry_request_id(client: anthropic.AsyncAnthropic) -> None:
    """error=context_length / model_not_found answer in Anthropic's words, with a `request-id` header."""
    with pytest.raises(anthropic.BadRequestError) as too_long:
        await client.messages.create(model="claude;error=context_length", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert too_long.value.body["error"]["message"].startswith("prompt is too long")  # type: ignore[index]
    assert (too_long.value.request_id or "").startswith("req_")
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="claude-nope;error=model_not_found", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-nope"},
    }


async def test_auth_and_version_headers_are_required(mock: MockServer) -> None:
    """No x-api-key is a 401 authentication_error; no anthropic-version is a 400."""
    body = {"model": "claude", "max_tokens": 10, "messages": USER}
    async with httpx.AsyncClient(base_url=mock.base_url) as raw:
        no_key = await raw.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
        no_version = await raw.post("/v1/messages", json=body, headers={"x-api-key": "k"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400 and no_version.json()["type"] == "error"


async def test_error_after_sends_error_event(client: anthropic.AsyncAnthropic) -> None:
    """error_after=3 emits Anthropic's `error` event, which the SDK raises."""
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with client.messages.stream(
            model="claude;error_after=3", max_tokens=100, messages=USER
        ) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass


async def test_cut_after_is_noticed(client: anthropic.AsyncAnthropic) -> None:
    """cut_after=4 ends the stream without message_stop; the SDK sees a broken body."""
    with pytest.raises(Exception) as info:
        async with client.messages.stream(
            model="claude;cut_after=4", max_tokens=100, messages=USER
        ) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass
    assert (
        isinstance(info.value, anthropic.APIConnectionError)
        or "RemoteProtocolError" in type(info.value).__name__
    )


async def test_raw_event_sequence_includes_ping(mock: MockServer) -> None:
    """On the wire the events are framed with `event:` names, ping included, in Anthropic's order."""
    body = {"model": "claude", "max_tokens": 50, "messages": USER, "stream": True}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=mock.base_url) as raw:
        text = (await raw.post("/v1/messages", json=body, headers=headers)).text
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_journal_records_headers_and_credential_hash(
    client: anthropic.AsyncAnthropic, journal: MockServer
) -> None:
    """The journal keeps anthropic-version/beta and a hash prefix of the key, never the key itself."""
    import hashlib

    await client.messages.create(
        model="claude",
        max_tokens=10,
        messages=USER,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    entry = journal.requests[-1]
    assert entry["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert entry["headers"]["anthropic-version"]
    assert entry["credential_sha256"] == hashlib.sha256(b"sk-ant-test").hexdigest()[:12]
    assert "sk-ant-test" not in repr(entry)
    assert entry["keys"] == ["max_tokens", "messages", "model"]
