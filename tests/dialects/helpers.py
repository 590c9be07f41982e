"""Shared test helpers: reassemble normalized stream events and parse SSE bytes."""

from __future__ import annotations

from typing import Any

from odock.dialects.sse import SSEEvent, SSEParser
from odock.model import (
    GatewayResponse,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)


def parse_sse(data: bytes) -> list[SSEEvent]:
    """Split SSE bytes into events."""
    parser = SSEParser()
    return [*parser.feed(data), *parser.flush()]


def reassemble(events: list[StreamEvent]) -> dict[str, Any]:
    """Fold normalized stream events into the comparable parts of an answer."""
    text, thinking, sigs = "", "", []
    calls: dict[int, list[str]] = {}
    stop: str | None = None
    usage = Usage()
    started = 0
    for ev in events:
        if isinstance(ev, StreamStart):
            started += 1
        elif isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, ThinkingDelta):
            thinking += ev.text
            if ev.signature:
                sigs.append(ev.signature)
        elif isinstance(ev, ToolCallDelta):
            if ev.index not in calls:
                assert ev.name, "the first delta of a tool call names it"
                calls[ev.index] = [ev.id or "", ev.name, ""]
            calls[ev.index][2] += ev.arguments
        elif isinstance(ev, UsageEvent):
            usage = ev.usage
        elif isinstance(ev, StreamStop):
            stop = ev.stop_reason
    assert started == 1
    return {
        "content": text,
        "thinking": thinking,
        "signatures": sigs,
        "tool_calls": [tuple(calls[k]) for k in sorted(calls)],
        "stop": stop,
        "usage": usage,
    }


def unary_view(resp: GatewayResponse) -> dict[str, Any]:
    """The same comparable parts, from a unary answer."""
    blocks = resp.content_blocks or []
    return {
        "content": resp.content,
        "thinking": "".join(b.text or "" for b in blocks if b.type == "thinking"),
        "signatures": [b.signature for b in blocks if b.type == "thinking" and b.signature],
        "tool_calls": [(c.id, c.name, c.arguments) for c in resp.tool_calls or []],
        "stop": resp.stop_reason,
        "usage": resp.usage,
    }
