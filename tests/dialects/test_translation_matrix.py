"""Translation matrix: normalized conversations into each upstream dialect, and upstream streams into each client dialect."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent

from odock.dialects import anthropic as ad
from odock.dialects import gemini as gd
from odock.dialects import openai_responses as rd
from odock.model import ContentPart, GatewayRequest, Message, ToolCall

from . import test_anthropic_dialect as a_fix
from . import test_gemini_dialect as g_fix
from . import test_openai_responses_dialect as r_fix
from .helpers import parse_sse, reassemble, unary_view

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
CONVERSATIONS: dict[str, GatewayRequest] = {
    "plain": GatewayRequest(
        model="m", messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    ),
    "tool_round": GatewayRequest(
        model="m",
        messages=[
            Message(role="user", content="Weather in Paris?"),
            Message(
                role="assistant",
                content="Checking.",
                tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
            ),
            Message(role="tool", tool_call_id="call_1", content='{"temp": 21}'),
        ],
        tools=[],
    ),
    "image": GatewayRequest(
        model="m",
        messages=[
            Message(
                role="user",
                content=[
                    ContentPart(type="text", text="What is this?"),
                    ContentPart(type="image", url="https://x.test/cat.png"),
                    ContentPart(type="image", data="iVBORw0KGgo=", media_type="image/png"),
                ],
            )
        ],
    ),
    "json_schema": GatewayRequest(
        model="m",
        messages=[Message(role="user", content="Give JSON")],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "out",
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
            },
        },
    ),
}
DIALECTS: dict[str, ModuleType] = {"anthropic": ad, "gemini": gd, "openai_responses": rd}


@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_encode_then_decode_as_client_keeps_the_conversation(conv: str, dialect: str) -> None:
    """Encoding a conversation upstream and decoding that body as a client keeps texts, images, calls and format."""
    from odock.model import Tool

    req = CONVERSATIONS[conv]
    req.tools = [Tool(**t) for t in TOOLS] if conv == "tool_round" else None  # type: ignore[arg-type]
    mod = DIALECTS[dialect]
    body = mod.encode_request(req, slug="slug-1")
    back = mod.decode_request(body, path_model="slug-1")

    def texts(r):
        return [m.text() for m in r.messages if m.role != "system"]

    assert texts(back) == texts(req)
    assert [(c.name, json.loads(c.arguments)) for m in back.messages for c in m.tool_calls or []] == [
        (c.name, json.loads(c.arguments)) for m in req.messages for c in m.tool_calls or []
    ]

    def images(r):
        return [
            (p.url, p.data)
            for m in r.messages
            if isinstance(m.content, list)
            for p in m.content
            if p.type == "image"
        ]

    assert images(back) == images(req)
    if req.response_format:
        assert (
            back.response_format
            and back.response_format["json_schema"]["schema"] == req.response_format["json_schema"]["schema"]
        )


UPSTREAMS = {
    "anthropic": (
        ad,
        a_fix.UNARY,
        [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in a_fix._stream_fixture()],
    ),
    "gemini": (gd, g_fix.UNARY, [b"data: " + json.dumps(c).encode() + b"\n\n" for c in g_fix.STREAM]),
    "openai_responses": (
        rd,
        r_fix.UNARY,
        [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in r_fix._stream()],
    ),
}
_ANTHROPIC_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


@pytest.mark.parametrize("upstream", sorted(UPSTREAMS))
def test_upstream_stream_translated_to_anthropic_client_keeps_tool_calls(upstream: str) -> None:
    """Any upstream stream re-encoded for an Anthropic client accumulates (SDK) to the same tool names and arguments."""
    mod, unary_body, chunks = UPSTREAMS[upstream]
    dec = mod.StreamDecoder()
    events = [e for chunk in chunks for ev in parse_sse(chunk) for e in dec.feed(ev)]
    unary = mod.decode_response(unary_body)
    assert reassemble(events) == unary_view(unary)
    enc = ad.StreamEncoder(model="client-model", request_id="r")
    out = b"".join(enc.events(e) for e in events) + enc.finish()
    snap = None
    bufs: dict[int, bytes] = {}
    for ev in parse_sse(out):
        snap = accumulate_event(
            event=_ANTHROPIC_EVENTS.validate_python(json.loads(ev.data)),
            current_snapshot=snap,
            json_bufs=bufs,
        )
    assert snap is not None
    tool_uses = [(b.name, b.input) for b in snap.content if b.type == "tool_use"]
    assert tool_uses == [(c.name, json.loads(c.arguments)) for c in unary.tool_calls or []]
    assert snap.stop_reason == "tool_use"
    assert snap.usage.cache_read_input_tokens == unary.usage.cached_input_tokens
    assert (
        snap.usage.input_tokens == unary.usage.input_tokens
        and snap.usage.output_tokens == unary.usage.output_tokens
    )
