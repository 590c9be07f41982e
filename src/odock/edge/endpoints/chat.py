"""`POST /v1/chat/completions` (OpenAI, pinned to the openai family) and `POST /v1/llm/chat` (unified)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from odock.dialects import openai_chat
from odock.dialects.contract import Dialect, StreamOptions
from odock.dialects.registry import dialect
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.framed import framed_stream
from odock.edge.endpoints.inspection import inspect_unary, inspected_stream, translate_stream, upstream_json
from odock.edge.endpoints.passthrough import ask_for_stream_usage, openai_sse, want_stream_usage
from odock.errors import BadRequest, UpstreamError
from odock.model import GatewayResponse, StreamEvent
from odock.pipeline.call import Call, FinalChunk
from odock.providers.registry import FAMILIES, adapter_for, dialect_for, family_of
from odock.routing.router import Candidate
from odock.transport.base import UpstreamResponse

_encode = msgspec.json.encode
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
        ctx.output = "text"
        call.route_state = want_stream_usage(body)  # whether the client itself asked for the usage chunk
        if ctx.stream:
            ask_for_stream_usage(body)

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        ctx = call.ctx
        body = upstream_json(call, self.dialect, candidate.model.slug)
        body["model"] = candidate.model.slug
        if ctx.output_cap_added and ctx.max_tokens is not None:  # the final gate chose the cap: send it
            openai_chat.set_output_cap(
                body, ctx.max_tokens, vllm=family_of(candidate.provider.type) == "vllm"
            )
        adapter = adapter_for(candidate.provider.type)
        url = adapter.chat_url(candidate.provider, candidate.model.slug, call.ctx.stream)
        return await call.send(candidate, url, _encode(body))

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None
        if call.ctx.stream:
            show_usage = bool(call.route_state)
            inspected = framed_stream(call, upstream, show_usage) or inspected_stream(
                call, self.dialect, upstream, StreamOptions(include_usage=show_usage)
            )
            produce, fail = inspected or (
                openai_sse(call, upstream, show_usage_chunk=show_usage),
                openai_chat.stream_error,
            )
            await call.stream(produce, fail)
        else:
            data, parsed = await relay_openai_unary(call, upstream)
            await call.respond(200, await inspect_unary(call, self.dialect, parsed, data))

    def replay_stream(self, call: Call) -> tuple[StreamOptions, bytes]:
        return StreamOptions(include_usage=bool(call.route_state)), b"text/event-stream"


# fields of a unified request; anything else cannot be carried across providers and is refused, never dropped
UNIFIED_FIELDS = frozenset(
    {
        "provider",
        "model",
        "messages",
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "top_k",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "metadata",
        "response_format",
        "tools",
        "tool_choice",
        "stream",
        "stream_options",
        "include_usage",
        "reasoning_effort",
        "provider_options",
        "include_raw",
    }
)
# fields of one unified message (reference §10.3: `content_blocks` may stand beside `content`), and of its parts
MESSAGE_FIELDS = frozenset({"role", "content", "content_blocks", "name", "tool_calls", "tool_call_id"})
PART_FIELDS = {
    "text": frozenset({"type", "text"}),
    "image_url": frozenset({"type", "image_url"}),
    "refusal": frozenset({"type", "refusal"}),
}
# what `provider_options` may never set: the call's identity and shape stay the gateway's
RESERVED_OPTIONS = frozenset({"model", "stream", "stream_options"})
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def check_messages(body: dict[str, Any]) -> None:
    """Refuse a message or content-part field the unified request cannot carry (never drop it silently), and
    fold a message's `content_blocks` into its content parts."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return  # the dialect's own check names the error
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        unknown = sorted(set(message) - MESSAGE_FIELDS)
        if unknown:
            raise BadRequest(
                f"messages[{i}]: unsupported field(s) on /v1/llm/chat: {', '.join(unknown)}",
                "invalid_request",
            )
        blocks = message.pop("content_blocks", None)
        if blocks is not None:
            if not isinstance(blocks, list):
                raise BadRequest(f"messages[{i}].content_blocks: expected an array", "invalid_request")
            content = message.get("content")
            head = [{"type": "text", "text": content}] if isinstance(content, str) and content else []
            message["content"] = head + (content if isinstance(content, list) else []) + blocks
        parts = message.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else ()):
            if not isinstance(part, dict):
                continue
            allowed = PART_FIELDS.get(str(part.get("type")))
            extra = sorted(set(part) - allowed) if allowed is not None else []
            if extra:
                raise BadRequest(
                    f"messages[{i}].content[{j}]: unsupported field(s) on /v1/llm/chat: {', '.join(extra)}",
                    "invalid_request",
                )


