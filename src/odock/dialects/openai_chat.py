"""OpenAI Chat Completions: the wire format of `/v1/chat/completions`, of `/v1/llm/chat` requests and streams, and of
OpenAI-family upstreams (OpenAI, vLLM). Pure functions, no I/O."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from odock.dialects.contract import ClientSide, StreamOptions, UpstreamSide
from odock.dialects.fields import count
from odock.dialects.sse import SSEEvent
from odock.errors import BadRequest, GatewayError, UpstreamError
from odock.model import (
    ContentPart,
    GatewayRequest,
    GatewayResponse,
    Message,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

_encode = msgspec.json.encode
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


# --- validation shared by the fast path and the full decoder -----------------------------------------------


def check_chat_body(body: Any) -> None:
    """Validate what the gateway itself relies on; the rest is checked by the full decoder or the upstream."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", "invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: required, a non-empty string", "invalid_request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: required, a non-empty array", "invalid_request")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}]: expected an object", "invalid_request")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"messages[{i}].role: expected one of {sorted(ROLES)}", "invalid_request")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(
                f"messages[{i}].content: expected a string or an array of parts", "invalid_request"
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: expected a boolean", "invalid_request")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadRequest(f"{name}: expected a positive integer", "invalid_request")


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value if isinstance(value, int) else None


def set_output_cap(body: dict[str, Any], cap: int, *, vllm: bool) -> None:
    """Write the gateway's output cap into a body that named none (reasoning tokens count inside it)."""
    # OpenAI deprecated max_tokens (o-series models refuse it); vLLM documents max_tokens
    body["max_tokens" if vllm else "max_completion_tokens"] = cap
    body.pop("max_completion_tokens" if vllm else "max_tokens", None)


def set_max_tokens(body: dict[str, Any], cap: int) -> None:
    """Write the gateway's output cap as `max_tokens` (vLLM chat and completions, Anthropic Messages)."""
    body["max_tokens"] = cap


# --- client side: request decode ---------------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, kind: type | tuple[type, ...] = (int, float)) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadRequest(f"{name}: expected a number", "invalid_request")
    return value


