"""OpenAI chat dialect: request round trips, response/usage decoding, and the unified stream encoder."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from odock.dialects import anthropic, gemini
from odock.dialects import openai_chat as oc
from odock.dialects.sse import SSEEvent
from odock.errors import BadRequest, UpstreamError
from odock.model import StreamStart, StreamStop, TextDelta, ToolCallDelta, Usage, UsageEvent
from tests.fuzz.strategies import chat_body, one_field_wrong

_text = st.text(min_size=1, max_size=12)
_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(
        lambda u: {"type": "image_url", "image_url": {"url": f"https://img.test/{u}.png"}},
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    ),
    st.builds(
        lambda d: {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{d}", "detail": "low"}},
        st.from_regex(r"[A-Za-z0-9+/]{4,12}", fullmatch=True),
    ),
)
_name = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """OpenAI chat bodies using every field the normalized model carries."""
    messages: list[dict[str, Any]] = [
        {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_text)}
    ]
    for turn in range(draw(st.integers(1, 3))):
        messages.append(
            {"role": "user", "content": draw(st.one_of(_text, st.lists(_part, min_size=1, max_size=3)))}
        )
        if draw(st.booleans()):
            call_id = f"call_{turn}"
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": draw(_name),
                                "arguments": msgspec.json.encode({"a": draw(_text)}).decode(),
                            },
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(_text)})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    optional = {
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 9000),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(_text, min_size=1, max_size=3),
        "metadata": st.dictionaries(_name, _text, max_size=2),
        "response_format": st.sampled_from(
            [
                {"type": "json_object"},
                {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                    },
                },
            ]
        ),
        "tools": st.lists(
            st.builds(
                lambda n: {
                    "type": "function",
                    "function": {
                        "name": n,
                        "description": "d",
                        "parameters": {"type": "object", "properties": {}},
                    },
                },
                _name,
            ),
            min_size=1,
            max_size=2,
            unique_by=lambda t: t["function"]["name"],
        ),
    }
    for field, strategy in optional.items():
        if draw(st.booleans()):
            body[field] = draw(strategy)
    if "tools" in body and draw(st.booleans()):
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    "auto",
                    "none",
                    "required",
                    {"type": "function", "function": {"name": body["tools"][0]["function"]["name"]}},
                ]
            )
        )
    if draw(st.booleans()):
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@given(chat_requests())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_request_round_trip_keeps_every_field(body: dict[str, Any]) -> None:
    """Decoding an OpenAI chat body and encoding it back for an OpenAI upstream yields the same body."""
    request = oc.decode_request(body)
    assert oc.encode_request(request, slug="m", vllm=True) == body
    # to OpenAI itself the output cap travels as max_completion_tokens (max_tokens is deprecated there)
    expected = dict(body)
    if "max_tokens" in expected:
        expected["max_completion_tokens"] = expected.pop("max_tokens")
    assert oc.encode_request(request, slug="m") == expected


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "content part",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools[0]",
        ),
        # values of a type the code once assumed (a TypeError or AttributeError, so a 500, before)
        ({"model": "m", "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "function", "function": "get_time"},
            },
            "tool_choice",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": 5}, "tool_choice"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": {"x": 1}},
            "reasoning_effort",
        ),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": [1]}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name"),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": [1], "function": {"name": "f", "arguments": "{}"}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].id",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": {}}}
                        ],
                    }
                ],
            },
            "detail",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
            },
            "parameters",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}],
            },
            "strict",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "description": 5}}],
            },
            "description",
        ),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], needle: str) -> None:
    """Each invalid field gives 400 invalid_request naming the field."""
    with pytest.raises(BadRequest) as info:
        oc.decode_request(body)
    assert info.value.code == "invalid_request" and needle in info.value.message


@given(one_field_wrong(chat_body(["m"], unified=True)))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None, derandomize=True)
def test_any_value_of_any_type_is_a_400_or_translates(body: dict[str, Any]) -> None:
    """A unified chat body with any one value replaced by any JSON value either decodes and translates to every
    provider, or is refused with a 400 naming a field: never another exception (a 500 at the edge)."""
    try:
        request = oc.decode_request(body)
    except BadRequest as exc:
        assert exc.code == "invalid_request" and ":" in exc.message
        return
    for encode in (
        lambda: oc.encode_request(request, slug="m"),
        lambda: oc.encode_request(request, slug="m", vllm=True),
        lambda: anthropic.encode_request(request, slug="m"),
        lambda: gemini.encode_request(request, slug="m"),
    ):
        try:
            msgspec.json.encode(encode())
        except BadRequest as exc:
            assert exc.code == "invalid_request"


def test_top_k_refused_for_openai_but_kept_for_vllm() -> None:
    """top_k cannot be expressed to OpenAI (refused), while vLLM accepts it."""
    req = oc.decode_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 5})
    with pytest.raises(BadRequest, match="top_k"):
        oc.encode_request(req, slug="m")
    assert oc.encode_request(req, slug="m", vllm=True)["top_k"] == 5


def test_usage_classes_counted_once() -> None:
    """OpenAI's prompt_tokens includes cached tokens; normalized input excludes them, output keeps reasoning."""
    usage = oc.usage_from(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 10},
        }
    )
    assert usage == Usage(input_tokens=70, output_tokens=40, cached_input_tokens=30, reasoning_tokens=10)
    assert oc.usage_to(usage)["prompt_tokens"] == 100


def test_response_encode_is_valid_for_the_sdk() -> None:
    """A decoded completion re-encodes into a body the openai SDK's ChatCompletion type accepts, tools intact."""
    upstream = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    resp = oc.decode_response(upstream)
    parsed = ChatCompletion.model_validate_json(oc.encode_response(resp, model="my-model"))
    call = parsed.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == '{"city": "Paris"}' and parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.model == "my-model" and parsed.usage is not None and parsed.usage.total_tokens == 12


def test_stream_decode_then_encode_reassembles() -> None:
    """Upstream chunks decode to events that the unified encoder turns into SDK-valid chunks with the same
    text, tool arguments (split across deltas), stop reason and final usage."""
    upstream = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "g",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}
            ],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "g",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "content": "lo",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a"'},
                            }
                        ],
                    },
                    "finish_reason": None,
                }
            ],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "g",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                    "finish_reason": "tool_calls",
                }
            ],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "g",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
    ]
    decoder = oc.StreamDecoder()
    events = [
        ev for chunk in upstream for ev in decoder.feed(SSEEvent(None, msgspec.json.encode(chunk).decode()))
    ]
    assert decoder.feed(SSEEvent(None, "[DONE]")) == [] and decoder.done
    assert isinstance(events[0], StreamStart)
    assert [e.name for e in events if isinstance(e, ToolCallDelta) and e.name] == ["f"]
    encoder = oc.StreamEncoder(model="mine", request_id="r", include_usage=True)
    wire = b"".join(encoder.event(e) for e in events) + encoder.finish()
    data = [line[6:] for line in wire.decode().split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function
    )
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == "Hello" and args == '{"a": 1}' and finish == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert any(isinstance(e, TextDelta) for e in events) and any(isinstance(e, StreamStop) for e in events)
    assert any(isinstance(e, UsageEvent) for e in events)


def test_in_stream_error_raises() -> None:
    """An upstream error event mid-stream becomes an UpstreamError (never a clean end)."""
    with pytest.raises(UpstreamError):
        oc.StreamDecoder().feed(SSEEvent(None, '{"error": {"message": "overloaded"}}'))
