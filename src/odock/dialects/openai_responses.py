"""OpenAI Responses dialect: `POST /v1/responses` bodies, Response objects and the typed SSE event stream.

Wire format source: the `openai` SDK's `types.responses` (ResponseCreateParams, Response, ResponseStreamEvent).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from odock.dialects.contract import ClientSide, StreamOptions, UpstreamSide
from odock.dialects.fields import bad as _bad
from odock.dialects.fields import count as _int
from odock.dialects.fields import dumps as _dumps
from odock.dialects.fields import expect_dict as _dict
from odock.dialects.fields import expect_list as _list
from odock.dialects.fields import expect_str as _str
from odock.dialects.fields import loads
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

PROVIDER = "openai"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _unsupported(field: str) -> BadRequest:
    return BadRequest(f"{field} is not supported by openai responses", "invalid_request")


def _num(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(key, "a number")
    return float(v)


# --- client side: decode a request --------------------------------------------------------------------------


def _decode_parts(content: Any, field: str) -> str | list[ContentPart]:
    if isinstance(content, str):
        return content
    parts: list[ContentPart] = []
    for j, raw in enumerate(_list(content, field)):
        pf = f"{field}[{j}]"
        part = _dict(raw, pf)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(ContentPart(type="text", text=_str(part.get("text"), f"{pf}.text")))
        elif kind == "refusal":
            parts.append(ContentPart(type="refusal", text=_str(part.get("refusal"), f"{pf}.refusal")))
        elif kind == "input_image":
            url = _str(part.get("image_url"), f"{pf}.image_url")
            detail = part.get("detail")
            detail = detail if isinstance(detail, str) and detail != "auto" else None
            if url.startswith("data:"):
                head, _, data = url[5:].partition(",")
                parts.append(
                    ContentPart(type="image", data=data, media_type=head.split(";")[0], detail=detail)
                )
            else:
                parts.append(ContentPart(type="image", url=url, detail=detail))
        else:
            raise _bad(f"{pf}.type", f"input_text, input_image or output_text, got {kind!r}")
    return parts


def _assistant(messages: list[Message]) -> Message:
    """Return the trailing assistant message, opening one if the last message is not an assistant turn."""
    if not messages or messages[-1].role != "assistant":
        messages.append(Message(role="assistant"))
    return messages[-1]


def _decode_input(raw: Any) -> list[Message]:  # noqa: C901 - older than the complexity rule; to split
    if isinstance(raw, str):
        return [Message(role="user", content=raw)]
    messages: list[Message] = []
    for i, item in enumerate(_list(raw, "input")):
        field = f"input[{i}]"
        item = _dict(item, field)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"{field}.role", "'user', 'assistant', 'system' or 'developer'")
            content = _decode_parts(item.get("content"), f"{field}.content")
            if role == "assistant":
                msg = _assistant(messages)
                if msg.tool_calls:  # text after calls starts a new turn
                    messages.append(Message(role="assistant"))
                    msg = messages[-1]
                if msg.content is None:
                    msg.content = content
                else:
                    prev = (
                        [ContentPart(type="text", text=msg.content)]
                        if isinstance(msg.content, str)
                        else msg.content
                    )
                    more = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
                    msg.content = prev + more
            else:
                messages.append(Message(role=role, content=content))
        elif kind == "function_call":
            msg = _assistant(messages)
            args = item.get("arguments", "")
            msg.tool_calls = [
                *(msg.tool_calls or []),
                ToolCall(
                    id=_str(item.get("call_id"), f"{field}.call_id"),
                    name=_str(item.get("name"), f"{field}.name"),
                    arguments=_str(args, f"{field}.arguments"),
                ),
            ]
        elif kind == "function_call_output":
            output = item.get("output")
            result = output if isinstance(output, str) else _decode_parts(output, f"{field}.output")
            messages.append(
                Message(
                    role="tool", tool_call_id=_str(item.get("call_id"), f"{field}.call_id"), content=result
                )
            )
        elif kind == "reasoning":
            msg = _assistant(messages)
            summary = "".join(
                _str(_dict(s, f"{field}.summary[{k}]").get("text"), f"{field}.summary[{k}].text")
                for k, s in enumerate(_list(item.get("summary", []), f"{field}.summary"))
            )
            enc = item.get("encrypted_content")
            part = ContentPart(type="thinking", text=summary, signature=enc if isinstance(enc, str) else None)
            existing = msg.content
            if existing is None:
                msg.content = [part]
            elif isinstance(existing, str):
                msg.content = [part, ContentPart(type="text", text=existing)]
            else:
                existing.append(part)
        else:
            raise _bad(
                f"{field}.type", f"message, function_call, function_call_output or reasoning, got {kind!r}"
            )
    return messages


def _decode_tools(raw: Any) -> list[Tool]:
    tools = []
    for i, t in enumerate(_list(raw, "tools")):
        t = _dict(t, f"tools[{i}]")
        if t.get("type") != "function":
            raise _bad(f"tools[{i}].type", "'function' (hosted tools are not supported)")
        params = t.get("parameters")
        desc = t.get("description")
        strict = t.get("strict")
        tools.append(
            Tool(
                name=_str(t.get("name"), f"tools[{i}].name"),
                description=_str(desc, f"tools[{i}].description") if desc is not None else None,
                parameters=_dict(params, f"tools[{i}].parameters") if params is not None else None,
                strict=strict if isinstance(strict, bool) else None,
            )
        )
    return tools


def decode_request(body: dict[str, Any], *, path_model: str | None = None) -> GatewayRequest:  # noqa: C901 - older than the complexity rule; to split
    """Decode a Responses API request body into a GatewayRequest."""
    body = _dict(body, "body")
    model = path_model or body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string")
    messages: list[Message] = []
    if body.get("instructions") is not None:
        messages.append(Message(role="system", content=_str(body["instructions"], "instructions")))
    if body.get("input") is not None:
        messages.extend(_decode_input(body["input"]))
    req = GatewayRequest(model=model, messages=messages, raw=body)
    req.temperature = _num(body, "temperature")
    req.top_p = _num(body, "top_p")
    mot = body.get("max_output_tokens")
    if mot is not None:
        if isinstance(mot, bool) or not isinstance(mot, int):
            raise _bad("max_output_tokens", "an integer")
        req.max_tokens = mot
    if body.get("metadata") is not None:
        req.metadata = dict(_dict(body["metadata"], "metadata"))
    if body.get("tools") is not None:
        req.tools = _decode_tools(body["tools"]) or None
    tc = body.get("tool_choice")
    if tc is not None:
        if tc in ("auto", "none", "required"):
            req.tool_choice = tc
        elif isinstance(tc, dict) and tc.get("type") == "function":
            req.tool_choice = {"type": "function", "name": _str(tc.get("name"), "tool_choice.name")}
        else:
            raise _bad("tool_choice", "'auto', 'none', 'required' or a function choice")
    text = body.get("text")
    if text is not None:
        fmt = _dict(text, "text").get("format")
        if fmt is not None:
            fmt = _dict(fmt, "text.format")
            kind = fmt.get("type")
            if kind == "json_schema":
                js: dict[str, Any] = {
                    "name": _str(fmt.get("name"), "text.format.name"),
                    "schema": _dict(fmt.get("schema"), "text.format.schema"),
                }
                for key in ("strict", "description"):
                    if fmt.get(key) is not None:
                        js[key] = fmt[key]
                req.response_format = {"type": "json_schema", "json_schema": js}
            elif kind in ("json_object", "text"):
                req.response_format = {"type": kind}
            else:
                raise _bad("text.format.type", "'text', 'json_object' or 'json_schema'")
    reasoning = body.get("reasoning")
    if reasoning is not None and _dict(reasoning, "reasoning").get("effort") is not None:
        req.reasoning_effort = _str(reasoning["effort"], "reasoning.effort")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "a boolean")
    req.stream = stream
    return req


# --- upstream side: encode a request ------------------------------------------------------------------------


def _encode_content(content: str | list[ContentPart] | None, field: str) -> str | list[dict[str, Any]]:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        if p.type in ("text", "refusal"):
            out.append({"type": "input_text", "text": p.text or ""})
        elif p.type == "image":
            url = p.url or (
                f"data:{p.media_type};base64,{p.data}" if p.data is not None and p.media_type else None
            )
            if url is None:
                raise _bad(f"{field}.content[{j}]", "an image with url, or data with a media type")
            out.append({"type": "input_image", "image_url": url, "detail": p.detail or "auto"})
        else:
            raise _unsupported(f"{field}.content[{j}] ({p.type})")
    return out


def encode_request(req: GatewayRequest, *, slug: str) -> dict[str, Any]:  # noqa: C901 - older than the complexity rule; to split
    """Build the Responses API body for `req`."""
    for name in ("top_k", "stop", "presence_penalty", "frequency_penalty", "seed"):
        if getattr(req, name):
            raise _unsupported(name)
    if req.thinking_budget is not None:
        raise _unsupported("thinking_budget (use reasoning_effort)")
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        field = f"messages[{i}]"
        if m.role == "system":
            instructions.append(m.text())
        elif m.role in ("user", "developer"):
            items.append({"role": m.role, "content": _encode_content(m.content, field)})
        elif m.role == "tool":
            if not m.tool_call_id:
                raise _bad(f"{field}.tool_call_id", "the id of the call this answers")
            items.append({"type": "function_call_output", "call_id": m.tool_call_id, "output": m.text()})
        else:
            texts: list[str] = []
            if isinstance(m.content, str):
                texts.append(m.content)
            for p in m.content if isinstance(m.content, list) else []:
                if p.type == "thinking":
                    # only OpenAI's own encrypted reasoning can be replayed; other providers' thinking is dropped
                    # from history like the chat dialect does (it is past reasoning, not conversation content)
                    if p.signature and not p.text:
                        continue
                    item: dict[str, Any] = {
                        "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": p.text or ""}],
                    }
                    if p.signature:
                        item["encrypted_content"] = p.signature
                    items.append(item)
                elif p.type in ("text", "refusal"):
                    texts.append(p.text or "")
                elif p.type != "redacted_thinking":
                    raise _unsupported(f"{field}.content ({p.type}) in an assistant turn")
            if any(texts):
                items.append({"role": "assistant", "content": "".join(texts)})
            for call in m.tool_calls or []:
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                    }
                )
    body: dict[str, Any] = {"model": slug}
    if instructions:
        body["instructions"] = "\n\n".join(instructions)
    body["input"] = items
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.max_tokens is not None:
        body["max_output_tokens"] = req.max_tokens
    if req.metadata:
        body["metadata"] = req.metadata
    if req.tools:
        tools = []
        for t in req.tools:
            tool: dict[str, Any] = {"type": "function", "name": t.name}
            if t.description is not None:
                tool["description"] = t.description
            tool["parameters"] = t.parameters
            tool["strict"] = t.strict
            tools.append(tool)
        body["tools"] = tools
    if req.tool_choice is not None:
        tc = req.tool_choice
        if isinstance(tc, dict):
            fn = tc.get("function")
            choice = tc.get("name") or (fn.get("name") if isinstance(fn, dict) else None)
            if not isinstance(choice, str):
                raise _bad("tool_choice.name", "a function name")
            body["tool_choice"] = {"type": "function", "name": choice}
        else:
            body["tool_choice"] = tc
    if req.response_format:
        kind = req.response_format.get("type")
        if kind == "json_schema":
            js = req.response_format.get("json_schema") or {}
            fmt: dict[str, Any] = {
                "type": "json_schema",
                "name": js.get("name") or "response",
                "schema": js.get("schema"),
            }
            for key in ("strict", "description"):
                if js.get(key) is not None:
                    fmt[key] = js[key]
            body["text"] = {"format": fmt}
        elif kind in ("json_object", "text"):
            body["text"] = {"format": {"type": kind}}
        else:
            raise _unsupported(f"response_format type {kind!r}")
    if req.reasoning_effort is not None:
        body["reasoning"] = {"effort": req.reasoning_effort}
    if req.stream:
        body["stream"] = True
    return body


# --- upstream side: decode a response and a stream ----------------------------------------------------------


def _details(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def usage_from(raw: dict[str, Any]) -> Usage:
    """Normalize Responses `usage` (input_tokens includes cache reads and writes; output includes reasoning)."""
    ind = _details(raw, "input_tokens_details")
    outd = _details(raw, "output_tokens_details")
    cached = _int(ind.get("cached_tokens"))
    written = _int(ind.get("cache_write_tokens"))
    return Usage(
        input_tokens=max(_int(raw.get("input_tokens")) - cached - written, 0),
        output_tokens=_int(raw.get("output_tokens")),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=_int(outd.get("reasoning_tokens")),
    )


def _stop_in(body: dict[str, Any], has_calls: bool) -> str:
    if body.get("status") == "incomplete":
        reason = (body.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if has_calls else "stop"


def decode_response(body: dict[str, Any]) -> GatewayResponse:
    """Decode a Response object into a GatewayResponse."""
    if body.get("status") == "failed":
        err = body.get("error") or {}
        raise UpstreamError(f"openai response failed: {err.get('message', 'unknown error')}", kind="5xx")
    blocks: list[ContentPart] = []
    calls: list[ToolCall] = []
    for item in body.get("output") or []:
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    blocks.append(ContentPart(type="text", text=part.get("text", "")))
                elif part.get("type") == "refusal":
                    blocks.append(ContentPart(type="refusal", text=part.get("refusal", "")))
        elif kind == "function_call":
            calls.append(ToolCall(id=item["call_id"], name=item["name"], arguments=item.get("arguments", "")))
        elif kind == "reasoning":
            summary = "".join(s.get("text", "") for s in item.get("summary") or [])
            blocks.append(ContentPart(type="thinking", text=summary, signature=item.get("encrypted_content")))
    raw_usage = body.get("usage") or {}
    return GatewayResponse(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        content="".join(b.text or "" for b in blocks if b.type == "text"),
        stop_reason=_stop_in(body, bool(calls)),
        content_blocks=blocks or None,
        tool_calls=calls or None,
        usage=usage_from(raw_usage),
        id=body.get("id"),
        created=int(body["created_at"]) if isinstance(body.get("created_at"), int | float) else None,
        raw_usage=raw_usage or None,
        provider_request_id=body.get("id"),
        raw=body,
    )


class StreamDecoder:
    """Turn Responses SSE events into normalized stream events."""

    def __init__(self) -> None:
        self._tools: dict[str, int] = {}
        self._has_text_for: set[str] = set()
        self.done = self.ended = False  # response.completed/incomplete seen: the last event of the stream

    def feed(self, ev: SSEEvent) -> list[StreamEvent]:  # noqa: C901 - older than the complexity rule; to split
        """Decode one upstream SSE event."""
        if not ev.data or ev.data == "[DONE]":
            return []
        try:
            data = loads(ev.data)
        except ValueError:
            raise UpstreamError("openai responses stream: invalid JSON event", kind="protocol") from None
        kind = data.get("type") or ev.event
        if kind == "response.created":
            resp = data.get("response") or {}
            created = resp.get("created_at")
            return [
                StreamStart(
                    id=str(resp.get("id", "")),
                    model=str(resp.get("model", "")),
                    created=int(created) if isinstance(created, int | float) else 0,
                )
            ]
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                index = len(self._tools)
                self._tools[str(item.get("id") or data.get("output_index"))] = index
                return [
                    ToolCallDelta(
                        index=index,
                        id=item.get("call_id"),
                        name=item.get("name"),
                        arguments=item.get("arguments") or "",
                    )
                ]
            return []
        if kind == "response.function_call_arguments.delta":
            tool = self._tools.get(str(data.get("item_id")))
            if tool is None:
                raise UpstreamError("openai responses stream: arguments for an unknown call", kind="protocol")
            return [ToolCallDelta(index=tool, arguments=data.get("delta", ""))]
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            return [TextDelta(text=data.get("delta", ""))]
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return [ThinkingDelta(text=data.get("delta", ""))]
        if kind == "response.output_item.done":
            item = data.get("item") or {}
            if item.get("type") == "reasoning" and item.get("encrypted_content"):
                return [ThinkingDelta(signature=item["encrypted_content"])]
            return []
        if kind in ("response.completed", "response.incomplete"):
            resp = data.get("response") or {}
            out: list[StreamEvent] = []
            if resp.get("usage"):
                out.append(UsageEvent(usage=usage_from(resp["usage"]), raw=resp["usage"]))
            out.append(StreamStop(stop_reason=_stop_in(resp, bool(self._tools))))
            self.done = self.ended = True
            return out
        if kind in ("response.failed", "error"):
            err = (data.get("response") or {}).get("error") or data
            raise UpstreamError(
                f"openai responses stream error: {err.get('message', 'unknown error')}",
                "upstream_error",
                kind="5xx",
                upstream_body=ev.data.encode(),
            )
        return []


# --- client side: encode a response, a stream, an error -----------------------------------------------------


def _usage_out(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.total_input,
        "input_tokens_details": {
            "cached_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total,
    }


def _response_id(raw: str | None) -> str:
    if raw and raw.startswith("resp_"):
        return raw
    return "resp_" + (raw or uuid.uuid4().hex)


def _envelope(
    rid: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    stop: str | None,
) -> dict[str, Any]:
    incomplete = None
    if status == "incomplete":
        incomplete = {"reason": "content_filter" if stop == "content_filter" else "max_output_tokens"}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _usage_out(usage) if usage is not None else None,
    }


def _status(stop: str | None) -> str:
    return "incomplete" if stop in ("length", "content_filter") else "completed"


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status != "in_progress" else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def _call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def _reasoning_item(item_id: str, text: str, signature: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": []}
    if text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    if signature:
        item["encrypted_content"] = signature
    return item


def encode_response(resp: GatewayResponse, *, model: str) -> bytes:
    """Encode a unary answer as a Responses API Response object."""
    rid = _response_id(resp.id)
    output: list[dict[str, Any]] = []
    blocks = resp.content_blocks
    if blocks is None:
        blocks = [ContentPart(type="text", text=resp.content)] if resp.content else []
    text = ""
    for p in blocks:
        if p.type == "thinking":
            output.append(_reasoning_item(f"rs_{rid[5:]}_{len(output)}", p.text or "", p.signature))
        elif p.type in ("text", "refusal"):
            text += p.text or ""
    if text:
        output.append(_message_item(f"msg_{rid[5:]}", text, "completed"))
    for k, call in enumerate(resp.tool_calls or []):
        output.append(_call_item(f"fc_{rid[5:]}_{k}", call, "completed"))
    body = _envelope(
        rid,
        model,
        resp.created or int(time.time()),
        _status(resp.stop_reason),
        output,
        resp.usage,
        resp.stop_reason,
    )
    return _dumps(body)


class StreamEncoder:
    """Encode normalized events as the full Responses event sequence, each with a sequence_number."""

    def __init__(self, *, model: str, request_id: str) -> None:
        self.model = model
        self.id = _response_id(request_id)
        self.created = int(time.time())
        self._seq = 0
        self._started = False
        self._done = False
        self._output: list[dict[str, Any]] = []  # finished items
        self._open: dict[str, Any] | None = None  # {"kind", "item", "text"/"call"}
        self._tools: dict[int, int] = {}  # tool index -> output index
        self._calls: dict[int, ToolCall] = {}
        self._usage: Usage | None = None
        self._stop: str | None = None

    def _emit(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self._seq
        self._seq += 1
        return sse(_dumps(obj), obj["type"])

    def _env(self, status: str) -> dict[str, Any]:
        usage = self._usage if status != "in_progress" else None
        return _envelope(self.id, self.model, self.created, status, list(self._output), usage, self._stop)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._emit({"type": "response.created", "response": self._env("in_progress")}) + self._emit(
            {"type": "response.in_progress", "response": self._env("in_progress")}
        )

    def _close(self) -> bytes:
        cur = self._open
        if cur is None:
            return b""
        self._open = None
        index = len(self._output)
        item_id = cur["id"]
        out = b""
        if cur["kind"] == "text":
            part = {"type": "output_text", "text": cur["text"], "annotations": []}
            base = {"item_id": item_id, "output_index": index, "content_index": 0}
            out += self._emit(
                {"type": "response.output_text.done", **base, "text": cur["text"], "logprobs": []}
            )
            out += self._emit({"type": "response.content_part.done", **base, "part": part})
            item = _message_item(item_id, cur["text"], "completed")
        elif cur["kind"] == "reasoning":
            base = {"item_id": item_id, "output_index": index, "summary_index": 0}
            part = {"type": "summary_text", "text": cur["text"]}
            out += self._emit({"type": "response.reasoning_summary_text.done", **base, "text": cur["text"]})
            out += self._emit({"type": "response.reasoning_summary_part.done", **base, "part": part})
            item = _reasoning_item(item_id, cur["text"], cur["signature"])
        else:
            call: ToolCall = cur["call"]
            out += self._emit(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": index,
                    "arguments": call.arguments,
                }
            )
            item = _call_item(item_id, call, "completed")
        self._output.append(item)
        return out + self._emit({"type": "response.output_item.done", "output_index": index, "item": item})

    def _open_item(self, kind: str, item: dict[str, Any], **state: Any) -> bytes:
        out = self._close()
        self._open = {"kind": kind, "id": item["id"], **state}
        return out + self._emit(
            {"type": "response.output_item.added", "output_index": len(self._output), "item": item}
        )

    def events(self, ev: StreamEvent) -> bytes:  # noqa: C901 - older than the complexity rule; to split
        """Encode one normalized event (possibly nothing)."""
        if self._done:
            return b""
        out = self._start()
        index = len(self._output)
        if isinstance(ev, TextDelta):
            if not ev.text:
                return out
            if self._open is None or self._open["kind"] != "text":
                item_id = f"msg_{self.id[5:]}_{index if self._open is None else index + 1}"
                out += self._open_item("text", _message_item(item_id, "", "in_progress"), text="")
                index = len(self._output)
                out += self._emit(
                    {
                        "type": "response.content_part.added",
                        "item_id": item_id,
                        "output_index": index,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    }
                )
            assert self._open is not None
            self._open["text"] += ev.text
            out += self._emit(
                {
                    "type": "response.output_text.delta",
                    "item_id": self._open["id"],
                    "output_index": index,
                    "content_index": 0,
                    "delta": ev.text,
                    "logprobs": [],
                }
            )
        elif isinstance(ev, ThinkingDelta):
            if self._open is None or self._open["kind"] != "reasoning":
                item_id = f"rs_{self.id[5:]}_{index if self._open is None else index + 1}"
                item = {"type": "reasoning", "id": item_id, "summary": []}
                out += self._open_item("reasoning", item, text="", signature=None)
                index = len(self._output)
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_part.added",
                        "item_id": item_id,
                        "output_index": index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""},
                    }
                )
            assert self._open is not None
            if ev.signature:
                self._open["signature"] = ev.signature
            if ev.text:
                self._open["text"] += ev.text
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_text.delta",
                        "item_id": self._open["id"],
                        "output_index": index,
                        "summary_index": 0,
                        "delta": ev.text,
                    }
                )
        elif isinstance(ev, ToolCallDelta):
            if ev.index not in self._tools:
                call = ToolCall(
                    id=ev.id or f"call_{self.id[5:]}_{ev.index}", name=ev.name or "", arguments=""
                )
                item_id = f"fc_{self.id[5:]}_{ev.index}"
                out += self._open_item("call", _call_item(item_id, call, "in_progress"), call=call)
                self._tools[ev.index] = len(self._output)
                self._calls[ev.index] = call
            if ev.arguments:
                call = self._calls[ev.index]
                call.arguments += ev.arguments
                out += self._emit(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": f"fc_{self.id[5:]}_{ev.index}",
                        "output_index": self._tools[ev.index],
                        "delta": ev.arguments,
                    }
                )
        elif isinstance(ev, UsageEvent):
            self._usage = ev.usage
        elif isinstance(ev, StreamStop):
            self._stop = ev.stop_reason
        return out

    event = events

    def finish(self) -> bytes:
        """End cleanly with response.completed (or response.incomplete for length/content_filter stops)."""
        if self._done:
            return b""
        out = self._start() + self._close()
        self._done = True
        status = _status(self._stop)
        if self._usage is None:
            self._usage = Usage()
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._emit({"type": kind, "response": self._env(status)})

    def fail(self, err: GatewayError) -> bytes:
        """End with an `error` event and response.failed (the SDK surfaces both; nothing looks complete)."""
        if self._done:
            return b""
        out = self._start()
        self._done = True
        out += self._emit({"type": "error", "code": err.code, "message": err.message, "param": None})
        failed = self._env("failed")
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        failed["error"] = {"code": code, "message": err.message}
        return out + self._emit({"type": "response.failed", "response": failed})


def error_body(err: GatewayError) -> bytes:
    """Render `err` in the OpenAI error shape ({"error": {message, type, param, code}})."""
    etype = _ERROR_TYPES.get(err.status) or ("server_error" if err.status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {
        "message": err.message,
        "type": etype,
        "param": err.extra.get("param"),
        "code": err.code,
    }
    for k, v in err.extra.items():
        error.setdefault(k, v)
    return _dumps({"error": error})


# --- the dialect's two sides (dialects.contract) -------------------------------------------------------------


def stream_encoder(*, model: str, request_id: str, options: StreamOptions) -> StreamEncoder:
    """A client stream encoder (Responses streams always end with their usage: no option applies)."""
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