def _parts(raw: list[Any], where: str) -> list[ContentPart]:
    parts: list[ContentPart] = []
    for j, part in enumerate(raw):
        if not isinstance(part, dict):
            raise BadRequest(f"{where}[{j}]: expected an object", "invalid_request")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{where}[{j}].text: expected a string", "invalid_request")
            parts.append(ContentPart(type="text", text=text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise BadRequest(f"{where}[{j}].image_url.url: expected a string", "invalid_request")
            detail = image.get("detail") if isinstance(image, dict) else None
            if detail is not None and not isinstance(detail, str):
                raise BadRequest(f"{where}[{j}].image_url.detail: expected a string", "invalid_request")
            if url.startswith("data:"):
                header, _, data = url.partition(",")
                media_type = header[5:].split(";")[0] or "image/png"
                parts.append(ContentPart(type="image", data=data, media_type=media_type, detail=detail))
            else:
                parts.append(ContentPart(type="image", url=url, detail=detail))
        elif kind == "refusal":
            parts.append(ContentPart(type="refusal", text=str(part.get("refusal", ""))))
        else:
            raise BadRequest(f"{where}[{j}].type: unsupported content part {kind!r}", "invalid_request")
    return parts


def _tool_calls(raw: Any, where: str) -> list[ToolCall] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest(f"{where}: expected an array", "invalid_request")
    calls = []
    for k, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{where}[{k}].function.name: required", "invalid_request")
        arguments = fn.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = _encode(arguments).decode()
        call_id = call.get("id") or f"call_{k}"
        if not isinstance(call_id, str):
            raise BadRequest(f"{where}[{k}].id: expected a string", "invalid_request")
        calls.append(ToolCall(id=call_id, name=fn["name"], arguments=arguments))
    return calls


def _optional_str(node: dict[str, Any], key: str, where: str) -> str | None:
    value = node.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string", "invalid_request")
    return value


TOOL_CHOICES = frozenset({"auto", "none", "required"})


def _tool_choice(raw: Any) -> str | dict[str, Any] | None:
    """`"auto" | "none" | "required"` or `{"type": "function", "function": {"name": …}}`, normalized."""
    if raw is None or (isinstance(raw, str) and raw in TOOL_CHOICES):
        return raw
    if isinstance(raw, dict):
        fn = raw.get("function")
        if (
            raw.get("type", "function") == "function"
            and isinstance(fn, dict)
            and isinstance(fn.get("name"), str)
        ):
            return {"type": "function", "name": fn["name"]}
        raise BadRequest(
            'tool_choice: expected {"type": "function", "function": {"name": <string>}}', "invalid_request"
        )
    raise BadRequest(
        f"tool_choice: expected one of {sorted(TOOL_CHOICES)} or a function object", "invalid_request"
    )


def decode_request(body: dict[str, Any], *, path_model: str | None = None) -> GatewayRequest:  # noqa: C901 - older than the complexity rule; to split
    """Decode an OpenAI chat (or unified) request body into the normalized request."""
    check_chat_body(body)
    messages: list[Message] = []
    for i, m in enumerate(body["messages"]):
        content = m.get("content")
        where = f"messages[{i}].content"
        messages.append(
            Message(
                role=m["role"],
                content=_parts(content, where) if isinstance(content, list) else content,
                name=_optional_str(m, "name", f"messages[{i}].name"),
                tool_calls=_tool_calls(m.get("tool_calls"), f"messages[{i}].tool_calls"),
                tool_call_id=_optional_str(m, "tool_call_id", f"messages[{i}].tool_call_id"),
            )
        )
    tools = None
    if body.get("tools") is not None:
        if not isinstance(body["tools"], list):
            raise BadRequest("tools: expected an array", "invalid_request")
        tools = []
        for i, t in enumerate(body["tools"]):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest(f"tools[{i}].function.name: required", "invalid_request")
            where = f"tools[{i}].function"
            parameters = fn.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise BadRequest(f"{where}.parameters: expected an object", "invalid_request")
            strict = fn.get("strict")
            if strict is not None and not isinstance(strict, bool):
                raise BadRequest(f"{where}.strict: expected a boolean", "invalid_request")
            tools.append(
                Tool(
                    name=fn["name"],
                    description=_optional_str(fn, "description", f"{where}.description"),
                    parameters=parameters,
                    strict=strict,
                )
            )
    tool_choice = _tool_choice(body.get("tool_choice"))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop: expected a string or an array of strings", "invalid_request")
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise BadRequest("response_format: expected an object", "invalid_request")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("metadata: expected an object", "invalid_request")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise BadRequest("provider: expected a string", "invalid_request")
    return GatewayRequest(
        model=body["model"],
        messages=messages,
        provider=provider,
        temperature=_number(body, "temperature"),
        max_tokens=requested_max_tokens(body),
        top_p=_number(body, "top_p"),
        top_k=_number(body, "top_k", int),
        stop=stop,
        presence_penalty=_number(body, "presence_penalty"),
        frequency_penalty=_number(body, "frequency_penalty"),
        seed=_number(body, "seed", int),
        metadata=metadata,
        response_format=response_format,
        tools=tools,
        tool_choice=tool_choice,
        stream=bool(body.get("stream", False)),
        reasoning_effort=_optional_str(body, "reasoning_effort", "reasoning_effort"),
        raw=body,
    )


# --- upstream side: request encode -------------------------------------------------------------------------


def _encode_parts(content: str | list[ContentPart] | None) -> Any:
    if content is None or isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for p in content:
        if p.type == "text":
            out.append({"type": "text", "text": p.text or ""})
        elif p.type == "image":
            url = p.url if p.url else f"data:{p.media_type or 'image/png'};base64,{p.data}"
            image: dict[str, Any] = {"url": url}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
        elif p.type == "refusal":
            out.append({"type": "refusal", "refusal": p.text or ""})
        # thinking blocks are provider-private (Anthropic signatures): OpenAI has no field for them, and they are
        # reasoning the model already did, so leaving them out of the replayed history loses nothing the model needs
    return out


def encode_request(req: GatewayRequest, *, slug: str, vllm: bool = False) -> dict[str, Any]:  # noqa: C901 - older than the complexity rule; to split
    """Encode a normalized request as an OpenAI chat body for OpenAI (or, with `vllm`, a vLLM server:
    `top_k` allowed, the output cap sent as `max_tokens`)."""
    if req.top_k is not None and not vllm:
        raise BadRequest("top_k is not supported by openai", "invalid_request")
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        out: dict[str, Any] = {"role": m.role, "content": _encode_parts(m.content)}
        if m.name:
            out["name"] = m.name
        if m.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
        messages.append(out)
    body: dict[str, Any] = {"model": slug, "messages": messages}
    for name in (
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "metadata",
        "response_format",
        "reasoning_effort",
    ):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.top_k is not None:
        body["top_k"] = req.top_k
    if req.max_tokens is not None:
        # OpenAI deprecated max_tokens (o-series models refuse it); vLLM documents max_tokens
        body["max_tokens" if vllm else "max_completion_tokens"] = req.max_tokens
    if req.stop:
        body["stop"] = req.stop
    if req.tools:
        body["tools"] = [{"type": "function", "function": msgspec.structs.asdict(t) | {}} for t in req.tools]
        for tool in body["tools"]:
            tool["function"] = {k: v for k, v in tool["function"].items() if v is not None}
    if req.tool_choice is not None:
        if isinstance(req.tool_choice, dict):
            body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.get("name")}}
        else:
            body["tool_choice"] = req.tool_choice
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- responses -----------------------------------------------------------------------------------------------


