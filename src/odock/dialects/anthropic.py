"""Anthropic Messages dialect: `POST /v1/messages` bodies, responses and SSE, both client- and upstream-facing.

Wire format source: the `anthropic` SDK's `types` package (MessageCreateParams, Message, RawMessageStreamEvent).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from odock.dialects.contract import ClientSide, StreamOptions, UpstreamSide
from odock.dialects.fields import bad as _bad
from odock.dialects.fields import count as _int
from odock.dialects.fields import dumps as _dumps
from odock.dialects.fields import expect_dict as _dict
from odock.dialects.fields import expect_list as _list
from odock.dialects.fields import expect_str as _str
from odock.dialects.fields import loads, refuse_openai_only_hints, unsupported
from odock.dialects.sse import SSEEvent, sse
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

PROVIDER = "anthropic"
DEFAULT_MAX_TOKENS = 4096

_STOP_IN = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_OUT = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_EFFORTS = {"low", "medium", "high", "xhigh", "max"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --- small validation helpers -------------------------------------------------------------------------------


def _unsupported(field: str) -> BadRequest:
    return unsupported(field, PROVIDER)


def _opt_num(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(key, "a number")
    return float(v)


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(key, "an integer")
    return v


def _args_text(value: Any) -> str:
    # Anthropic streams tool input as JSON text with ", " / ": " separators; serializing the unary `input`
    # the same way makes unary and streamed arguments byte-identical.
    return json.dumps(value, ensure_ascii=False)


# --- client side: decode a request --------------------------------------------------------------------------


def _decode_image(block: dict[str, Any], field: str) -> ContentPart:
    src = _dict(block.get("source"), f"{field}.source")
    kind = src.get("type")
    if kind == "base64":
        return ContentPart(
            type="image",
            data=_str(src.get("data"), f"{field}.source.data"),
            media_type=_str(src.get("media_type"), f"{field}.source.media_type"),
        )
    if kind == "url":
        return ContentPart(type="image", url=_str(src.get("url"), f"{field}.source.url"))
    raise _bad(f"{field}.source.type", "'base64' or 'url'")


def _decode_tool_result(block: dict[str, Any], field: str) -> Message:
    call_id = _str(block.get("tool_use_id"), f"{field}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, str):
        return Message(role="tool", content=content, tool_call_id=call_id)
    parts: list[ContentPart] = []
    for j, sub in enumerate(_list(content, f"{field}.content")):
        sub = _dict(sub, f"{field}.content[{j}]")
        if sub.get("type") == "text":
            parts.append(ContentPart(type="text", text=_str(sub.get("text"), f"{field}.content[{j}].text")))
        elif sub.get("type") == "image":
            parts.append(_decode_image(sub, f"{field}.content[{j}]"))
        else:
            raise _bad(f"{field}.content[{j}].type", "'text' or 'image'")
    return Message(role="tool", content=parts, tool_call_id=call_id)


def _decode_message(i: int, raw: Any) -> list[Message]:
    field = f"messages[{i}]"
    msg = _dict(raw, field)
    role = msg.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{field}.role", "'user' or 'assistant'")
    content = msg.get("content")
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    blocks = _list(content, f"{field}.content")
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, block in enumerate(blocks):
        bf = f"{field}.content[{j}]"
        block = _dict(block, bf)
        kind = block.get("type")
        if kind == "text":
            parts.append(ContentPart(type="text", text=_str(block.get("text"), f"{bf}.text")))
        elif kind == "image":
            parts.append(_decode_image(block, bf))
        elif kind == "thinking" and role == "assistant":
            parts.append(
                ContentPart(
                    type="thinking",
                    text=_str(block.get("thinking"), f"{bf}.thinking"),
                    signature=_str(block.get("signature", ""), f"{bf}.signature"),
                )
            )
        elif kind == "redacted_thinking" and role == "assistant":
            parts.append(ContentPart(type="redacted_thinking", data=_str(block.get("data"), f"{bf}.data")))
        elif kind == "tool_use" and role == "assistant":
            tool_input = _dict(block.get("input", {}), f"{bf}.input")
            calls.append(
                ToolCall(
                    id=_str(block.get("id"), f"{bf}.id"),
                    name=_str(block.get("name"), f"{bf}.name"),
                    arguments=_args_text(tool_input),
                )
            )
        elif kind == "tool_result" and role == "user":
            results.append(_decode_tool_result(block, bf))
        else:
            raise _bad(f"{bf}.type", f"a content block supported in a {role} turn, got {kind!r}")
    out: list[Message] = list(results)
    if role == "assistant":
        out.append(Message(role="assistant", content=parts or None, tool_calls=calls or None))
    elif parts or not results:
        out.append(Message(role="user", content=parts))
    return out


def _decode_system(system: Any) -> Message:
    if isinstance(system, str):
        return Message(role="system", content=system)
    parts = []
    for j, block in enumerate(_list(system, "system")):
        block = _dict(block, f"system[{j}]")
        if block.get("type") != "text":
            raise _bad(f"system[{j}].type", "'text'")
        parts.append(ContentPart(type="text", text=_str(block.get("text"), f"system[{j}].text")))
    return Message(role="system", content=parts)


def _decode_tools(raw: Any) -> list[Tool]:
    tools = []
    for i, t in enumerate(_list(raw, "tools")):
        t = _dict(t, f"tools[{i}]")
        if t.get("type") not in (None, "custom"):
            raise _bad(f"tools[{i}].type", "a custom (function) tool; server tools are not supported")
        schema = t.get("input_schema")
        strict = t.get("strict")
        desc = t.get("description")
        tools.append(
            Tool(
                name=_str(t.get("name"), f"tools[{i}].name"),
                description=_str(desc, f"tools[{i}].description") if desc is not None else None,
                parameters=_dict(schema, f"tools[{i}].input_schema") if schema is not None else None,
                strict=strict if isinstance(strict, bool) else None,
            )
        )
    return tools


def _decode_tool_choice(raw: Any) -> str | dict[str, Any]:
    tc = _dict(raw, "tool_choice")
    kind = tc.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "name": _str(tc.get("name"), "tool_choice.name")}
    raise _bad("tool_choice.type", "'auto', 'any', 'tool' or 'none'")


def decode_request(body: dict[str, Any], *, path_model: str | None = None) -> GatewayRequest:  # noqa: C901 - older than the complexity rule; to split
    """Decode an Anthropic Messages request body into a GatewayRequest."""
    body = _dict(body, "body")
    model = path_model or body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string")
    messages: list[Message] = []
    if body.get("system") is not None:
        messages.append(_decode_system(body["system"]))
    for i, raw in enumerate(_list(body.get("messages"), "messages")):
        messages.extend(_decode_message(i, raw))
    req = GatewayRequest(model=model, messages=messages, raw=body)
    req.max_tokens = _opt_int(body, "max_tokens")
    # sampling knobs are no longer in the SDK types, but older clients still send them
    req.temperature = _opt_num(body, "temperature")
    req.top_p = _opt_num(body, "top_p")
    req.top_k = _opt_int(body, "top_k")
    if body.get("stop_sequences") is not None:
        req.stop = [
            _str(s, f"stop_sequences[{i}]")
            for i, s in enumerate(_list(body["stop_sequences"], "stop_sequences"))
        ]
    if body.get("metadata") is not None:
        req.metadata = dict(_dict(body["metadata"], "metadata"))
    if body.get("tools") is not None:
        req.tools = _decode_tools(body["tools"])
    if body.get("tool_choice") is not None:
        req.tool_choice = _decode_tool_choice(body["tool_choice"])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "a boolean")
    req.stream = stream
    if body.get("thinking") is not None:
        th = _dict(body["thinking"], "thinking")
        kind = th.get("type")
        if kind == "enabled":
            budget = th.get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise _bad("thinking.budget_tokens", "an integer")
            req.thinking_budget = budget
        elif kind == "adaptive":
            req.thinking_budget = -1  # -1 = the model decides (Gemini's convention for dynamic thinking)
        elif kind == "disabled":
            req.thinking_budget = 0
        else:
            raise _bad("thinking.type", "'enabled', 'adaptive' or 'disabled'")
    if body.get("output_config") is not None:
        oc = _dict(body["output_config"], "output_config")
        if oc.get("effort") is not None:
            req.reasoning_effort = _str(oc["effort"], "output_config.effort")
        if oc.get("format") is not None:
            fmt = _dict(oc["format"], "output_config.format")
            if fmt.get("type") != "json_schema":
                raise _bad("output_config.format.type", "'json_schema'")
            schema = _dict(fmt.get("schema"), "output_config.format.schema")
            req.response_format = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema},
            }
    return req


# --- upstream side: encode a request ------------------------------------------------------------------------


def _split_data_url(url: str) -> tuple[str, str] | None:
    if not url.startswith("data:"):
        return None
    head, _, data = url[5:].partition(",")
    media_type, _, enc = head.partition(";")
    if enc != "base64" or not media_type:
        return None
    return media_type, data


def _encode_image(p: ContentPart, field: str) -> dict[str, Any]:
    if p.data is not None:
        if not p.media_type:
            raise _bad(f"{field}.media_type", "an image media type for base64 data")
        return {"type": "image", "source": {"type": "base64", "media_type": p.media_type, "data": p.data}}
    if p.url:
        inline = _split_data_url(p.url)
        if inline is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
        return {"type": "image", "source": {"type": "url", "url": p.url}}
    raise _bad(field, "an image with url or data")


def _encode_parts(content: str | list[ContentPart] | None, field: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        pf = f"{field}.content[{j}]"
        if p.type in ("text", "refusal"):
            if p.text:
                out.append({"type": "text", "text": p.text})
        elif p.type == "image":
            out.append(_encode_image(p, pf))
        elif p.type == "thinking":
            out.append({"type": "thinking", "thinking": p.text or "", "signature": p.signature or ""})
        elif p.type == "redacted_thinking":
            out.append({"type": "redacted_thinking", "data": p.data or ""})
        else:
            raise _unsupported(f"{pf} ({p.type})")
    return out


def _tool_input(call: ToolCall, field: str) -> dict[str, Any]:
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise _bad(f"{field}.arguments", "JSON object text") from None
    if not isinstance(value, dict):
        raise _bad(f"{field}.arguments", "JSON object text")
    return value


def _encode_messages(req: GatewayRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:  # noqa: C901 - older than the complexity rule; to split
    """Return (system blocks, turns, system_was_plain_string)."""
    system: list[dict[str, Any]] = []
    system_plain = True
    n_system = 0
    # each turn: [role, blocks, source message count, single plain string content or None]
    turns: list[list[Any]] = []
    for i, m in enumerate(req.messages):
        field = f"messages[{i}]"
        if m.role in ("system", "developer"):
            n_system += 1
            if not isinstance(m.content, str):
                system_plain = False
            system.extend(b for b in _encode_parts(m.content, field) if b["type"] == "text")
            continue
        plain: str | None = None
        if m.role == "tool":
            if not m.tool_call_id:
                raise _bad(f"{field}.tool_call_id", "the id of the tool call this answers")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id}
            if isinstance(m.content, list):
                result["content"] = _encode_parts(m.content, field)
            else:
                result["content"] = m.content or ""
            role, blocks = "user", [result]
        elif m.role == "assistant":
            role = "assistant"
            blocks = _encode_parts(m.content, field)
            for k, call in enumerate(m.tool_calls or []):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _tool_input(call, f"{field}.tool_calls[{k}]"),
                    }
                )
            if isinstance(m.content, str) and not m.tool_calls:
                plain = m.content
        else:
            role = "user"
            blocks = _encode_parts(m.content, field)
            if isinstance(m.content, str):
                plain = m.content
        if turns and turns[-1][0] == role:
            # Anthropic wants alternating turns: merge consecutive same-role messages (tool results join the user turn)
            turns[-1][1].extend(blocks)
            turns[-1][2] += 1
        else:
            turns.append([role, blocks, 1, plain])
    out = []
    for role, blocks, count, plain in turns:
        content: Any = plain if (count == 1 and plain is not None) else blocks
        out.append({"role": role, "content": content})
    return system, out, system_plain and n_system == 1


def _encode_tool_choice(tc: str | dict[str, Any]) -> dict[str, Any]:
    if tc == "auto":
        return {"type": "auto"}
    if tc == "required":
        return {"type": "any"}
    if tc == "none":
        return {"type": "none"}
    if isinstance(tc, dict) and tc.get("type") == "function":
        fn = tc.get("function")
        name = tc.get("name") or (fn.get("name") if isinstance(fn, dict) else None)
        if isinstance(name, str):
            return {"type": "tool", "name": name}
    raise _unsupported(f"tool_choice {tc!r}")


def encode_request(req: GatewayRequest, *, slug: str) -> dict[str, Any]:  # noqa: C901 - older than the complexity rule; to split
    """Build the Anthropic Messages body for `req` (model = the provider's slug)."""
    refuse_openai_only_hints(req, PROVIDER)
    system, messages, system_plain = _encode_messages(req)
    body: dict[str, Any] = {"model": slug, "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS}
    if system:
        body["system"] = system[0]["text"] if system_plain else system
    body["messages"] = messages
    # Passed through: the SDK types no longer list them, but the API still honours them on models that
    # support sampling and answers 400 on those that do not (an explicit error, never a silent drop).
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.top_k is not None:
        body["top_k"] = req.top_k
    for name in ("presence_penalty", "frequency_penalty", "seed"):
        if getattr(req, name) is not None:
            raise _unsupported(name)
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.metadata:
        extra = set(req.metadata) - {"user_id"}
        if extra:
            raise _unsupported(f"metadata key {min(extra)!r} (only user_id)")
        body["metadata"] = {"user_id": req.metadata["user_id"]}
    if req.tools:
        tools = []
        for t in req.tools:
            tool: dict[str, Any] = {"name": t.name}
            if t.description is not None:
                tool["description"] = t.description
            tool["input_schema"] = (
                t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
            )
            if t.strict is not None:
                tool["strict"] = t.strict
            tools.append(tool)
        body["tools"] = tools
    if req.tool_choice is not None:
        body["tool_choice"] = _encode_tool_choice(req.tool_choice)
    output_config: dict[str, Any] = {}
    if req.response_format:
        # Anthropic has native structured outputs (`output_config.format`, a JSON schema the answer must
        # follow), so a JSON-schema answer maps there instead of a forced tool: the answer stays ordinary
        # text content and stop reasons/tool semantics are untouched.
        kind = req.response_format.get("type")
        if kind == "json_schema":
            js = req.response_format.get("json_schema") or {}
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise _bad("response_format.json_schema.schema", "a JSON schema object")
            output_config["format"] = {"type": "json_schema", "schema": schema}
        elif kind == "json_object":
            output_config["format"] = {"type": "json_schema", "schema": {"type": "object"}}
        elif kind != "text":
            raise _unsupported(f"response_format type {kind!r}")
    thinking_budget = req.thinking_budget
    if req.reasoning_effort is not None:
        effort = {"minimal": "low"}.get(req.reasoning_effort, req.reasoning_effort)
        if effort == "none":
            thinking_budget = 0 if thinking_budget is None else thinking_budget
        elif effort in _EFFORTS:
            output_config["effort"] = effort
        else:
            raise _unsupported(f"reasoning_effort {req.reasoning_effort!r}")
    if output_config:
        body["output_config"] = output_config
    if thinking_budget is not None:
        if thinking_budget < 0:
            body["thinking"] = {"type": "adaptive"}
        elif thinking_budget == 0:
            body["thinking"] = {"type": "disabled"}
        else:
            body["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
            if req.max_tokens is None and thinking_budget >= DEFAULT_MAX_TOKENS:
                # the budget must stay below max_tokens; leave the default room for the answer itself
                body["max_tokens"] = thinking_budget + DEFAULT_MAX_TOKENS
    if req.stream:
        body["stream"] = True
    return body


# --- upstream side: decode a response and a stream ----------------------------------------------------------


def usage_from(raw: dict[str, Any]) -> Usage:
    """Normalize an Anthropic `usage` object (input_tokens already excludes cache reads and writes)."""
    details = raw.get("output_tokens_details")
    return Usage(
        input_tokens=_int(raw.get("input_tokens")),
        output_tokens=_int(raw.get("output_tokens")),
        cached_input_tokens=_int(raw.get("cache_read_input_tokens")),
        cache_write_tokens=_int(raw.get("cache_creation_input_tokens")),
        reasoning_tokens=_int(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
    )


def _stop_in(reason: Any) -> str | None:
    if reason is None:
        return None
    return _STOP_IN.get(str(reason), "stop")


def decode_response(body: dict[str, Any]) -> GatewayResponse:
    """Decode an Anthropic Message into a GatewayResponse."""
    blocks: list[ContentPart] = []
    calls: list[ToolCall] = []
    for block in body.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            blocks.append(ContentPart(type="text", text=block.get("text", "")))
        elif kind == "thinking":
            blocks.append(
                ContentPart(type="thinking", text=block.get("thinking", ""), signature=block.get("signature"))
            )
        elif kind == "redacted_thinking":
            blocks.append(ContentPart(type="redacted_thinking", data=block.get("data", "")))
        elif kind == "tool_use":
            calls.append(
                ToolCall(id=block["id"], name=block["name"], arguments=_args_text(block.get("input", {})))
            )
        # server-tool blocks (web search results, code execution…) stay in `raw`
    raw_usage = body.get("usage") or {}
    return GatewayResponse(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        content="".join(b.text or "" for b in blocks if b.type == "text"),
        stop_reason=_stop_in(body.get("stop_reason")),
        content_blocks=blocks or None,
        tool_calls=calls or None,
        usage=usage_from(raw_usage),
        id=body.get("id"),
        raw_usage=raw_usage or None,
        provider_request_id=body.get("id"),
        raw=body,
    )


class StreamDecoder:
    """Turn Anthropic SSE events into normalized stream events.

    UsageEvents carry cumulative totals (input on message_start, everything on message_delta): the last one wins.
    """

    def __init__(self) -> None:
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, Any] = {}
        self.done = self.ended = False  # message_stop seen: nothing follows it

    def feed(self, ev: SSEEvent) -> list[StreamEvent]:  # noqa: C901 - older than the complexity rule; to split
        """Decode one upstream SSE event."""
        if not ev.data:
            return []
        try:
            data = loads(ev.data)
        except ValueError:
            raise UpstreamError(
                "anthropic stream: invalid JSON event", "upstream_error", kind="protocol"
            ) from None
        kind = data.get("type") or ev.event
        if kind == "message_stop":
            self.done = self.ended = True
            return []
        if kind == "message_start":
            msg = data.get("message") or {}
            out: list[StreamEvent] = [StreamStart(id=str(msg.get("id", "")), model=str(msg.get("model", "")))]
            if msg.get("usage"):
                self._usage.update({k: v for k, v in msg["usage"].items() if v is not None})
                out.append(UsageEvent(usage=usage_from(self._usage), raw=dict(self._usage)))
            return out
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            btype = block.get("type")
            if btype == "text" and block.get("text"):
                return [TextDelta(text=block["text"])]
            if btype == "thinking" and block.get("thinking"):
                return [ThinkingDelta(text=block["thinking"])]
            if btype == "tool_use":
                n = len(self._tool_index)
                self._tool_index[int(data.get("index", 0))] = n
                args = _args_text(block["input"]) if block.get("input") else ""
                return [ToolCallDelta(index=n, id=block.get("id"), name=block.get("name"), arguments=args)]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [TextDelta(text=delta.get("text", ""))]
            if dtype == "input_json_delta":
                tool = self._tool_index.get(int(data.get("index", 0)))
                if tool is None:
                    raise UpstreamError(
                        "anthropic stream: input_json_delta outside a tool_use block", kind="protocol"
                    )
                return [ToolCallDelta(index=tool, arguments=delta.get("partial_json", ""))]
            if dtype == "thinking_delta":
                return [ThinkingDelta(text=delta.get("thinking", ""))]
            if dtype == "signature_delta":
                return [ThinkingDelta(signature=delta.get("signature", ""))]
            return []
        if kind == "message_delta":
            out = []
            usage = data.get("usage")
            if usage:
                self._usage.update({k: v for k, v in usage.items() if v is not None})
                out.append(UsageEvent(usage=usage_from(self._usage), raw=dict(self._usage)))
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is not None:
                out.append(StreamStop(stop_reason=_stop_in(reason) or "stop"))
            return out
        if kind == "error":
            err = data.get("error") or {}
            raise UpstreamError(
                f"anthropic stream error: {err.get('message', 'unknown error')}",
                "upstream_error",
                kind="5xx",
                upstream_body=ev.data.encode(),
            )
        return []  # ping, content_block_stop, message_stop


# --- client side: encode a response, a stream, an error -----------------------------------------------------


def _usage_out(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def _tool_input_loose(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message_id(raw_id: str | None) -> str:
    if raw_id and raw_id.startswith("msg_"):
        return raw_id
    return "msg_" + (raw_id or uuid.uuid4().hex)


def encode_response(resp: GatewayResponse, *, model: str) -> bytes:
    """Encode a unary answer as an Anthropic Message."""
    content: list[dict[str, Any]] = []
    if resp.content_blocks is not None:
        for p in resp.content_blocks:
            if p.type in ("text", "refusal"):
                content.append({"type": "text", "text": p.text or ""})
            elif p.type == "thinking":
                content.append({"type": "thinking", "thinking": p.text or "", "signature": p.signature or ""})
            elif p.type == "redacted_thinking":
                content.append({"type": "redacted_thinking", "data": p.data or ""})
    elif resp.content:
        content.append({"type": "text", "text": resp.content})
    for call in resp.tool_calls or []:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input_loose(call.arguments)}
        )
    body = {
        "id": _message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_OUT.get(resp.stop_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage_out(resp.usage),
    }
    return _dumps(body)


class StreamEncoder:
    """Encode normalized stream events as the full Anthropic SSE lifecycle."""

    def __init__(self, *, model: str, request_id: str) -> None:
        self.model = model
        self.id = _message_id(request_id)
        self._started = False
        self._index = -1
        self._open: str | None = None
        self._tool_blocks: dict[int, int] = {}
        self._usage = Usage()
        self._stop: str | None = None
        self._done = False

    def _emit(self, obj: dict[str, Any]) -> bytes:
        return sse(_dumps(obj), obj["type"])

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._usage.input_tokens, "output_tokens": 0},
        }
        return self._emit({"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return self._emit({"type": "content_block_stop", "index": self._index})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        return out + self._emit({"type": "content_block_start", "index": self._index, "content_block": block})

    def events(self, ev: StreamEvent) -> bytes:  # noqa: C901 - older than the complexity rule; to split
        """Encode one normalized event (possibly nothing)."""
        if self._done:
            return b""
        out = self._start()
        if isinstance(ev, TextDelta):
            if not ev.text:
                return out
            if self._open != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            out += self._emit(
                {
                    "type": "content_block_delta",
                    "index": self._index,
                    "delta": {"type": "text_delta", "text": ev.text},
                }
            )
        elif isinstance(ev, ThinkingDelta):
            if self._open != "thinking":
                out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            if ev.text:
                delta = {"type": "thinking_delta", "thinking": ev.text}
                out += self._emit({"type": "content_block_delta", "index": self._index, "delta": delta})
            if ev.signature:
                delta = {"type": "signature_delta", "signature": ev.signature}
                out += self._emit({"type": "content_block_delta", "index": self._index, "delta": delta})
        elif isinstance(ev, ToolCallDelta):
            if ev.index not in self._tool_blocks:
                block = {
                    "type": "tool_use",
                    "id": ev.id or f"toolu_{self.id[4:]}_{ev.index}",
                    "name": ev.name or "",
                    "input": {},
                }
                out += self._open_block("tool_use", block)
                self._tool_blocks[ev.index] = self._index
            if ev.arguments:
                delta = {"type": "input_json_delta", "partial_json": ev.arguments}
                index = self._tool_blocks[ev.index]
                out += self._emit({"type": "content_block_delta", "index": index, "delta": delta})
        elif isinstance(ev, UsageEvent):
            self._usage = ev.usage
        elif isinstance(ev, StreamStop):
            self._stop = ev.stop_reason
        return out

    event = events  # the chat dialect's spelling

    def finish(self) -> bytes:
        """End the stream cleanly: close the open block, message_delta (stop reason, usage), message_stop."""
        if self._done:
            return b""
        out = self._start() + self._close()
        self._done = True
        delta = {"stop_reason": _STOP_OUT.get(self._stop or "stop", "end_turn"), "stop_sequence": None}
        out += self._emit({"type": "message_delta", "delta": delta, "usage": _usage_out(self._usage)})
        return out + self._emit({"type": "message_stop"})

    def fail(self, err: GatewayError) -> bytes:
        """End the stream with an explicit Anthropic error event."""
        if self._done:
            return b""
        self._done = True
        return sse(error_body(err), "error")


def error_body(err: GatewayError) -> bytes:
    """Render `err` as an Anthropic error body (the SDK maps the HTTP status to its exception class)."""
    status = err.status
    etype = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"type": etype, "message": err.message, "code": err.code}
    for k, v in err.extra.items():
        error.setdefault(k, v)
    return _dumps({"type": "error", "error": error})


# --- the dialect's two sides (dialects.contract) -------------------------------------------------------------


def stream_encoder(*, model: str, request_id: str, options: StreamOptions) -> StreamEncoder:
    """A client stream encoder (Anthropic streams always carry usage: no option applies)."""
    return StreamEncoder(model=model, request_id=request_id)


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
