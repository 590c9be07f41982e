"""The anthropic SDK through a live gateway on `POST /v1/messages`: fast path, streams, usage, errors."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.native.conftest import last_request, wait_usage

USER = [{"role": "user", "content": "hello there"}]
WEATHER = [
    {
        "name": "get_weather",
        "description": "weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def client(gateway: GatewayProcess, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key=key, max_retries=0)


async def test_unary_message_usage_and_slug(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer
) -> None:
    """A unary message is answered by the mock via the slug; usage is recorded; version/beta headers go upstream."""
    async with client(gateway, key) as c:
        raw = await c.messages.with_raw_response.create(
            model="claude-test",
            max_tokens=64,
            messages=USER,  # type: ignore[arg-type]
            extra_headers={"anthropic-beta": "tools-2024-04-04", "anthropic-version": "2024-01-01"},
        )
    msg = await raw.parse()
    assert msg.content[0].type == "text" and msg.content[0].text
    upstream = last_request(mock, "/v1/messages")
    assert upstream["model"] == "claude-sonnet-4-5"
    assert upstream["headers"]["anthropic-version"] == "2024-01-01"
    assert upstream["headers"]["anthropic-beta"] == "tools-2024-04-04"
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["route"] == "anthropic.messages" and record["provider"] == "anthropic"
    assert (
        record["input_tokens"] == msg.usage.input_tokens
        and record["output_tokens"] == msg.usage.output_tokens
    )
    assert record["output_tokens"] > 0


async def test_bearer_key_is_accepted(gateway: GatewayProcess, key: str) -> None:
    """The Odock key works in Authorization as well as x-api-key."""
    async with anthropic.AsyncAnthropic(base_url=gateway.base_url, auth_token=key, max_retries=0) as c:
        msg = await c.messages.create(model="claude-test", max_tokens=32, messages=USER)  # type: ignore[arg-type]
    assert msg.content


async def test_stream_text_and_usage(gateway: GatewayProcess, key: str, service: CatalogueService) -> None:
    """The messages.stream() helper accumulates the passed-through events; stream usage is recorded."""
    async with (
        client(gateway, key) as c,
        c.messages.stream(
            model="claude-test",
            max_tokens=64,
            messages=USER,  # type: ignore[arg-type]
        ) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text and final.content[0].type == "text" and final.content[0].text == text
    record = await wait_usage(service, request_id)
    assert record["stream"] and record["output_tokens"] == final.usage.output_tokens > 0
    assert record["input_tokens"] == final.usage.input_tokens > 0


async def test_stream_tool_use_with_input_json_delta(gateway: GatewayProcess, key: str) -> None:
    """A tool_use block streams its input as input_json_delta events and accumulates to a parsed input."""
    async with client(gateway, key) as c:
        events: list[Any] = []
        async with c.messages.stream(
            model="claude-test",
            max_tokens=64,
            tools=WEATHER,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "weather in Paris? [[mock tool=get_weather]]"}],
        ) as stream:
            async for event in stream:
                events.append(event)
            final = await stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    tool = [b for b in final.content if b.type == "tool_use"]
    assert tool and tool[0].name == "get_weather" and isinstance(tool[0].input, dict)
    assert final.stop_reason == "tool_use"


async def test_stream_thinking(gateway: GatewayProcess, key: str) -> None:
    """Extended thinking streams thinking deltas and a signature before the text."""
    async with (
        client(gateway, key) as c,
        c.messages.stream(
            model="claude-test",
            max_tokens=2048,
            messages=USER,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream,
    ):
        final = await stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds[0] == "thinking" and "text" in kinds
    assert final.content[0].thinking and final.content[0].signature  # type: ignore[union-attr]


async def test_stream_cut_raises(gateway: GatewayProcess, key: str, service: CatalogueService) -> None:
    """An upstream stream cut before message_stop ends with an Anthropic error event: the SDK raises."""
    async with client(gateway, key) as c:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with c.messages.stream(
                model="claude-test",
                max_tokens=64,
                messages=[{"role": "user", "content": "long answer [[mock cut_after=3]]"}],
            ) as stream:
                request_id = stream.response.headers["x-request-id"]
                async for _ in stream:
                    pass
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert info.value.body["error"]["code"] == "upstream_error"  # type: ignore[index]
    record = await wait_usage(service, request_id)
    assert record["outcome"] == "failed" and record["error_code"] == "upstream_error"


async def test_stream_upstream_error_event_raises(gateway: GatewayProcess, key: str) -> None:
    """An upstream `event: error` mid-stream is re-rendered as the gateway's Anthropic error event: the SDK raises."""
    seen: list[str] = []
    async with client(gateway, key) as c:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with c.messages.stream(
                model="claude-test",
                max_tokens=64,
                messages=[{"role": "user", "content": "long answer [[mock error_after=2]]"}],
            ) as stream:
                async for event in stream:
                    seen.append(event.type)
    assert seen[:1] == ["message_start"] and "message_stop" not in seen
    assert "Overloaded" in info.value.body["error"]["message"]  # type: ignore[index]


async def test_errors_map_to_sdk_exceptions(gateway: GatewayProcess, key: str) -> None:
    """401, 403 (ungranted), 400 provider_not_allowed and an upstream 500 (as 502) raise the matching classes."""
    async with anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key="odk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(model="claude-test", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    async with client(gateway, key) as c:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await c.messages.create(model="gpt-ungranted", max_tokens=8, messages=USER)  # type: ignore[arg-type]
        assert denied.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as pinned:
            await c.messages.create(model="gpt-test", max_tokens=8, messages=USER)  # type: ignore[arg-type]
        assert pinned.value.body["error"]["code"] == "provider_not_allowed"  # type: ignore[index]
        with pytest.raises(anthropic.InternalServerError) as upstream:
            await c.messages.create(
                model="claude-test",
                max_tokens=8,
                messages=[{"role": "user", "content": "x [[mock status=500]]"}],
            )
        assert upstream.value.status_code == 502
        assert upstream.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert upstream.value.body["error"]["upstream_status"] == 500  # type: ignore[index]


async def test_bad_bodies_are_anthropic_400s(gateway: GatewayProcess, key: str) -> None:
    """Invalid JSON, a missing model and a missing max_tokens are 400s in Anthropic's error shape."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        broken = await http.post("/v1/messages", content=b"{nope", headers=headers)
        no_model = await http.post("/v1/messages", json={"max_tokens": 5, "messages": USER}, headers=headers)
        no_max = await http.post(
            "/v1/messages", json={"model": "claude-test", "messages": USER}, headers=headers
        )
    for resp, code in (
        (broken, "invalid_request_body"),
        (no_model, "invalid_request"),
        (no_max, "invalid_request"),
    ):
        assert resp.status_code == 400
        body = resp.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == code
