"""`POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (Gemini, pinned to the gemini family).

Registered under the prefix `/v1beta/models/`; `{model}` is the Odock model name and becomes the slug in the
upstream URL. The body is forwarded as-is (the model lives in the URL). The upstream is always streamed with
`alt=sse`; a client asking `alt=sse` gets those events untouched, any other client gets Gemini's streamed JSON
array built from the same chunk payloads. Usage comes from `usageMetadata` (cumulative: the last one wins).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import msgspec

from odock.dialects import gemini
from odock.dialects.contract import StreamOptions
from odock.dialects.registry import DIALECTS
from odock.dialects.sse import sse
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.inspection import inspected_stream, upstream_json
from odock.edge.endpoints.openai_media import (
    check_family,
    check_provider_field,
    relay_unary,
    sse_data,
    sse_frames,
)
from odock.errors import BadRequest, GatewayError, UpstreamError
from odock.pipeline.call import Call, FinalChunk
from odock.providers.registry import adapter_for
from odock.routing.router import Candidate
from odock.transport.base import UpstreamResponse

PREFIX = "/v1beta/models/"
METHODS = {"generateContent": False, "streamGenerateContent": True}


def parse_path(path: str) -> tuple[str, bool]:
    """Split `/v1beta/models/{model}:{method}` into (model, stream), or raise 400 invalid_request."""
    rest = unquote(path[len(PREFIX) :]) if path.startswith(PREFIX) else ""
    model, sep, method = rest.rpartition(":")
    if not sep:
        raise BadRequest(
            f"expected {PREFIX}{{model}}:generateContent or :streamGenerateContent, got {path!r}",
            "invalid_request",
        )
    if not model.strip():
        raise BadRequest("the model is missing from the path", "invalid_request")
    if method not in METHODS:
        raise BadRequest(
            f"unsupported method {method!r}: use generateContent or streamGenerateContent", "invalid_request"
        )
    return model, METHODS[method]


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """`generationConfig.maxOutputTokens` (for token reservations; also in proto JSON's snake_case)."""
    config = body.get("generationConfig", body.get("generation_config"))
    if not isinstance(config, dict):
        return None
    value = config.get("maxOutputTokens", config.get("max_output_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def set_output_cap(body: dict[str, Any], cap: int) -> None:
    """Write the gateway's output cap as `generationConfig.maxOutputTokens` (thinking tokens count in it)."""
    config = body.get("generationConfig", body.get("generation_config"))
    if config is None:
        body["generationConfig"] = {"maxOutputTokens": cap}
    elif isinstance(config, dict):  # anything else is the upstream's to refuse
        config["maxOutputTokens" if "generationConfig" in body else "max_output_tokens"] = cap


class GeminiRelay:
    """Forward Gemini stream chunks as SSE or as a JSON array; peek usage; end a broken stream explicitly."""

    def __init__(self, json_array: bool, single_candidate: bool = False) -> None:
        self.json_array = json_array
        self.single_candidate = single_candidate
        self.sent = 0

    def _element(self, payload: bytes) -> bytes:
        self.sent += 1
        return (b"[" if self.sent == 1 else b"\n,") + payload

    async def relay(self, call: Call, resp: UpstreamResponse) -> AsyncIterator[bytes]:  # noqa: C901 - older than the complexity rule; to split
        """Yield the upstream chunks as they arrive; raise on an upstream error chunk or a cut."""
        ctx = call.ctx
        finished = ends = False
        last_usage: bytes | None = None

        def read_usage() -> None:
            nonlocal last_usage
            if last_usage is not None:
                data = sse_data(last_usage)
                usage = data.get("usageMetadata") if isinstance(data, dict) else None
                if isinstance(usage, dict):
                    ctx.raw_usage, ctx.usage = usage, gemini.usage_from(usage)
                last_usage = None

        try:
            async for events in sse_frames(resp):
                out: list[bytes] = []
                for event in events:
                    payload = b"\n".join(
                        line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
                    )
                    if not payload:
                        continue
                    if payload.startswith(b'{"error"'):
                        data = sse_data(event)
                        err = data.get("error") if isinstance(data, dict) else None
                        if out:
                            yield b"".join(out)
                        message = (
                            err.get("message", "unknown error") if isinstance(err, dict) else "unknown error"
                        )
                        raise UpstreamError(
                            f"upstream error mid-stream: {message}", kind="5xx", upstream_body=payload
                        )
                    if b'"usageMetadata"' in payload:
                        # cumulative in every chunk: decode only the last one, once the stream ends
                        last_usage = event
                    if b'"finishReason"' in payload or b'"blockReason"' in payload:
                        finished = True  # a blocked prompt ends the stream with promptFeedback only
                        # one candidate, finished, with its usage: Gemini's last chunk; the client's answer ends
                        # here and the upstream's end of body is drained afterwards
                        ends = self.single_candidate and b'"usageMetadata"' in payload
                    out.append(self._element(payload) if self.json_array else event + b"\n\n")
                if out:
                    if ends:
                        read_usage()  # the call's usage is recorded as its answer ends
                        yield FinalChunk(b"".join(out) + (b"\n]" if self.json_array else b""))
                        ends = False
                    else:
                        yield b"".join(out)
        finally:
            # also after a cut: the failed call's record keeps the usage reported so far
            read_usage()
        if not finished:
            raise UpstreamError("upstream stream ended before its final chunk", kind="protocol")
        if self.json_array:
            yield b"\n]" if self.sent else b"[]"

    def fail(self, err: GatewayError) -> bytes:
        """An explicit Gemini error object (the SDK raises on a chunk holding `error`)."""
        body = gemini.error_body(err)
        if not self.json_array:
            return sse(body)
        return self._element(body) + b"\n]"


class GeminiEndpoint(LLMEndpoint):
    """Gemini generateContent / streamGenerateContent, same-dialect forward."""

    name = "gemini.generate"
    family = "gemini"
    dialect = DIALECTS["gemini"]

    def error_body(self, err: GatewayError) -> bytes:
        """Render an error as a Google API error."""
        return gemini.error_body(err)

    async def decode(self, call: Call) -> None:
        name, stream = parse_path(call.exchange.path)
        body = await call.read_json()
        check_provider_field(body, "gemini")
        ctx = call.ctx
        ctx.requested_model = name
        ctx.stream = stream
        ctx.max_tokens = requested_max_tokens(body)
        ctx.output = "text"

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        check_family(candidate, "gemini")
        if call.route_state is None:
            # forwarded as-is (the model is in the URL), built once for every attempt
            body = upstream_json(call, self.dialect, candidate.model.slug)
            if call.ctx.output_cap_added and call.ctx.max_tokens is not None:  # the final gate chose the cap
                set_output_cap(body, call.ctx.max_tokens)
            call.route_state = msgspec.json.encode(body)
        adapter = adapter_for(candidate.provider.type)
        url = adapter.chat_url(candidate.provider, candidate.model.slug, call.ctx.stream)
        return await call.send(candidate, url, call.route_state)

    def replay_stream(self, call: Call) -> tuple[StreamOptions, bytes]:
        json_array = call.exchange.query("alt") != "sse"
        return StreamOptions(
            json_array=json_array
        ), b"application/json" if json_array else b"text/event-stream"

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None and call.json is not None
        if not call.ctx.stream:
            await relay_unary(call, upstream, "usageMetadata", gemini.usage_from, self.dialect)
            return
        config = call.json.get("generationConfig")
        count = config.get("candidateCount", 1) if isinstance(config, dict) else 1
        relay = GeminiRelay(
            json_array=call.exchange.query("alt") != "sse", single_candidate=count in (1, None)
        )
        content_type = b"application/json" if relay.json_array else b"text/event-stream"
        inspected = inspected_stream(call, self.dialect, upstream, StreamOptions(json_array=relay.json_array))
        produce, fail = inspected or (relay.relay(call, upstream), relay.fail)
        await call.stream(produce, fail, content_type)
