"""`POST /v1/chat/completions` (OpenAI, pinned to the openai family) and `POST /v1/llm/chat` (unified)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from odock.dialects import openai_chat
from odock.dialects.sse import SSEParser
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.passthrough import ask_for_stream_usage, openai_sse, want_stream_usage
from odock.errors import BadRequest, UpstreamError
from odock.model import GatewayResponse, StreamEvent, StreamStop, UsageEvent
from odock.pipeline.call import Call, FinalChunk, family_of
from odock.providers.registry import adapter_for
from odock.routing.router import Candidate
from odock.transport.base import UpstreamResponse

_encode = msgspec.json.encode
OPENAI_FAMILY = frozenset({"openai", "vllm"})


async def relay_openai_unary(call: Call, resp: UpstreamResponse) -> bytes:
    """Read an OpenAI-shaped unary answer, capturing usage; return the bytes unchanged."""
    data = await resp.read()
    try:
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise UpstreamError("upstream answered with invalid JSON", kind="protocol") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
        call.ctx.raw_usage = parsed["usage"]
        call.ctx.usage = openai_chat.usage_from(parsed["usage"])
    return data


class OpenAIChatEndpoint(LLMEndpoint):
    """OpenAI clients to OpenAI upstreams: the same-dialect fast path, original JSON forwarded."""

    route = "openai.chat"
    required_provider = "openai"

    async def serve(self, call: Call) -> None:
        await call.admit()
        body = await call.read_json()
        openai_chat.check_chat_body(body)
        pin = body.pop("provider", None)
        if pin is not None and pin != "openai":
            raise BadRequest(f"provider {pin!r} is not allowed on an OpenAI route", "provider_not_allowed")
        ctx = call.ctx
        ctx.stream = body.get("stream") is True
        ctx.max_tokens = openai_chat.requested_max_tokens(body)
        ctx.output = "text"
        show_usage = want_stream_usage(body)
        if ctx.stream:
            ask_for_stream_usage(body)
        primary = await call.resolve(body["model"])

        async def attempt(candidate: Candidate) -> UpstreamResponse:
            body["model"] = candidate.model.slug
            if ctx.output_cap_added and ctx.max_tokens is not None:
                openai_chat.set_output_cap(body, ctx.max_tokens, vllm=family_of(candidate.provider.type) == "vllm")
            adapter = adapter_for(candidate.provider.type)
            url = adapter.chat_url(candidate.provider, candidate.model.slug, ctx.stream)
            return await call.send(candidate, url, _encode(body))

        resp = await call.route(primary, attempt)
        if ctx.stream:
            await call.stream(openai_sse(call, resp, show_usage_chunk=show_usage), openai_chat.stream_error)
        else:
            await call.respond(200, await relay_openai_unary(call, resp))


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

    route = "unified.chat"
    # the upstream's dialect is not the client's: a passed-through 4xx keeps its status but gets an Odock body
    # (code upstream_error, with upstream_status and upstream_error) that the client can parse
    relays_upstream_body = False

    async def serve(self, call: Call) -> None:
        await call.admit()
        body = await call.read_json()
        unknown = sorted(set(body) - UNIFIED_FIELDS)
        if unknown:
            raise BadRequest(f"unsupported field(s) on /v1/llm/chat: {', '.join(unknown)}", "invalid_request")
        request = openai_chat.decode_request(body)
        ctx = call.ctx
        ctx.request = request
        ctx.stream = request.stream
        ctx.max_tokens = request.max_tokens
        ctx.output = "text"
        show_usage = want_stream_usage(body)
        primary = await call.resolve(request.model, request.provider)
        if ctx.output_cap_added:
            request.max_tokens = ctx.max_tokens  # every dialect's encoder sends it as its own cap field

        async def attempt(candidate: Candidate) -> tuple[Candidate, UpstreamResponse]:
            adapter = adapter_for(candidate.provider.type)
            dialect = adapter.chat_dialect()
            slug = candidate.model.slug
            if dialect is openai_chat:
                upstream = openai_chat.encode_request(
                    request, slug=slug, vllm=family_of(candidate.provider.type) == "vllm")
            else:
                upstream = dialect.encode_request(request, slug=slug)
            url = adapter.chat_url(candidate.provider, slug, ctx.stream)
            return candidate, await call.send(candidate, url, _encode(upstream))

        candidate, resp = await call.route(primary, attempt)
        dialect = adapter_for(candidate.provider.type).chat_dialect()
        name = request.model
        if not ctx.stream:
            data = await resp.read()
            try:
                parsed = msgspec.json.decode(data)
            except msgspec.DecodeError:
                raise UpstreamError("upstream answered with invalid JSON", kind="protocol") from None
            answer: GatewayResponse = (
                openai_chat.decode_response(parsed, provider=candidate.provider.type)
                if dialect is openai_chat else dialect.decode_response(parsed)
            )
            answer.provider = family_of(candidate.provider.type)
            ctx.usage, ctx.raw_usage = answer.usage, answer.raw_usage
            await call.respond(200, unified_response(answer, model=name))
        elif dialect is openai_chat:
            await call.stream(openai_sse(call, resp, show_usage_chunk=show_usage), openai_chat.stream_error)
        else:
            encoder = openai_chat.StreamEncoder(model=name, request_id=ctx.request_id, include_usage=show_usage)
            await call.stream(translate_stream(call, resp, dialect.StreamDecoder(), encoder), encoder.fail)


async def translate_stream(call: Call, resp: UpstreamResponse, decoder: Any, encoder: Any) -> AsyncIterator[bytes]:
    """Decode an upstream stream in its dialect and re-encode every event in the client's dialect."""
    parser = SSEParser()
    finished = False

    def encode(events: list[StreamEvent]) -> bytes:
        nonlocal finished
        out = []
        for ev in events:
            if isinstance(ev, UsageEvent):
                call.ctx.usage, call.ctx.raw_usage = ev.usage, ev.raw
            elif isinstance(ev, StreamStop):
                finished = True
            out.append(encoder.event(ev))
        return b"".join(out)

    chunks = resp.iter_chunks()
    async for chunk in chunks:
        out = b"".join(encode(decoder.feed(sse_event)) for sse_event in parser.feed(chunk))
        if decoder.ended:  # the upstream's terminal event: the answer ends here, the rest is drained
            yield FinalChunk(out + encoder.finish())
            async for _ in chunks:
                pass
            return
        yield out
    yield b"".join(encode(decoder.feed(sse_event)) for sse_event in parser.flush())
    complete = decoder.done if hasattr(decoder, "done") else finished
    if not complete:
        raise UpstreamError("upstream stream ended before its final event", kind="protocol")
    yield encoder.finish()
