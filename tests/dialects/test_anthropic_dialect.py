"""Anthropic Messages dialect: request round trips, upstream decoding, client stream encoding."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odock.dialects import anthropic as ad
from odock.errors import BadRequest, UpstreamError
from odock.model import (
    GatewayRequest,
    Message,
    StreamStart,
    StreamStop,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

from .helpers import parse_sse, reassemble, unary_view

TOOL_INPUT = {"location": "Paris, France", "unit": "celsius", "days": [1, 2]}

UNARY = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {
            "type": "thinking",
            "thinking": "The user wants weather.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
        },
        {"type": "text", "text": "Let me check the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": TOOL_INPUT,
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188,
        "cache_read_input_tokens": 1024,
        "output_tokens": 93,
        "output_tokens_details": {"thinking_tokens": 40},
    },
}


def _stream_fixture() -> list[dict[str, Any]]:
    args = json.dumps(TOOL_INPUT)
    pieces = [args[i : i + 3] for i in range(0, len(args), 3)]
    start_msg = dict(UNARY, content=[], stop_reason=None)
    start_msg["usage"] = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188,
        "cache_read_input_tokens": 1024,
        "output_tokens": 1,
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start_msg}]
    events += [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "The user "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "wants weather."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me check"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " the weather."}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {},
            },
        },
    ]
    events += [
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": p}}
        for p in pieces
    ]
    events += [
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 93, "output_tokens_details": {"thinking_tokens": 40}},
        },
        {"type": "message_stop"},
    ]
    return events


def _sse_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_unary_decode_counts_each_token_class_once() -> None:
    """A realistic Message decodes to content, thinking, exact tool arguments, tool_calls stop and cache usage."""
    resp = ad.decode_response(UNARY)
    assert resp.content == "Let me check the weather."
    assert resp.stop_reason == "tool_calls"
    assert resp.tool_calls and resp.tool_calls[0].name == "get_weather"
    assert json.loads(resp.tool_calls[0].arguments) == TOOL_INPUT
    assert resp.usage == Usage(
        input_tokens=21,
        output_tokens=93,
        cached_input_tokens=1024,
        cache_write_tokens=188,
        reasoning_tokens=40,
    )
    assert resp.usage.total_input == 21 + 188 + 1024
    assert resp.provider_request_id == UNARY["id"]


def test_stream_reassembles_to_unary() -> None:
    """Streamed thinking, text and many-fragment tool arguments reassemble byte-identically to the unary answer."""
    dec = ad.StreamDecoder()
    events = [e for ev in parse_sse(_sse_of(_stream_fixture())) for e in dec.feed(ev)]
    assert unary_view(ad.decode_response(UNARY)) == reassemble(events)
    assert isinstance(events[0], StreamStart)
    # input usage arrives first (message_start), the final cumulative usage last
    usages = [e for e in events if isinstance(e, UsageEvent)]
    assert usages[0].usage.input_tokens == 21 and usages[-1].usage.output_tokens == 93


def test_stream_error_event_raises() -> None:
    """An in-stream error event raises UpstreamError (kind 5xx) instead of ending quietly."""
    dec = ad.StreamDecoder()
    ev = parse_sse(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )[0]
    with pytest.raises(UpstreamError) as info:
        dec.feed(ev)
    assert info.value.kind == "5xx" and "Overloaded" in info.value.message


# --- request round trip -------------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=12)
_schema = st.fixed_dictionaries(
    {
        "type": st.just("object"),
        "properties": st.dictionaries(
            st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.just({"type": "string"}), max_size=2
        ),
    }
)
_image = st.one_of(
    st.builds(
        lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}},
        st.from_regex(r"[A-Za-z0-9+/]{4,12}", fullmatch=True),
    ),
    st.builds(
        lambda u: {"type": "image", "source": {"type": "url", "url": "https://example.com/" + u}},
        st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True),
    ),
)
_user_blocks = st.lists(
    st.one_of(st.builds(lambda t: {"type": "text", "text": t}, _text), _image), min_size=1, max_size=3
)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Generate valid Anthropic requests: text, images, tools, tool use/result turns, thinking, sampling, stop."""
    tools = draw(
        st.lists(
            st.builds(
                lambda n, d, s: {"name": n, "description": d, "input_schema": s},
                st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                _text,
                _schema,
            ),
            max_size=2,
            unique_by=lambda t: t["name"],
        )
    )
    messages: list[dict[str, Any]] = []
    for turn in range(draw(st.integers(1, 3))):
        user = draw(st.one_of(_text, _user_blocks))
        if (
            messages
            and messages[-1]["role"] == "assistant"
            and any(b["type"] == "tool_use" for b in messages[-1]["content"])
        ):
            results = [
                {"type": "tool_result", "tool_use_id": b["id"], "content": draw(_text)}
                for b in messages[-1]["content"]
                if b["type"] == "tool_use"
            ]
            user = results + (user if isinstance(user, list) else [{"type": "text", "text": user}])
        messages.append({"role": "user", "content": user})
        blocks: list[dict[str, Any]] = []
        if draw(st.booleans()):
            blocks.append({"type": "thinking", "thinking": draw(_text), "signature": draw(_text)})
        blocks.append({"type": "text", "text": draw(_text)})
        if tools and draw(st.booleans()):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{turn}",
                    "name": tools[0]["name"],
                    "input": {"q": draw(_text)},
                }
            )
        messages.append({"role": "assistant", "content": blocks})
    body: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": draw(st.integers(1, 8000)),
        "messages": messages,
    }
    if draw(st.booleans()):
        body["system"] = draw(
            st.one_of(
                _text,
                st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text), min_size=2, max_size=2),
            )
        )
    if tools:
        body["tools"] = tools
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    {"type": "auto"},
                    {"type": "any"},
                    {"type": "none"},
                    {"type": "tool", "name": tools[0]["name"]},
                ]
            )
        )
    for key, strat in (
        ("temperature", st.floats(0, 1)),
        ("top_p", st.floats(0, 1)),
        ("top_k", st.integers(1, 100)),
        ("stop_sequences", st.lists(_text, min_size=1, max_size=2)),
        ("metadata", st.builds(lambda u: {"user_id": u}, _text)),
    ):
        if draw(st.booleans()):
            body[key] = draw(strat)
    if draw(st.booleans()):
        body["thinking"] = draw(
            st.sampled_from(
                [{"type": "enabled", "budget_tokens": 2048}, {"type": "adaptive"}, {"type": "disabled"}]
            )
        )
    if draw(st.booleans()):
        body["output_config"] = {"format": {"type": "json_schema", "schema": draw(_schema)}}
    if draw(st.booleans()):
        body["stream"] = True
    return body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_requests())
