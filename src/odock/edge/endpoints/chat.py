"""`POST /v1/chat/completions` (OpenAI, pinned to the openai family) and `POST /v1/llm/chat` (unified)."""

from __future__ import annotations

from typing import Any

import msgspec

from odock.dialects import openai_chat
from odock.dialects.contract import StreamOptions
from odock.dialects.registry import dialect
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.inspection import inspect_unary, inspected_stream, translate_stream, upstream_json
from odock.edge.endpoints.passthrough import ask_for_stream_usage, openai_sse, want_stream_usage
from odock.errors import BadRequest, UpstreamError
from odock.model import GatewayResponse
from odock.pipeline.call import Call
from odock.providers.registry import adapter_for, dialect_for, family_of
from odock.routing.router import Candidate
from odock.transport.base import UpstreamResponse

_encode = msgspec.json.encode
OPENAI_FAMILY = frozenset({"openai", "vllm"})
# the unified route's client dialect
UNIFIED = CHAT = dialect("openai_chat")


async def relay_openai_unary(call: Call, resp: UpstreamResponse) -> tuple[bytes, Any]:
    """Read an OpenAI-shaped unary answer, capturing usage; return its bytes unchanged, and parsed."""
    data = await resp.read()
    try:
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise UpstreamError("upstream answered with invalid JSON", kind="protocol") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
        call.ctx.raw_usage = parsed["usage"]
        call.ctx.usage = openai_chat.usage_from(parsed["usage"])
    return data, parsed


class OpenAIChatEndpoint(LLMEndpoint):
    """OpenAI clients to OpenAI upstreams: the same-dialect fast path, original JSON forwarded."""

    name = "openai.chat"
    family = "openai"
    dialect = CHAT

    async def decode(self, call: Call) -> None:
        body = await call.read_json()
        openai_chat.check_chat_body(body)
        pin = body.pop("provider", None)
        if pin is not None and pin != "openai":
            raise BadRequest(f"provider {pin!r} is not allowed on an OpenAI route", "provider_not_allowed")
        ctx = call.ctx
        ctx.requested_model = body["model"]
        ctx.stream = body.get("stream") is True
        ctx.max_tokens = openai_chat.requested_max_tokens(body)
        call.route_state = want_stream_usage(body)  # whether the client itself asked for the usage chunk
        if ctx.stream:
            ask_for_stream_usage(body)

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        body = upstream_json(call, self.dialect, candidate.model.slug)
        body["model"] = candidate.model.slug
        adapter = adapter_for(candidate.provider.type)
        url = adapter.chat_url(candidate.provider, candidate.model.slug, call.ctx.stream)
        return await call.send(candidate, url, _encode(body))

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None
        if call.ctx.stream:
            show_usage = bool(call.route_state)
            inspected = inspected_stream(call, self.dialect, upstream, StreamOptions(include_usage=show_usage))
            produce, fail = inspected or (openai_sse(call, upstream, show_usage_chunk=show_usage),
                                          openai_chat.stream_error)
            await call.stream(produce, fail)
        else:
            data, parsed = await relay_openai_unary(call, upstream)
            await call.respond(200, await inspect_unary(call, self.dialect, parsed, data))


# fields of a unified request; anything else cannot be carried across providers and is refused, never dropped
UNIFIED_FIELDS = frozenset({
    "provider", "model", "messages", "temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "stop",
    "presence_penalty", "frequency_penalty", "seed", "metadata", "response_format", "tools", "tool_choice",
    "stream", "stream_options", "include_usage", "reasoning_effort",
})


def unified_response(resp: GatewayResponse, *, model: str) -> bytes:
    """The Odock-normalized unary answer of `/v1/llm/chat` (reference §10.4)."""
    out: dict[str, Any] = {
        "id": resp.id,
        "provider": resp.provider,
        "model": model,
        "content": resp.content,
        "stop_reason": resp.stop_reason,
        "input_tokens": resp.usage.total_input,
        "output_tokens": resp.usage.output_tokens,
    }
    if resp.usage.cached_input_tokens:
        out["cached_input_tokens"] = resp.usage.cached_input_tokens
    if resp.usage.cache_write_tokens:
        out["cache_write_tokens"] = resp.usage.cache_write_tokens
    if resp.usage.reasoning_tokens:
        out["reasoning_tokens"] = resp.usage.reasoning_tokens
    if resp.content_blocks:
        out["content_blocks"] = [msgspec.to_builtins(b) for b in resp.content_blocks]
    if resp.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in resp.tool_calls
        ]
    return _encode(out)


class UnifiedChatEndpoint(LLMEndpoint):
    """`/v1/llm/chat`: OpenAI-shaped request to any provider; normalized JSON or OpenAI chunks back."""

    name = "unified.chat"
    # the upstream's dialect is not the client's: a passed-through 4xx keeps its status but gets an Odock body
    # (code upstream_error, with upstream_status and upstream_error) that the client can parse
    relays_upstream_body = False

    async def decode(self, call: Call) -> None:
        body = await call.read_json()
        unknown = sorted(set(body) - UNIFIED_FIELDS)
        if unknown:
            raise BadRequest(f"unsupported field(s) on /v1/llm/chat: {', '.join(unknown)}", "invalid_request")
        request = openai_chat.decode_request(body)
        ctx = call.ctx
        call.request = ctx.request = request
        ctx.requested_model = request.model
        ctx.provider_pin = request.provider
        ctx.stream = request.stream
        ctx.max_tokens = request.max_tokens
        call.route_state = want_stream_usage(body)

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        request = call.request
        assert request is not None
        adapter = adapter_for(candidate.provider.type)
        slug = candidate.model.slug
        upstream = dialect_for(candidate.provider.type).upstream.encode_request(request, slug=slug)
        url = adapter.chat_url(candidate.provider, slug, call.ctx.stream)
        return await call.send(candidate, url, _encode(upstream))

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None and call.request is not None
        ctx = call.ctx
        provider = ctx.answered_provider
        assert provider is not None
        upstream_dialect = dialect_for(provider.type)
        name = call.request.model
        show_usage = bool(call.route_state)
        if not ctx.stream:
            data = await upstream.read()
            try:
                parsed = msgspec.json.decode(data)
            except msgspec.DecodeError:
                raise UpstreamError("upstream answered with invalid JSON", kind="protocol") from None
            answer: GatewayResponse = upstream_dialect.upstream.decode_response(parsed)
            answer.provider = family_of(provider.type)
            ctx.usage, ctx.raw_usage = answer.usage, answer.raw_usage
            await call.answered(answer)
            await call.respond(200, unified_response(answer, model=name))
        elif upstream_dialect.client is UNIFIED.client and not call.pipeline.delta_stages:
            # the upstream streams the client's own wire format: relay its bytes
            await call.stream(openai_sse(call, upstream, show_usage_chunk=show_usage), openai_chat.stream_error)
        else:
            encoder = UNIFIED.client.stream_encoder(model=name, request_id=ctx.request_id,
                                                    options=StreamOptions(include_usage=show_usage))
            decoder = upstream_dialect.upstream.stream_decoder()
            await call.stream(translate_stream(call, upstream, decoder, encoder), encoder.fail)
