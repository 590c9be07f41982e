"""The dialect and provider-type registries: every entry has the one shape, and a basic exchange round-trips
through each dialect's two sides reached only through the table."""

from __future__ import annotations

import json

import pytest

from odock.dialects.contract import ClientSide, StreamDecoder, StreamEncoder, StreamOptions, UpstreamSide
from odock.dialects.registry import DIALECTS, dialect
from odock.errors import BadRequest, UpstreamError
from odock.model import (
    ContentPart,
    GatewayRequest,
    GatewayResponse,
    Message,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)
from odock.providers.base import ProviderAdapter
from odock.providers.registry import FAMILIES, PROVIDER_TYPES, PROVIDERS, adapter_for, dialect_for, family_of

from .helpers import parse_sse, reassemble, unary_view

NAMES = sorted(DIALECTS)
REQUEST = GatewayRequest(
    model="m",
    messages=[
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather in Paris?"),
        Message(
            role="assistant",
            content="Checking.",
            tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
        ),
        Message(role="tool", tool_call_id="call_1", content='{"temp": 21}'),
        Message(role="user", content=[ContentPart(type="text", text="And now?")]),
    ],
    max_tokens=64,
)
RESPONSE = GatewayResponse(
    provider="x",
    model="m",
    content="Sunny.",
    stop_reason="tool_calls",
    id="resp_1",
    content_blocks=[ContentPart(type="text", text="Sunny.")],
    tool_calls=[ToolCall(id="call_9", name="get_weather", arguments='{"city": "Lyon"}')],
    usage=Usage(input_tokens=12, output_tokens=7),
)
STREAM: list[StreamEvent] = [
    StreamStart(id="s1", model="m"),
    TextDelta(text="Sun"),
    TextDelta(text="ny."),
    ToolCallDelta(index=0, id="call_9", name="get_weather", arguments='{"city": '),
    ToolCallDelta(index=0, arguments='"Lyon"}'),
    UsageEvent(usage=Usage(input_tokens=12, output_tokens=7)),
    StreamStop(stop_reason="tool_calls"),
]


@pytest.mark.parametrize("name", NAMES)
def test_every_dialect_has_both_sides_of_the_contract(name: str) -> None:
    """Each registered dialect is named by its key and gives a client side, an upstream side, and stream codecs
    with the contract's members (the encoder's `event`/`finish`/`fail`, the decoder's `feed`/`done`/`ended`)."""
    entry = dialect(name)
    assert entry.name == name
    assert isinstance(entry.client, ClientSide) and isinstance(entry.upstream, UpstreamSide)
    encoder = entry.client.stream_encoder(model="m", request_id="r1", options=StreamOptions())
    assert isinstance(encoder, StreamEncoder)
    decoder = entry.upstream.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    assert (decoder.done, decoder.ended) == (False, False)


@pytest.mark.parametrize("name", NAMES)
def test_request_round_trips_through_the_registered_sides(name: str) -> None:
    """A request encoded by a dialect's upstream side decodes on its client side with the same turns and calls."""
    entry = dialect(name)
    body = entry.upstream.encode_request(REQUEST, slug="slug-1")
    back = entry.client.decode_request(json.loads(json.dumps(body)), path_model="slug-1")

    def turns(r):
        return [(m.role, m.text()) for m in r.messages if m.role not in ("system", "developer", "tool")]

    assert turns(back) == turns(REQUEST)
    assert [m.text() for m in back.messages if m.role in ("system", "developer")] == ["Be brief."]
    assert [(c.name, json.loads(c.arguments)) for m in back.messages for c in m.tool_calls or []] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert back.max_tokens == 64


@pytest.mark.parametrize("name", NAMES)
def test_response_round_trips_through_the_registered_sides(name: str) -> None:
    """A unary answer encoded by a dialect's client side decodes on its upstream side with the same content,
    tool call, stop reason and usage."""
    entry = dialect(name)
    raw = entry.client.encode_response(RESPONSE, model="m")
    back = entry.upstream.decode_response(json.loads(raw))
    view = unary_view(back)
    assert (view["content"], view["stop"]) == ("Sunny.", "tool_calls")
    assert [(n, json.loads(a)) for _, n, a in view["tool_calls"]] == [("get_weather", {"city": "Lyon"})]
    assert (back.usage.input_tokens, back.usage.output_tokens) == (12, 7)
    assert entry.upstream.usage_from(back.raw_usage or {}) == back.usage


