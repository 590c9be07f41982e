"""Same-dialect fast path for OpenAI-shaped upstreams: forward the upstream bytes as they arrive, peeking at
usage without a full decode (DESIGN principle 1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from odock.dialects import openai_chat
from odock.errors import UpstreamError
from odock.pipeline.call import Call, FinalChunk
from odock.transport.base import UpstreamResponse


def want_stream_usage(body: dict[str, Any]) -> bool:
    """Whether the client itself asked for the final usage chunk (either documented placement)."""
    options = body.get("stream_options")
    return bool((isinstance(options, dict) and options.get("include_usage")) or body.get("include_usage"))


def ask_for_stream_usage(body: dict[str, Any]) -> None:
    """Make an OpenAI-family upstream report usage at the end of a stream, so every stream is billed."""
    options = body.get("stream_options")
    body["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )
    body.pop("include_usage", None)


# an event carrying one of these needs a look (usage to capture or hide, an error, the end marker); CRs mean
# CRLF framing, which the slow path normalizes
_INSPECT = (b'"usage":{', b'"usage": {', b'"error"', b"[DONE]", b"\r")


def _json_object(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one `data:` event, or None when the upstream sent something else (relayed as it is:
    a malformed event must not end the client's stream)."""
    try:
        payload = msgspec.json.decode(event[event.index(b"{") :])
    except (msgspec.DecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


async def openai_sse(call: Call, resp: UpstreamResponse, *, show_usage_chunk: bool) -> AsyncIterator[bytes]:  # noqa: C901 - older than the complexity rule; to split
    """Yield the upstream's SSE events unchanged, capturing usage; drop the usage-only chunk the client did not
    ask for; raise when the stream ends without `[DONE]` (a cut must not look like a clean end)."""
    ctx = call.ctx
    buffer = b""
    done = False
    async for chunk in resp.iter_chunks():
        if buffer:
            chunk, buffer = buffer + chunk, b""
        if chunk.endswith(b"\n\n") and not any(marker in chunk for marker in _INSPECT):
            yield chunk  # whole events with nothing to look at: pass the bytes through untouched
            continue
        buffer = chunk
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            continue
        ready, buffer = buffer[: end + 2], buffer[end + 2 :]
        out: list[bytes] = []
        for event in ready.split(b"\n\n"):
            if not event:
                continue
            if event.startswith((b"data: [DONE]", b"data:[DONE]")):
                done = True
            elif b'"usage":{' in event or b'"usage": {' in event:
                payload = _json_object(event)
                if payload is not None:
                    ctx.raw_usage = payload.get("usage")
                    ctx.usage = openai_chat.usage_from(ctx.raw_usage)
                    if not show_usage_chunk and not payload.get("choices"):
                        continue
            elif b'"error"' in event and event.startswith(b"data:"):
                payload = _json_object(event)
                if payload is not None and "error" in payload:
                    if out:
                        yield b"".join(out)
                    err = payload["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError(f"upstream error mid-stream: {message}", kind="5xx")
            out.append(event + b"\n\n")
        if out:
            yield FinalChunk(b"".join(out)) if done else b"".join(out)
    if not done:
        raise UpstreamError("upstream stream ended before [DONE]", kind="protocol")