def usage_from(raw: dict[str, Any] | None) -> Usage:
    """Normalize OpenAI usage: prompt_tokens includes cached tokens, completion_tokens includes reasoning."""
    if not isinstance(raw, dict):
        return Usage()
    prompt = count(raw.get("prompt_tokens"))
    details = raw.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out_details = raw.get("completion_tokens_details")
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=count(raw.get("completion_tokens")),
        cached_input_tokens=cached,
        reasoning_tokens=count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
    )


def usage_to(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.total_input,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total,
    }
    if usage.cached_input_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def _stop_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    return "tool_calls" if reason == "function_call" else str(reason)


def decode_response(body: dict[str, Any], provider: str = "openai") -> GatewayResponse:
    """Decode an OpenAI chat completion into the normalized response."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content") or ""
    blocks: list[ContentPart] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append(ContentPart(type="thinking", text=reasoning))
    if content:
        blocks.append(ContentPart(type="text", text=content))
    if message.get("refusal"):
        blocks.append(ContentPart(type="refusal", text=message["refusal"]))
    calls = _tool_calls(message.get("tool_calls"), "choices[0].message.tool_calls")
    raw_usage = body.get("usage")
    return GatewayResponse(
        provider=provider,
        model=str(body.get("model", "")),
        content=content,
        stop_reason=_stop_reason(choice.get("finish_reason")),
        content_blocks=blocks or None,
        tool_calls=calls,
        usage=usage_from(raw_usage),
        id=body.get("id"),
        created=body.get("created"),
        raw_usage=raw_usage,
        provider_request_id=body.get("id"),
        raw=body,
    )


def encode_response(resp: GatewayResponse, *, model: str) -> bytes:
    """Encode a normalized response as an OpenAI chat completion."""
    message: dict[str, Any] = {"role": "assistant", "content": resp.content or None}
    if resp.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in resp.tool_calls
        ]
    thinking = "".join(b.text or "" for b in resp.content_blocks or () if b.type == "thinking")
    if thinking:
        message["reasoning_content"] = thinking
    return _encode(
        {
            "id": resp.id or "chatcmpl-odock",
            "object": "chat.completion",
            "created": resp.created or int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": resp.stop_reason or "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage_to(resp.usage),
        }
    )


# --- streams -------------------------------------------------------------------------------------------------


class StreamDecoder:
    """Decode an OpenAI chat SSE stream into normalized events."""

    def __init__(self) -> None:
        self.started = False
        self.done = self.ended = False  # [DONE] seen

    def feed(self, ev: SSEEvent) -> list[StreamEvent]:
        data = ev.data
        if data == "[DONE]":
            self.done = self.ended = True
            return []
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise UpstreamError("upstream sent an invalid stream event", kind="protocol") from None
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            err = chunk["error"] or {}
            message = err.get("message", "upstream stream error") if isinstance(err, dict) else str(err)
            raise UpstreamError(f"upstream stream error: {message}", kind="5xx")
        out: list[StreamEvent] = []
        if not self.started:
            self.started = True
            out.append(
                StreamStart(
                    id=str(chunk.get("id", "")),
                    model=str(chunk.get("model", "")),
                    created=int(chunk.get("created") or 0),
                )
            )
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                out.append(ThinkingDelta(text=reasoning))
            if delta.get("content"):
                out.append(TextDelta(text=delta["content"]))
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                out.append(
                    ToolCallDelta(
                        index=int(call.get("index", 0)),
                        id=call.get("id"),
                        name=fn.get("name"),
                        arguments=fn.get("arguments") or "",
                    )
                )
            if choice.get("finish_reason"):
                out.append(StreamStop(stop_reason=_stop_reason(choice["finish_reason"]) or "stop"))
        if chunk.get("usage"):
            out.append(UsageEvent(usage=usage_from(chunk["usage"]), raw=chunk["usage"]))
        return out


# --- plain chunks, read and rewritten in place (native routes screening whole events) ------------------------


class _PlainDelta(msgspec.Struct, forbid_unknown_fields=True):
    role: str | None = None
    content: str | None = None
    refusal: None = None


class _PlainChoice(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    delta: _PlainDelta
    finish_reason: str | None = None
    logprobs: None = None


class _PlainChunk(msgspec.Struct):
    choices: list[_PlainChoice]
    usage: dict[str, Any] | None = None


_plain = msgspec.json.Decoder(_PlainChunk)


class PlainChunk(msgspec.Struct):
    """What a plain chunk holds: its text, and whether it finishes the answer, carries usage, has choices."""

    text: str
    finish: bool
    usage: dict[str, Any] | None
    choices: bool


def plain_chunk(payload: bytes) -> PlainChunk | None:
    """Read a chunk whose only text is choice 0's `content`: no tool calls, reasoning, refusal, log
    probabilities or fields this reader does not know in a choice (None: not plain; the caller decodes it whole,
    so nothing it cannot screen is forwarded as it came)."""
    try:
        chunk = _plain.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not chunk.choices:
        return PlainChunk("", False, chunk.usage, False)
    if len(chunk.choices) > 1 or chunk.choices[0].index != 0:
        return None
    choice = chunk.choices[0]
    return PlainChunk(choice.delta.content or "", choice.finish_reason is not None, chunk.usage, True)


def with_content(payload: bytes, text: str, continuation: bool) -> bytes:
    """A plain chunk's SSE event with other content (`continuation`: the rest of a split chunk, its role
    already sent)."""
    chunk = msgspec.json.decode(payload)
    delta = chunk["choices"][0]["delta"]
    delta["content"] = text
    if continuation:
        delta.pop("role", None)
    return b"data: " + _encode(chunk) + b"\n\n"


class StreamEncoder:
    """Encode normalized stream events as OpenAI `chat.completion.chunk` SSE (the unified endpoint's stream)."""

    def __init__(self, *, model: str, request_id: str, include_usage: bool = False) -> None:
        self.model = model
        self.id = f"chatcmpl-{request_id}"
        self.created = int(time.time())
        self.include_usage = include_usage
        self.sent_role = False
        self.stop_reason: str | None = None
        self.usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self.sent_role:
            delta = {"role": "assistant", **delta}
            self.sent_role = True
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return b"data: " + _encode(payload) + b"\n\n"

    def event(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, TextDelta):
            return self._chunk({"content": ev.text})
        if isinstance(ev, ToolCallDelta):
            call: dict[str, Any] = {"index": ev.index, "function": {"arguments": ev.arguments}}
            if ev.id is not None:
                call["id"] = ev.id
                call["type"] = "function"
            if ev.name is not None:
                call["function"]["name"] = ev.name
            return self._chunk({"tool_calls": [call]})
        if isinstance(ev, ThinkingDelta):
            return self._chunk({"reasoning_content": ev.text}) if ev.text else b""
        if isinstance(ev, StreamStop):
            self.stop_reason = ev.stop_reason
        elif isinstance(ev, UsageEvent):
            self.usage = ev.usage
        return b""

    def finish(self) -> bytes:
        out = self._chunk({}, self.stop_reason or "stop")
        if self.include_usage:
            payload = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to(self.usage or Usage()),
            }
            out += b"data: " + _encode(payload) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def fail(self, err: GatewayError) -> bytes:
        return stream_error(err)