@pytest.mark.parametrize("name", NAMES)
def test_stream_round_trips_through_the_registered_codecs(name: str) -> None:
    """A stream written by a dialect's encoder and read back by its decoder gives the same text, call, stop and
    usage, and the decoder sees the stream's terminal event (`done`)."""
    entry = dialect(name)
    encoder = entry.client.stream_encoder(
        model="m", request_id="r1", options=StreamOptions(include_usage=True)
    )
    wire = b"".join(encoder.event(ev) for ev in STREAM) + encoder.finish()
    decoder = entry.upstream.stream_decoder()
    events = [out for ev in parse_sse(wire) for out in decoder.feed(ev)]
    view = reassemble(events)
    assert (view["content"], view["stop"]) == ("Sunny.", "tool_calls")
    assert [(n, json.loads(a)) for _, n, a in view["tool_calls"]] == [("get_weather", {"city": "Lyon"})]
    assert (view["usage"].input_tokens, view["usage"].output_tokens) == (12, 7)
    assert decoder.done


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_stream_is_an_upstream_error_to_the_decoder(name: str) -> None:
    """The error a dialect's encoder ends a broken stream with is read as an upstream error by its decoder, and
    the unary error body names the code and the message."""
    entry = dialect(name)
    err = UpstreamError("upstream went away", "upstream_unreachable")
    body = json.loads(entry.client.error_body(err))
    assert "upstream went away" in json.dumps(body) and "upstream_unreachable" in json.dumps(body)
    encoder = entry.client.stream_encoder(model="m", request_id="r1", options=StreamOptions())
    wire = encoder.event(TextDelta(text="Sun")) + encoder.fail(err)
    decoder = entry.upstream.stream_decoder()
    with pytest.raises(UpstreamError):
        for ev in parse_sse(wire):
            decoder.feed(ev)
    assert not decoder.done


def test_vllm_chat_is_openai_chat_with_vllm_spellings() -> None:
    """vllm_chat shares the OpenAI chat client side; its upstream side sends `max_tokens` and accepts `top_k`,
    which the OpenAI upstream side refuses, and names vllm as the answering provider."""
    openai, vllm = dialect("openai_chat"), dialect("vllm_chat")
    assert vllm.client is openai.client
    request = GatewayRequest(model="m", messages=[Message(role="user", content="Hi")], max_tokens=5, top_k=3)
    body = vllm.upstream.encode_request(request, slug="llama")
    assert (body["max_tokens"], body["top_k"]) == (5, 3)
    with pytest.raises(BadRequest, match="top_k"):
        openai.upstream.encode_request(request, slug="gpt")
    request.top_k = None
    assert openai.upstream.encode_request(request, slug="gpt")["max_completion_tokens"] == 5
    answer = {
        "id": "c1",
        "model": "llama",
        "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
    }
    assert vllm.upstream.decode_response(answer).provider == "vllm"
    assert openai.upstream.decode_response(answer).provider == "openai"


def test_gemini_stream_options_pick_sse_or_json_array() -> None:
    """The Gemini client side streams SSE unless the options ask for its JSON array; OpenAI chat adds the usage
    chunk only when asked."""
    gemini = dialect("gemini").client
    sse = gemini.stream_encoder(model="m", request_id="r", options=StreamOptions())
    array = gemini.stream_encoder(model="m", request_id="r", options=StreamOptions(json_array=True))
    assert sse.finish().startswith(b"data: ")
    assert json.loads(array.finish())[0]["candidates"][0]["finishReason"] == "STOP"
    chat = dialect("openai_chat").client
    plain = chat.stream_encoder(model="m", request_id="r", options=StreamOptions()).finish()
    counted = chat.stream_encoder(
        model="m", request_id="r", options=StreamOptions(include_usage=True)
    ).finish()
    assert b'"usage"' not in plain and b'"usage"' in counted


# --- provider types ------------------------------------------------------------------------------------------

# reference §4.1: OPENAI, ANTHROPIC, GOOGLE, AZURE_OPENAI, VLLM, CUSTOM (+ gemini, this gateway's own name)
EXPECTED = {
    "openai": "openai",
    "azure_openai": "openai",
    "custom": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "google": "gemini",
    "vllm": "vllm",
}


def test_every_provider_type_maps_to_an_adapter_a_family_and_a_registered_dialect() -> None:
    """Each provider type of the table has an adapter, one of the route families, and a dialect of the dialect
    table; the families are the runtime provider names of reference §4.6."""
    assert {name: family_of(name) for name in PROVIDER_TYPES} == EXPECTED
    assert {"openai", "anthropic", "gemini", "vllm"} == FAMILIES
    for name, kind in PROVIDERS.items():
        assert isinstance(adapter_for(name), ProviderAdapter)
        assert dialect_for(name) is DIALECTS[dialect_for(name).name] is kind.dialect
    assert dialect_for("azure_openai").name == dialect_for("custom").name == "openai_chat"
    assert dialect_for("google").name == "gemini" and dialect_for("vllm").name == "vllm_chat"


@pytest.mark.parametrize("lookup", [adapter_for, family_of, dialect_for])
def test_an_unknown_provider_type_is_provider_type_unsupported(lookup: object) -> None:
    """Looking up a type outside the table is 400 provider_type_unsupported (never a silent default)."""
    with pytest.raises(BadRequest) as info:
        lookup("mistral")  # type: ignore[operator]
    assert (info.value.status, info.value.code) == (400, "provider_type_unsupported")
