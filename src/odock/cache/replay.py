"""A cached answer is a list of normalized stream events (`odock.model` StreamEvent): a stream is kept as the
events it decoded into, a unary answer is turned into the same events. Either replays as a stream (the events,
through the client dialect's stream encoder) or as a unary answer (the events folded back into one response)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from odock.model import (
    ContentPart,
    GatewayResponse,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)


class NotReplayable(ValueError):
    """An answer the normalized events cannot carry whole (several choices, images, redacted thinking): never
    stored, since its replay would differ from the original."""


def unreplayable_request(body: Mapping[str, Any], choices: int) -> str | None:
    """Why a request's answer could not be replayed whole, known before it is sent (None: it can be): several
    choices (`n`, `best_of`, `candidateCount`: the normalized answer is one choice), or an output other than text
    (OpenAI `modalities`/`audio`, Gemini `responseModalities`: images and audio are not normalized events)."""
    if choices > 1:
        return "several_choices"
    if not (
        "modalities" in body or "audio" in body or "generationConfig" in body or "generation_config" in body
    ):
        return None  # the common case, on every cached call: four lookups
    wanted: list[Any] = []
    for holder in (body, body.get("generationConfig"), body.get("generation_config")):
        if isinstance(holder, Mapping):
            for name in ("modalities", "responseModalities", "response_modalities"):
                value = holder.get(name)
                wanted += value if isinstance(value, list) else [] if value is None else [value]
    if body.get("audio") is not None or any(str(m).lower() != "text" for m in wanted):
        return "non_text_output"
    return None


def response_events(resp: GatewayResponse) -> list[StreamEvent]:
    """A unary answer as the events of the equivalent stream."""
    events: list[StreamEvent] = [StreamStart(id=resp.id or "", model=resp.model, created=resp.created or 0)]
    if resp.content_blocks is not None:
        for part in resp.content_blocks:
            if part.type in ("text", "refusal"):
                events.append(TextDelta(text=part.text or ""))
            elif part.type == "thinking":
                events.append(ThinkingDelta(text=part.text or ""))
                if part.signature:
                    events.append(ThinkingDelta(signature=part.signature))
            else:
                raise NotReplayable(f"a {part.type} content part")
    elif resp.content:
        events.append(TextDelta(text=resp.content))
    for index, call in enumerate(resp.tool_calls or ()):
        events.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments))
    events.append(StreamStop(stop_reason=resp.stop_reason or "stop"))
    events.append(UsageEvent(usage=resp.usage, raw=resp.raw_usage))
    return events


def check_stream(events: Sequence[StreamEvent]) -> None:
    """Refuse a stream its fold would not give back whole (several choices), or one that never stopped."""
    if not any(isinstance(ev, StreamStop) for ev in events):
        raise NotReplayable("a stream without its stop event")
    if any(isinstance(ev, TextDelta) and ev.index != 0 for ev in events):
        raise NotReplayable("several choices")


def fold_events(events: Sequence[StreamEvent], provider: str) -> GatewayResponse:
    """The unary answer a stream of events adds up to."""
    resp = GatewayResponse(provider=provider, model="")
    text: list[str] = []
    thinking: list[str] = []
    signature: str | None = None
    calls: dict[int, ToolCall] = {}
    for ev in events:
        if isinstance(ev, TextDelta):
            text.append(ev.text)
        elif isinstance(ev, ThinkingDelta):
            thinking.append(ev.text)
            signature = ev.signature or signature
        elif isinstance(ev, ToolCallDelta):
            call = calls.setdefault(ev.index, ToolCall(id="", name=""))
            call.id = ev.id or call.id
            call.name = ev.name or call.name
            call.arguments += ev.arguments
        elif isinstance(ev, StreamStart):
            resp.id, resp.model, resp.created = ev.id or None, ev.model, ev.created or None
        elif isinstance(ev, StreamStop):
            resp.stop_reason = ev.stop_reason
        elif isinstance(ev, UsageEvent):
            resp.usage, resp.raw_usage = ev.usage, ev.raw
    resp.content = "".join(text)
    if thinking or signature:
        resp.content_blocks = [ContentPart(type="thinking", text="".join(thinking), signature=signature)]
        if resp.content:
            resp.content_blocks.append(ContentPart(type="text", text=resp.content))
    if calls:
        resp.tool_calls = [calls[i] for i in sorted(calls)]
    return resp


def answer_usage(events: Sequence[StreamEvent]) -> Usage | None:
    for ev in reversed(events):
        if isinstance(ev, UsageEvent):
            return ev.usage
    return None