def stream_error(err: GatewayError) -> bytes:
    """The in-stream error event: the openai SDK raises APIError on a data event carrying "error"; no [DONE]
    follows, so a broken stream never looks like a clean end."""
    return b"data: " + _encode({"error": error_payload(err)}) + b"\n\n"


# --- errors --------------------------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
}


def error_payload(err: GatewayError) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "code": err.code,
        "message": err.message,
        "type": _TYPES.get(err.status, "server_error"),
        "param": None,
    }
    payload.update(err.extra)
    return payload


def error_body(err: GatewayError) -> bytes:
    """Render an error so the openai SDK raises the class matching the status, with our message and code."""
    return _encode({"error": error_payload(err)})


# --- the dialect's two sides (dialects.contract) -------------------------------------------------------------


def stream_encoder(*, model: str, request_id: str, options: StreamOptions) -> StreamEncoder:
    """A client stream encoder; `include_usage` adds the usage chunk the client asked for."""
    return StreamEncoder(model=model, request_id=request_id, include_usage=options.include_usage)


def encode_vllm_request(req: GatewayRequest, *, slug: str) -> dict[str, Any]:
    """The chat body for a vLLM server (`top_k` allowed, the output cap sent as `max_tokens`)."""
    return encode_request(req, slug=slug, vllm=True)


def decode_vllm_response(body: dict[str, Any]) -> GatewayResponse:
    """A vLLM chat completion, normalized."""
    return decode_response(body, provider="vllm")


CLIENT = ClientSide(
    decode_request=decode_request,
    encode_response=encode_response,
    stream_encoder=stream_encoder,
    error_body=error_body,
)
UPSTREAM = UpstreamSide(
    encode_request=encode_request,
    decode_response=decode_response,
    stream_decoder=StreamDecoder,
    usage_from=usage_from,
)
# vLLM's OpenAI-compatible server: the same wire format with its own field spellings on the way out
VLLM_UPSTREAM = UpstreamSide(
    encode_request=encode_vllm_request,
    decode_response=decode_vllm_response,
    stream_decoder=StreamDecoder,
    usage_from=usage_from,
)
