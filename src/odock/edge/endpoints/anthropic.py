"""`POST /v1/messages` (Anthropic Messages, pinned to the anthropic family): the same-dialect fast path.

The client's JSON is forwarded with only `model` rewritten; its `anthropic-version` and `anthropic-beta` headers go
upstream (no other client header does). Streams pass through as they arrive while usage is peeked from
`message_start` (input) and `message_delta` (output, cumulative); a stream without `message_stop` is a cut and
ends with an explicit Anthropic `event: error`. Errors use Anthropic's shape so the SDK raises the matching class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from odock.dialects import anthropic
from odock.dialects.openai_chat import set_max_tokens
from odock.dialects.registry import dialect
from odock.edge.endpoints.openai_media import (
    FailFn,
    ForwardEndpoint,
    StreamRelay,
    sse_data,
    sse_frames_passing,
    sse_name,
)
from odock.errors import BadRequest, UpstreamError
from odock.pipeline.call import Call, FinalChunk
from odock.transport.base import UpstreamResponse

FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


def check_messages_body(body: dict[str, Any]) -> None:
    """The few fields the gateway relies on; everything else is the upstream's to validate."""
    if not isinstance(body.get("messages"), list):
        raise BadRequest("messages: expected an array", "invalid_request")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: expected a positive integer", "invalid_request")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("stream: expected a boolean", "invalid_request")


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """The request's output cap (for token reservations)."""
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# events the relay reads (usage on message_start/message_delta, the end, errors); chunks without them pass as is
_LOOK_AT = (b"message_", b"error")


async def anthropic_sse(call: Call, resp: UpstreamResponse) -> AsyncIterator[bytes]:
    """Yield Anthropic SSE events unchanged, capturing usage; raise on an upstream error event or a cut."""
    ctx = call.ctx
    usage: dict[str, Any] = {}
    stopped = False
    async for events in sse_frames_passing(resp, _LOOK_AT):
        if isinstance(events, bytes):
            yield events  # text deltas, pings: nothing to read, the bytes pass through untouched
            continue
        out: list[bytes] = []
        for event in events:
            name = sse_name(event)
            if name in ("message_start", "message_delta"):
                data = sse_data(event)
                if isinstance(data, dict):
                    node = data.get("message") if name == "message_start" else data
                    raw = node.get("usage") if isinstance(node, dict) else None
                    if isinstance(raw, dict):
                        # message_delta carries cumulative counts: later values replace earlier ones
                        usage.update({k: v for k, v in raw.items() if v is not None})
                        ctx.raw_usage, ctx.usage = dict(usage), anthropic.usage_from(usage)
            elif name == "message_stop":
                stopped = True
            elif name == "error":
                if out:
                    yield b"".join(out)
                data = sse_data(event)
                err = data.get("error") if isinstance(data, dict) else None
                message = err.get("message", "unknown error") if isinstance(err, dict) else "unknown error"
                raise UpstreamError(f"upstream error mid-stream: {message}", kind="5xx", upstream_body=event)
            out.append(event + b"\n\n")
        if out:
            yield FinalChunk(b"".join(out)) if stopped else b"".join(out)
    if not stopped:
        raise UpstreamError("upstream stream ended before message_stop", kind="protocol")


def anthropic_stream(body: dict[str, Any]) -> StreamRelay:
    """Start an Anthropic stream relay (Anthropic streams always report usage)."""

    def start(call: Call, resp: UpstreamResponse) -> tuple[AsyncIterator[bytes], FailFn]:
        return anthropic_sse(call, resp), anthropic.StreamEncoder(model="", request_id="").fail

    return start


def messages_endpoint() -> ForwardEndpoint:
    """`POST /v1/messages`."""
    return ForwardEndpoint(
        "anthropic.messages",
        "/v1/messages",
        "anthropic",
        dialect=dialect("anthropic"),
        usage=anthropic.usage_from,
        stream=anthropic_stream,
        max_tokens=requested_max_tokens,
        set_cap=set_max_tokens,
        validate=check_messages_body,
        forward_headers=FORWARDED_HEADERS,
        error=anthropic.error_body,
    )
