"""OpenAI Responses dialect: request round trips, upstream decoding, client stream encoding."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from odock.dialects import openai_responses as rd
from odock.errors import BadRequest, UpstreamError
from odock.model import (
    GatewayRequest,
    GatewayResponse,
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

ARGS = '{"location":"Paris","unit":"c"}'
USAGE = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 100},
    "output_tokens": 120,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 2120,
}
UNARY = {
    "id": "resp_68af",
    "object": "response",
    "created_at": 1756000000,
    "status": "completed",
    "model": "gpt-5",
    "output": [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Need weather."}],
            "encrypted_content": "gAAAAB",
        },
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_abc",
            "name": "get_weather",
            "arguments": ARGS,
            "status": "completed",
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": USAGE,
}


def _stream() -> list[dict[str, Any]]:
    created = dict(UNARY, status="in_progress", output=[], usage=None)
    ev: list[dict[str, Any]] = [
        {"type": "response.created", "response": created},
        {"type": "response.in_progress", "response": created},
    ]
    ev += [
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Need ",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "weather.",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": UNARY["output"][0]},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": "Check",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": "ing.",
            "logprobs": [],
        },
        {
            "type": "response.output_item.added",
            "output_index": 2,
            "item": {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_abc",
                "name": "get_weather",
                "arguments": "",
                "status": "in_progress",
            },
        },
    ]
    ev += [
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "output_index": 2,
            "delta": ARGS[i : i + 4],
        }
        for i in range(0, len(ARGS), 4)
    ]
    ev.append({"type": "response.completed", "response": UNARY})
    for n, e in enumerate(ev):
        e["sequence_number"] = n
    return ev


def test_unary_decode_counts_cache_once() -> None:
    """Cache reads and writes leave input_tokens; reasoning stays inside output; calls keep exact argument text."""
    resp = rd.decode_response(UNARY)
    assert resp.usage == Usage(
        input_tokens=400,
        output_tokens=120,
        cached_input_tokens=1500,
        cache_write_tokens=100,
        reasoning_tokens=64,
    )
    assert resp.usage.total == USAGE["total_tokens"]
    assert resp.tool_calls == [ToolCall(id="call_abc", name="get_weather", arguments=ARGS)]
    assert resp.stop_reason == "tool_calls" and resp.content == "Checking."


def test_stream_reassembles_to_unary() -> None:
    """The upstream event stream reassembles to the unary answer (arguments split across many deltas)."""
    dec = rd.StreamDecoder()
    data = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in _stream())
    events = [x for ev in parse_sse(data) for x in dec.feed(ev)]
    assert reassemble(events) == unary_view(rd.decode_response(UNARY))


def test_stream_failure_raises() -> None:
    """response.failed upstream raises UpstreamError."""
    failed = dict(UNARY, status="failed", error={"code": "server_error", "message": "boom"})
    ev = parse_sse(
        f"event: response.failed\ndata: {json.dumps({'type': 'response.failed', 'response': failed})}\n\n".encode()
    )[0]
    with pytest.raises(UpstreamError, match="boom"):
        rd.StreamDecoder().feed(ev)


_text = st.text(min_size=1, max_size=10)
_schema = st.fixed_dictionaries(
    {
        "type": st.just("object"),
        "properties": st.dictionaries(
            st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.just({"type": "number"}), max_size=2
        ),
    }
)


@st.composite
def responses_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Generate Responses bodies: instructions, developer/user items, images, function calls and outputs, tools."""
    items: list[dict[str, Any]] = []
    if draw(st.booleans()):
        items.append({"role": "developer", "content": draw(_text)})
    for turn in range(draw(st.integers(1, 3))):
        content = draw(
            st.one_of(
                _text,
                st.lists(
                    st.one_of(
                        st.builds(lambda t: {"type": "input_text", "text": t}, _text),
                        st.builds(
                            lambda u: {
                                "type": "input_image",
                                "image_url": "https://x.test/" + u,
                                "detail": "auto",
                            },
                            st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                        ),
                    ),
                    min_size=1,
                    max_size=3,
                ),
            )
        )
        items.append({"role": "user", "content": content})
        if draw(st.booleans()):
            items.append(
                {
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": draw(_text)}],
                    "encrypted_content": draw(_text),
                }
            )
        items.append({"role": "assistant", "content": draw(_text)})
        if draw(st.booleans()):
            items.append(
                {
                    "type": "function_call",
                    "call_id": f"call_{turn}",
                    "name": "f",
                    "arguments": json.dumps({"a": draw(_text)}),
                }
            )
            items.append({"type": "function_call_output", "call_id": f"call_{turn}", "output": draw(_text)})
    body: dict[str, Any] = {"model": "gpt-x"}
    if draw(st.booleans()):
        body["instructions"] = draw(_text)
    body["input"] = items
    for key, strat in (
        ("temperature", st.floats(0, 2)),
        ("top_p", st.floats(0, 1)),
        ("max_output_tokens", st.integers(1, 9999)),
        (
            "metadata",
            st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), _text, max_size=2, min_size=1),
        ),
    ):
        if draw(st.booleans()):
            body[key] = draw(strat)
    if draw(st.booleans()):
        body["tools"] = [
            {
                "type": "function",
                "name": "f",
                "description": "d",
                "parameters": draw(_schema),
                "strict": draw(st.booleans()),
            }
        ]
        body["tool_choice"] = draw(
            st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}])
        )
    if draw(st.booleans()):
        body["text"] = {
            "format": draw(
                st.one_of(
                    st.just({"type": "json_object"}),
                    st.builds(
                        lambda s: {"type": "json_schema", "name": "out", "schema": s, "strict": True}, _schema
                    ),
                )
            )
        }
    if draw(st.booleans()):
        body["reasoning"] = {"effort": draw(st.sampled_from(["low", "medium", "high"]))}
    if draw(st.booleans()):
        body["stream"] = True
    return body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses_requests())