def test_request_round_trip(body: dict[str, Any]) -> None:
    """Decoding an Anthropic request and encoding it back yields the same body."""
    req = ad.decode_request(body)
    assert req.raw is body
    again = ad.encode_request(req, slug=body["model"])
    assert again == body


def test_encode_defaults_merges_and_refusals() -> None:
    """max_tokens defaults to 4096, system goes top-level, tool results join one user turn, penalties are refused."""
    req = GatewayRequest(
        model="m",
        messages=[
            Message(role="system", content="be brief"),
            Message(role="developer", content="use tools"),
            Message(role="user", content="weather?"),
            Message(
                role="assistant",
                tool_calls=[
                    ToolCall(id="a", name="w", arguments='{"c":"P"}'),
                    ToolCall(id="b", name="w", arguments="{}"),
                ],
            ),
            Message(role="tool", tool_call_id="a", content="sunny"),
            Message(role="tool", tool_call_id="b", content="rain"),
            Message(role="user", content="thanks"),
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    body = ad.encode_request(req, slug="claude")
    assert body["max_tokens"] == 4096
    assert body["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "use tools"}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "tool_result", "text"]
    assert body["messages"][1]["content"][0]["input"] == {"c": "P"}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    for field in ("presence_penalty", "frequency_penalty", "seed"):
        with pytest.raises(BadRequest, match=f"{field} is not supported by anthropic"):
            ad.encode_request(
                GatewayRequest(model="m", messages=[Message(role="user", content="x")], **{field: 1}),
                slug="c",
            )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "messages": "hi"}, "messages: expected an array"),
        (
            {"model": "m", "messages": [{"role": "user", "content": 3}]},
            "messages[0].content: expected an array",
        ),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "n", "input": {}}]}
                ],
            },
            "messages[0].content[0].type",
        ),
        ({"model": "m", "messages": [], "temperature": "hot"}, "temperature: expected a number"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    """Invalid input raises BadRequest naming the offending field."""
    with pytest.raises(BadRequest) as info:
        ad.decode_request(body)
    assert info.value.code == "invalid_request" and field in info.value.message


# --- client-side encoders -----------------------------------------------------------------------------------

_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


def _client_events() -> list[Any]:
    return [
        StreamStart(id="up", model="gpt"),
        ThinkingDelta(text="hmm "),
        ThinkingDelta(text="ok", signature="sig"),
        TextDelta(text="Hello"),
        ToolCallDelta(index=0, id="call_1", name="get_weather", arguments=""),
        TextDelta(text=" world"),  # text after a call opens a new text block
        ToolCallDelta(index=1, id="call_2", name="lookup", arguments='{"a":'),
        ToolCallDelta(index=0, arguments='{"city": "Paris"}'),  # late fragment for an earlier call
        ToolCallDelta(index=1, arguments=" 1}"),
        StreamStop(stop_reason="tool_calls"),
        UsageEvent(usage=Usage(input_tokens=5, output_tokens=7, cached_input_tokens=3, reasoning_tokens=2)),
    ]


def test_stream_encoder_matches_sdk_and_unary() -> None:
    """Every emitted event validates against the SDK's event types and accumulates to the unary encoding."""
    enc = ad.StreamEncoder(model="claude-client", request_id="req1")
    data = b"".join(enc.events(e) for e in _client_events()) + enc.finish()
    events = parse_sse(data)
    names = [e.event for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    snapshot = None
    bufs: dict[int, bytes] = {}
    for ev in events:
        parsed = _ADAPTER.validate_python(json.loads(ev.data))
        assert parsed.type == ev.event
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    folded = reassemble(_client_events())
    from odock.model import ContentPart, GatewayResponse

    unary = GatewayResponse(
        provider="x",
        model="gpt",
        content="Hello world",
        id="req1",
        stop_reason="tool_calls",
        content_blocks=[
            ContentPart(type="thinking", text="hmm ok", signature="sig"),
            ContentPart(type="text", text="Hello"),
            ContentPart(type="text", text=" world"),
        ],
        tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in folded["tool_calls"]],
        usage=folded["usage"],
    )
    expected = SDKMessage.model_validate_json(ad.encode_response(unary, model="claude-client"))
    got = snapshot.model_dump(exclude={"parsed_output"}, exclude_none=True)
    want = expected.model_dump(exclude_none=True)
    # the stream places the late text block between the two tool_use blocks; compare blocks by kind
    assert sorted(map(json.dumps, got["content"])) == sorted(map(json.dumps, want["content"]))
    assert got["stop_reason"] == want["stop_reason"] == "tool_use"
    assert got["usage"] == want["usage"]


def test_stream_fail_is_an_error_event() -> None:
    """fail() emits an Anthropic error event, not message_stop."""
    from odock.errors import UpstreamError as UE

    enc = ad.StreamEncoder(model="m", request_id="r")
    data = enc.events(TextDelta(text="partial")) + enc.fail(UE("upstream cut the stream"))
    events = parse_sse(data)
    assert events[-1].event == "error" and "message_stop" not in [e.event for e in events]
    body = json.loads(events[-1].data)
    assert body["error"]["type"] == "api_error" and body["error"]["message"] == "upstream cut the stream"
    assert enc.finish() == b""
