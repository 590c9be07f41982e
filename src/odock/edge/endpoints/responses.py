"""`POST /v1/responses` (OpenAI Responses, pinned to the openai family): the same-dialect fast path.

Unary answers are relayed raw with usage from `usage`; streams pass the full event sequence through as it
arrives, take usage from `response.completed` (or `response.incomplete`), and end a cut stream with an explicit
`error` + `response.failed` pair in the Responses shape. vLLM's `/v1/vllm/responses` reuses the same relay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from odock.dialects import openai_responses
from odock.dialects.registry import dialect
from odock.dialects.sse import sse
from odock.edge.endpoints.openai_media import (
    FailFn,
    ForwardEndpoint,
    StreamRelay,
    sse_data,
    sse_frames,
    sse_name,
)
from odock.errors import GatewayError, UpstreamError
from odock.pipeline.call import Call
from odock.transport.base import UpstreamResponse

_TERMINAL = frozenset({"response.completed", "response.incomplete"})
_ENVELOPE = frozenset({"response.created", "response.in_progress"})


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """The requested output cap of a Responses body (for token reservations)."""
    value = body.get("max_output_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def set_max_output_tokens(body: dict[str, Any], cap: int) -> None:
    """Write the gateway's output cap into a Responses body that named none (reasoning tokens count inside it)."""
    body["max_output_tokens"] = cap


class ResponsesRelay:
    """Forward a Responses SSE stream untouched; remember the envelope and the event count for a failure."""

    def __init__(self) -> None:
        self.envelope: dict[str, Any] | None = None
        self.events = 0

    async def relay(self, call: Call, resp: UpstreamResponse) -> AsyncIterator[bytes]:
        """Yield the upstream events as they arrive; raise on an upstream error event or a cut."""
        ctx = call.ctx
        complete = False
        async for events in sse_frames(resp):
            out: list[bytes] = []
            for event in events:
                name = sse_name(event)
                if name in _ENVELOPE:
                    data = sse_data(event)
                    if isinstance(data, dict) and isinstance(data.get("response"), dict):
                        self.envelope = data["response"]
                elif name in _TERMINAL:
                    data = sse_data(event)
                    response = data.get("response") if isinstance(data, dict) else None
                    usage = response.get("usage") if isinstance(response, dict) else None
                    if isinstance(usage, dict):
                        ctx.raw_usage, ctx.usage = usage, openai_responses.usage_from(usage)
                    complete = True
                elif name in ("error", "response.failed"):
                    if out:
                        yield b"".join(out)
                    data = sse_data(event)
                    err = data if isinstance(data, dict) else {}
                    if isinstance(err.get("response"), dict):
                        err = err["response"].get("error") or {}
                    message = err.get("message", "unknown error") if isinstance(err, dict) else str(err)
                    raise UpstreamError(
                        f"upstream error mid-stream: {message}", kind="5xx", upstream_body=event
                    )
                self.events += 1
                out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
        if not complete:
            raise UpstreamError("upstream stream ended before response.completed", kind="protocol")

    def fail(self, err: GatewayError) -> bytes:
        """An `error` event, then `response.failed` on the envelope seen so far (nothing looks complete)."""
        seq = self.events
        error = {
            "type": "error",
            "code": err.code,
            "message": err.message,
            "param": None,
            "sequence_number": seq,
        }
        out = sse(msgspec.json.encode(error), "error")
        if self.envelope is not None:
            code = "rate_limit_exceeded" if err.status == 429 else "server_error"
            failed = {**self.envelope, "status": "failed", "error": {"code": code, "message": err.message}}
            event = {"type": "response.failed", "response": failed, "sequence_number": seq + 1}
            out += sse(msgspec.json.encode(event), "response.failed")
        return out


def responses_stream(body: dict[str, Any]) -> StreamRelay:
    """Start a Responses stream relay (Responses streams always end with their usage: nothing to ask for)."""

    def start(call: Call, resp: UpstreamResponse) -> tuple[AsyncIterator[bytes], FailFn]:
        relay = ResponsesRelay()
        return relay.relay(call, resp), relay.fail

    return start


def responses_endpoint(route: str = "openai.responses", family: str = "openai") -> ForwardEndpoint:
    """A Responses route of a provider family (openai at /v1/responses, vllm at /v1/vllm/responses)."""
    return ForwardEndpoint(
        route,
        "/responses",
        family,
        dialect=dialect("openai_responses"),
        usage=openai_responses.usage_from,
        stream=responses_stream,
        max_tokens=max_output_tokens,
        set_cap=set_max_output_tokens,
        error=openai_responses.error_body,
    )