def test_request_round_trip(body: dict[str, Any]) -> None:
    """Decoding a Responses body and encoding it back yields the same body."""
    req = rd.decode_request(body)
    assert rd.encode_request(req, slug="gpt-x") == body


def test_refuses_fields_responses_cannot_carry() -> None:
    """stop, top_k, penalties and seed are refused for a Responses upstream, naming the field."""
    for field, value in (
        ("stop", ["x"]),
        ("top_k", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("seed", 7),
    ):
        with pytest.raises(BadRequest, match=f"{field} is not supported"):
            rd.encode_request(
                GatewayRequest(model="m", messages=[Message(role="user", content="x")], **{field: value}),
                slug="m",
            )


_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def _client_events() -> list[Any]:
    return [
        StreamStart(id="u", model="m"),
        ThinkingDelta(text="plan", signature="enc"),
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        ToolCallDelta(index=0, id="call_1", name="get_weather", arguments='{"a"'),
        ToolCallDelta(index=0, arguments=": 1}"),
        ToolCallDelta(index=1, id="call_2", name="lookup", arguments="{}"),
        StreamStop(stop_reason="tool_calls"),
        UsageEvent(usage=Usage(input_tokens=3, cached_input_tokens=2, output_tokens=8, reasoning_tokens=4)),
    ]


def test_stream_encoder_validates_and_completes_to_unary() -> None:
    """Every event validates as ResponseStreamEvent with increasing sequence numbers; response.completed equals the unary Response."""
    enc = rd.StreamEncoder(model="gpt-client", request_id="resp_r1")
    data = b"".join(enc.events(e) for e in _client_events()) + enc.finish()
    events = [_ADAPTER.validate_python(json.loads(e.data)) for e in parse_sse(data)]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    kinds = {e.type for e in events}
    assert {
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    } <= kinds
    final = events[-1].response
    folded = reassemble(_client_events())
    from odock.model import ContentPart

    unary = GatewayResponse(
        provider="p",
        model="m",
        id="resp_r1",
        content="Hello",
        stop_reason="tool_calls",
        created=enc.created,
        content_blocks=[
            ContentPart(type="thinking", text="plan", signature="enc"),
            ContentPart(type="text", text="Hello"),
        ],
        tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in folded["tool_calls"]],
        usage=folded["usage"],
    )
    want = Response.model_validate_json(rd.encode_response(unary, model="gpt-client"))

    def strip(r):
        return [{k: v for k, v in o.model_dump().items() if k != "id"} for o in r.output]

    assert strip(final) == strip(want)
    assert final.usage == want.usage and final.output_text == want.output_text == "Hello"


def test_stream_fail_emits_error_and_failed() -> None:
    """fail() emits an error event and response.failed, never response.completed."""
    enc = rd.StreamEncoder(model="m", request_id="r")
    events = [
        _ADAPTER.validate_python(json.loads(e.data))
        for e in parse_sse(enc.events(TextDelta(text="x")) + enc.fail(UpstreamError("cut")))
    ]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.message == "cut"