def check_provider_options(raw: Any) -> dict[str, dict[str, Any]]:
    """`provider_options`: per provider family, fields merged into that family's upstream body."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("provider_options: expected an object keyed by provider", "invalid_request")
    for family, options in raw.items():
        if family not in FAMILIES:
            raise BadRequest(
                f"provider_options.{family}: unknown provider (one of: {', '.join(sorted(FAMILIES))})",
                "invalid_request",
            )
        if not isinstance(options, dict):
            raise BadRequest(f"provider_options.{family}: expected an object", "invalid_request")
        reserved = sorted(RESERVED_OPTIONS & set(options))
        if reserved:
            raise BadRequest(
                f"provider_options.{family}: cannot set {', '.join(reserved)}", "invalid_request"
            )
    return raw


async def rename_model(chunks: AsyncIterator[bytes], name: bytes) -> AsyncIterator[bytes]:
    """Relayed OpenAI-family chunks with `model` naming the Odock model, as every unified answer does."""
    field = b'"model":' + _encode(name.decode())
    async for chunk in chunks:
        renamed = _MODEL_FIELD.sub(field, chunk)
        yield FinalChunk(renamed) if type(chunk) is FinalChunk else renamed


class UnifiedState:
    """What a unified call keeps between decode, send and respond."""

    __slots__ = ("include_raw", "options", "show_usage")

    def __init__(self, show_usage: bool, options: dict[str, dict[str, Any]], include_raw: bool) -> None:
        self.show_usage = show_usage
        self.options = options
        self.include_raw = include_raw

    def merge_options(self, call: Call, candidate: Candidate, upstream: dict[str, Any]) -> dict[str, Any]:
        """The upstream body with this provider family's `provider_options` merged in; options naming a family
        this call can never reach are refused rather than silently ignored."""
        assert call.plan is not None
        reachable = {family_of(c.provider.type) for c in call.plan.candidates}
        stray = sorted(set(self.options) - reachable)
        if stray:
            raise BadRequest(
                f"provider_options.{stray[0]}: model {call.ctx.requested_model!r} is not served by "
                f"{stray[0]} on this call",
                "invalid_request",
            )
        options = self.options.get(family_of(candidate.provider.type))
        return {**upstream, **options} if options else upstream


def unified_response(resp: GatewayResponse, *, model: str, raw: dict[str, Any] | None = None) -> bytes:
    """The Odock-normalized unary answer of `/v1/llm/chat` (reference §10.4); `raw` adds the provider's own
    usage, request id and answer when the client asked for them (`include_raw`)."""
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
    if raw is not None:
        out.update(raw)
    return _encode(out)


class UnifiedChatEndpoint(LLMEndpoint):
    """`/v1/llm/chat`: OpenAI-shaped request to any provider; normalized JSON or OpenAI chunks back."""

    name = "unified.chat"
    # the upstream's dialect is not the client's: a passed-through 4xx keeps its status but gets an Odock body
    # (code upstream_error, with upstream_status and upstream_error) that the client can parse
    relays_upstream_body = False

    @property
    def replay_dialect(self) -> Dialect | None:
        return UNIFIED

    def replay_model(self, call: Call, events: list[StreamEvent]) -> str:
        assert call.request is not None
        return call.request.model

    def replay_stream(self, call: Call) -> tuple[StreamOptions, bytes]:
        state: UnifiedState = call.route_state
        return StreamOptions(include_usage=state.show_usage), b"text/event-stream"

    def replay_unary(self, call: Call, response: GatewayResponse, model: str) -> bytes:
        return unified_response(response, model=model)

    async def decode(self, call: Call) -> None:
        # a copy: `call.json` keeps every field the client sent (the cache keys on it), options included
        body = dict(await call.read_json())
        unknown = sorted(set(body) - UNIFIED_FIELDS)
        if unknown:
            raise BadRequest(f"unsupported field(s) on /v1/llm/chat: {', '.join(unknown)}", "invalid_request")
        check_messages(body)
        options = check_provider_options(body.pop("provider_options", None))
        include_raw = body.pop("include_raw", False)
        if not isinstance(include_raw, bool):
            raise BadRequest("include_raw: expected a boolean", "invalid_request")
        request = openai_chat.decode_request(body)
        ctx = call.ctx
        call.request = ctx.request = request
        ctx.requested_model = request.model
        ctx.provider_pin = request.provider
        ctx.stream = request.stream
        ctx.max_tokens = request.max_tokens
        ctx.output = "text"
        call.route_state = UnifiedState(want_stream_usage(body), options, include_raw)

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        request, state = call.request, call.route_state
        assert request is not None and isinstance(state, UnifiedState)
        if call.ctx.output_cap_added:
            request.max_tokens = call.ctx.max_tokens  # every dialect's encoder sends it as its own cap field
        adapter = adapter_for(candidate.provider.type)
        slug = candidate.model.slug
        upstream = dialect_for(candidate.provider.type).upstream.encode_request(request, slug=slug)
        if state.options:
            upstream = state.merge_options(call, candidate, upstream)
        url = adapter.chat_url(candidate.provider, slug, call.ctx.stream)
        return await call.send(candidate, url, _encode(upstream))

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None and call.request is not None
        ctx = call.ctx
        provider = ctx.answered_provider
        assert provider is not None
        upstream_dialect = dialect_for(provider.type)
        name = call.request.model
        state: UnifiedState = call.route_state
        show_usage = state.show_usage
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
            raw = (
                {"raw_usage": answer.raw_usage, "provider_request_id": ctx.provider_request_id, "raw": parsed}
                if state.include_raw
                else None
            )
            await call.respond(200, unified_response(answer, model=name, raw=raw))
        elif upstream_dialect.client is UNIFIED.client and not call.delta_stages:
            # the upstream streams the client's own wire format: relay its bytes, naming the Odock model
            relayed = openai_sse(call, upstream, show_usage_chunk=show_usage)
            await call.stream(rename_model(relayed, name.encode()), openai_chat.stream_error)
        else:
            encoder = UNIFIED.client.stream_encoder(
                model=name, request_id=ctx.request_id, options=StreamOptions(include_usage=show_usage)
            )
            decoder = upstream_dialect.upstream.stream_decoder()
            await call.stream(translate_stream(call, upstream.iter_chunks(), decoder, encoder), encoder.fail)
