"""Gemini generateContent dialect: `/v1beta/models/{model}:generateContent` / `:streamGenerateContent`.

Wire format source: the `google.genai` SDK's types (GenerateContentResponse, Content, Part, GenerationConfig), in the
REST API's camelCase spelling. The model travels in the URL, so bodies carry none.
"""

from __future__ import annotations

import json
import mimetypes
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

PROVIDER = "gemini"

_FILTER_REASONS = {
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
}
_STOP_OUT = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
_LEVELS = {
    "minimal": "MINIMAL",
    "low": "LOW",
    "medium": "MEDIUM",
    "high": "HIGH",
    "xhigh": "XHIGH",
    "max": "XHIGH",
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _unsupported(field: str) -> BadRequest:
    return unsupported(field, PROVIDER)


def _num(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(field, "a number")
    return float(v)


def _intv(v: Any, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(field, "an integer")
    return v


def _args_text(args: Any) -> str:
    # Gemini sends whole argument objects (never fragments), so one serialization serves unary and stream.
    return json.dumps(args if args is not None else {}, ensure_ascii=False)


def _lower_schema(schema: Any) -> Any:
    """Convert a Gemini OpenAPI-subset Schema (TYPE names upper-case, `nullable`) to JSON Schema."""
    if isinstance(schema, list):
        return [_lower_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            out["type"] = v.lower()
        elif k == "nullable":
            continue
        elif k in ("properties", "$defs", "definitions") and isinstance(v, dict):
            out[k] = {name: _lower_schema(s) for name, s in v.items()}
        else:
            out[k] = _lower_schema(v)
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# --- client side: decode a request --------------------------------------------------------------------------


def _decode_inline(blob: dict[str, Any], field: str) -> ContentPart:
    mime = _str(blob.get("mimeType"), f"{field}.mimeType")
    data = _str(blob.get("data"), f"{field}.data")
    if mime.startswith("image/"):
        return ContentPart(type="image", data=data, media_type=mime)
    if mime.startswith("audio/"):
        return ContentPart(type="audio", data=data, media_type=mime)
    raise _bad(f"{field}.mimeType", "an image/* or audio/* type")


class _Turns:
    """Collect decoded messages, pairing function responses with the calls they answer."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.pending: list[ToolCall] = []
        self.n_calls = 0

    def call_id(self, fc: dict[str, Any]) -> str:
        self.n_calls += 1
        cid = fc.get("id")
        return cid if isinstance(cid, str) and cid else f"call_{self.n_calls - 1}"

    def answer(self, name: str, rid: Any) -> str:
        for k, call in enumerate(self.pending):
            if (isinstance(rid, str) and call.id == rid) or (not isinstance(rid, str) and call.name == name):
                del self.pending[k]
                return call.id
        if isinstance(rid, str) and rid:
            return rid
        raise _bad("functionResponse", f"a preceding functionCall named {name!r}")


def _decode_content(i: int, raw: Any, turns: _Turns) -> None:  # noqa: C901 - older than the complexity rule; to split
    field = f"contents[{i}]"
    content = _dict(raw, field)
    role = content.get("role", "user")
    if role not in ("user", "model", "function"):
        raise _bad(f"{field}.role", "'user' or 'model'")
    parts_in = _list(content.get("parts"), f"{field}.parts")
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, raw_part in enumerate(parts_in):
        pf = f"{field}.parts[{j}]"
        part = _dict(raw_part, pf)
        sig = part.get("thoughtSignature")
        if part.get("thought") is True:
            text = _str(part.get("text", ""), f"{pf}.text")
            parts.append(
                ContentPart(type="thinking", text=text, signature=sig if isinstance(sig, str) else None)
            )
            continue
        if isinstance(sig, str):
            # a signature riding on a non-thought part: keep it as an empty thinking part placed just before
            # the part, so the encoder re-attaches it to the same part
            parts.append(ContentPart(type="thinking", text="", signature=sig))
        if "text" in part:
            parts.append(ContentPart(type="text", text=_str(part["text"], f"{pf}.text")))
        elif "inlineData" in part:
            parts.append(_decode_inline(_dict(part["inlineData"], f"{pf}.inlineData"), f"{pf}.inlineData"))
        elif "fileData" in part:
            fd = _dict(part["fileData"], f"{pf}.fileData")
            mime = fd.get("mimeType")
            if mime is not None and not str(mime).startswith("image/"):
                raise _bad(f"{pf}.fileData.mimeType", "an image/* type")
            parts.append(
                ContentPart(
                    type="image",
                    url=_str(fd.get("fileUri"), f"{pf}.fileData.fileUri"),
                    media_type=mime if isinstance(mime, str) else None,
                )
            )
        elif "functionCall" in part and role == "model":
            fc = _dict(part["functionCall"], f"{pf}.functionCall")
            args = fc.get("args", {})
            _dict(args, f"{pf}.functionCall.args")
            call = ToolCall(
                id=turns.call_id(fc),
                name=_str(fc.get("name"), f"{pf}.functionCall.name"),
                arguments=_args_text(args),
            )
            calls.append(call)
        elif "functionResponse" in part and role != "model":
            fr = _dict(part["functionResponse"], f"{pf}.functionResponse")
            name = _str(fr.get("name"), f"{pf}.functionResponse.name")
            response = _dict(fr.get("response", {}), f"{pf}.functionResponse.response")
            result = (
                response["result"]
                if set(response) == {"result"} and isinstance(response["result"], str)
                else None
            )
            results.append(
                Message(
                    role="tool",
                    name=name,
                    tool_call_id=turns.answer(name, fr.get("id")),
                    content=result if result is not None else json.dumps(response, ensure_ascii=False),
                )
            )
        else:
            raise _bad(pf, "a text, inlineData, fileData, functionCall or functionResponse part")
    turns.messages.extend(results)
    if role == "model":
        turns.pending = list(calls)
        turns.messages.append(Message(role="assistant", content=parts or None, tool_calls=calls or None))
    elif parts or not results:
        turns.messages.append(Message(role="user", content=parts))


def _decode_tools(raw: Any) -> list[Tool]:
    tools: list[Tool] = []
    for i, t in enumerate(_list(raw, "tools")):
        t = _dict(t, f"tools[{i}]")
        for key in t:
            if key != "functionDeclarations":
                raise _bad(
                    f"tools[{i}].{key}", "functionDeclarations only (built-in tools are not supported)"
                )
        for j, fd in enumerate(_list(t.get("functionDeclarations", []), f"tools[{i}].functionDeclarations")):
            ff = f"tools[{i}].functionDeclarations[{j}]"
            fd = _dict(fd, ff)
            if fd.get("parametersJsonSchema") is not None:
                params = _dict(fd["parametersJsonSchema"], f"{ff}.parametersJsonSchema")
            elif fd.get("parameters") is not None:
                params = _lower_schema(_dict(fd["parameters"], f"{ff}.parameters"))
            else:
                params = None
            desc = fd.get("description")
            tools.append(
                Tool(
                    name=_str(fd.get("name"), f"{ff}.name"),
                    description=_str(desc, f"{ff}.description") if desc is not None else None,
                    parameters=params,
                )
            )
    return tools


def _decode_tool_config(raw: Any) -> str | dict[str, Any] | None:
    fcc = _dict(_dict(raw, "toolConfig").get("functionCallingConfig", {}), "toolConfig.functionCallingConfig")
    mode = fcc.get("mode", "AUTO")
    names = fcc.get("allowedFunctionNames")
    if mode in ("AUTO", "MODE_UNSPECIFIED", "VALIDATED") and not names:
        return "auto"
    if mode == "NONE":
        return "none"
    if mode == "ANY":
        if not names:
            return "required"
        names = _list(names, "toolConfig.functionCallingConfig.allowedFunctionNames")
        if len(names) == 1:
            return {
                "type": "function",
                "name": _str(names[0], "toolConfig.functionCallingConfig.allowedFunctionNames[0]"),
            }
    raise _bad(
        "toolConfig.functionCallingConfig", "mode AUTO, NONE, or ANY with at most one allowed function name"
    )


def _decode_generation_config(gc: dict[str, Any], req: GatewayRequest) -> None:  # noqa: C901 - older than the complexity rule; to split
    f = "generationConfig"
    if gc.get("temperature") is not None:
        req.temperature = _num(gc["temperature"], f"{f}.temperature")
    if gc.get("topP") is not None:
        req.top_p = _num(gc["topP"], f"{f}.topP")
    if gc.get("topK") is not None:
        req.top_k = int(_num(gc["topK"], f"{f}.topK"))
    if gc.get("maxOutputTokens") is not None:
        req.max_tokens = _intv(gc["maxOutputTokens"], f"{f}.maxOutputTokens")
    if gc.get("stopSequences") is not None:
        req.stop = [
            _str(s, f"{f}.stopSequences[{k}]")
            for k, s in enumerate(_list(gc["stopSequences"], f"{f}.stopSequences"))
        ]
    if gc.get("presencePenalty") is not None:
        req.presence_penalty = _num(gc["presencePenalty"], f"{f}.presencePenalty")
    if gc.get("frequencyPenalty") is not None:
        req.frequency_penalty = _num(gc["frequencyPenalty"], f"{f}.frequencyPenalty")
    if gc.get("seed") is not None:
        req.seed = _intv(gc["seed"], f"{f}.seed")
    if gc.get("candidateCount") not in (None, 1):
        raise _bad(f"{f}.candidateCount", "1 (one candidate per call)")
    mime = gc.get("responseMimeType")
    schema = gc.get("responseJsonSchema")
    if schema is None and gc.get("responseSchema") is not None:
        schema = _lower_schema(_dict(gc["responseSchema"], f"{f}.responseSchema"))
    if schema is not None:
        req.response_format = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": _dict(schema, f"{f}.responseJsonSchema")},
        }
    elif mime == "application/json":
        req.response_format = {"type": "json_object"}
    elif mime not in (None, "text/plain"):
        raise _bad(f"{f}.responseMimeType", "'text/plain' or 'application/json'")
    if gc.get("thinkingConfig") is not None:
        tc = _dict(gc["thinkingConfig"], f"{f}.thinkingConfig")
        if tc.get("thinkingBudget") is not None:
            req.thinking_budget = _intv(tc["thinkingBudget"], f"{f}.thinkingConfig.thinkingBudget")
        if tc.get("thinkingLevel") is not None:
            req.reasoning_effort = _str(tc["thinkingLevel"], f"{f}.thinkingConfig.thinkingLevel").lower()


def decode_request(body: dict[str, Any], *, path_model: str | None = None) -> GatewayRequest:
    """Decode a Gemini generateContent body (model from the URL path) into a GatewayRequest."""
    body = _dict(body, "body")
    model = path_model or body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "the model name in the path")
    turns = _Turns()
    si = body.get("systemInstruction")
    if si is not None:
        if isinstance(si, str):
            turns.messages.append(Message(role="system", content=si))
        else:
            si = _dict(si, "systemInstruction")
            texts = [
                _str(
                    _dict(p, f"systemInstruction.parts[{k}]").get("text"),
                    f"systemInstruction.parts[{k}].text",
                )
                for k, p in enumerate(_list(si.get("parts"), "systemInstruction.parts"))
            ]
            turns.messages.append(
                Message(role="system", content=[ContentPart(type="text", text=t) for t in texts])
            )
    for i, raw in enumerate(_list(body.get("contents"), "contents")):
        _decode_content(i, raw, turns)
    req = GatewayRequest(model=model, messages=turns.messages, raw=body)
    if body.get("generationConfig") is not None:
        _decode_generation_config(_dict(body["generationConfig"], "generationConfig"), req)
    if body.get("tools") is not None:
        req.tools = _decode_tools(body["tools"]) or None
    if body.get("toolConfig") is not None:
        req.tool_choice = _decode_tool_config(body["toolConfig"])
    if body.get("labels") is not None:
        req.metadata = dict(_dict(body["labels"], "labels"))
    return req


# --- upstream side: encode a request ------------------------------------------------------------------------


def _image_part(p: ContentPart, field: str) -> dict[str, Any]:
    if p.data is not None:
        if not p.media_type:
            raise _bad(f"{field}.media_type", "a media type for base64 data")
        return {"inlineData": {"mimeType": p.media_type, "data": p.data}}
    if p.url:
        if p.url.startswith("data:"):
            head, _, data = p.url[5:].partition(",")
            mime, _, enc = head.partition(";")
            if enc != "base64" or not mime:
                raise _bad(f"{field}.url", "a base64 data URL")
            return {"inlineData": {"mimeType": mime, "data": data}}
        mime = p.media_type or mimetypes.guess_type(p.url.split("?")[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": p.url}}
    raise _bad(field, "an image with url or data")


def _encode_parts(
    content: str | list[ContentPart] | None, field: str, sig: list[str]
) -> list[dict[str, Any]]:
    """Encode parts; `sig` carries a pending thought signature onto the next emitted part."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_with_sig({"text": content}, sig)] if content else []
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        pf = f"{field}.content[{j}]"
        if p.type in ("text", "refusal"):
            out.append(_with_sig({"text": p.text or ""}, sig))
        elif p.type == "image":
            out.append(_with_sig(_image_part(p, pf), sig))
        elif p.type == "audio":
            if p.data is None or not p.media_type:
                raise _bad(pf, "audio as base64 data with a media type")
            out.append(_with_sig({"inlineData": {"mimeType": p.media_type, "data": p.data}}, sig))
        elif p.type == "thinking":
            if not p.text and p.signature:
                sig.append(p.signature)
            else:
                part: dict[str, Any] = {"text": p.text or "", "thought": True}
                if p.signature:
                    part["thoughtSignature"] = p.signature
                out.append(part)
        elif p.type == "redacted_thinking":
            # Anthropic-encrypted reasoning means nothing to Gemini; it cannot be sent there
            raise _unsupported(f"{pf} (redacted_thinking)")
        else:
            raise _unsupported(f"{pf} ({p.type})")
    return out


def _with_sig(part: dict[str, Any], sig: list[str]) -> dict[str, Any]:
    if sig:
        part["thoughtSignature"] = sig.pop()
        sig.clear()
    return part


def _function_args(call: ToolCall, field: str) -> dict[str, Any]:
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise _bad(f"{field}.arguments", "JSON object text") from None
    if not isinstance(value, dict):
        raise _bad(f"{field}.arguments", "JSON object text")
    return value


def _function_response(m: Message, name: str) -> dict[str, Any]:
    text = m.text()
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": text}
    fr: dict[str, Any] = {"name": name, "response": response}
    if m.tool_call_id and not m.tool_call_id.startswith("call_"):
        fr["id"] = m.tool_call_id
    return {"functionResponse": fr}


def encode_request(req: GatewayRequest, *, slug: str) -> dict[str, Any]:  # noqa: C901 - older than the complexity rule; to split
    """Build the Gemini generateContent body for `req` (the slug goes in the URL, not here)."""
    del slug  # Gemini names the model in the URL path
    refuse_openai_only_hints(req, PROVIDER)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        field = f"messages[{i}]"
        sig: list[str] = []
        if m.role in ("system", "developer"):
            system.extend({"text": p["text"]} for p in _encode_parts(m.content, field, sig) if "text" in p)
            continue
        if m.role == "tool":
            name = m.name or names.get(m.tool_call_id or "")
            if not name:
                raise _bad(
                    f"{field}.tool_call_id",
                    "the id of an earlier assistant tool call (Gemini needs its name)",
                )
            role, parts = "user", [_function_response(m, name)]
        elif m.role == "assistant":
            role = "model"
            parts = _encode_parts(m.content, field, sig)
            for k, call in enumerate(m.tool_calls or []):
                names[call.id] = call.name
                fc: dict[str, Any] = {
                    "name": call.name,
                    "args": _function_args(call, f"{field}.tool_calls[{k}]"),
                }
                if not call.id.startswith("call_"):
                    fc["id"] = call.id
                parts.append(_with_sig({"functionCall": fc}, sig))
        else:
            role, parts = "user", _encode_parts(m.content, field, sig)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    gc: dict[str, Any] = {}
    if req.temperature is not None:
        gc["temperature"] = req.temperature
    if req.top_p is not None:
        gc["topP"] = req.top_p
    if req.top_k is not None:
        gc["topK"] = req.top_k
    if req.max_tokens is not None:
        gc["maxOutputTokens"] = req.max_tokens
    if req.stop:
        gc["stopSequences"] = list(req.stop)
    if req.presence_penalty is not None:
        gc["presencePenalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        gc["frequencyPenalty"] = req.frequency_penalty
    if req.seed is not None:
        gc["seed"] = req.seed
    if req.response_format:
        kind = req.response_format.get("type")
        if kind == "json_schema":
            js = req.response_format.get("json_schema") or {}
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise _bad("response_format.json_schema.schema", "a JSON schema object")
            # responseJsonSchema takes full JSON Schema, so no lossy conversion to the OpenAPI subset is needed
            gc["responseMimeType"] = "application/json"
            gc["responseJsonSchema"] = schema
        elif kind == "json_object":
            gc["responseMimeType"] = "application/json"
        elif kind != "text":
            raise _unsupported(f"response_format type {kind!r}")
    thinking: dict[str, Any] = {}
    if req.thinking_budget is not None:
        thinking["thinkingBudget"] = req.thinking_budget
    if req.reasoning_effort is not None:
        if req.reasoning_effort == "none":
            thinking.setdefault("thinkingBudget", 0)
        elif req.reasoning_effort in _LEVELS:
            thinking["thinkingLevel"] = _LEVELS[req.reasoning_effort]
        else:
            raise _unsupported(f"reasoning_effort {req.reasoning_effort!r}")
    if thinking:
        # ask for thought summaries so reasoning reaches clients the way Anthropic's thinking blocks do
        thinking["includeThoughts"] = thinking.get("thinkingBudget") != 0
        gc["thinkingConfig"] = thinking
    if gc:
        body["generationConfig"] = gc
    if req.tools:
        decls = []
        for t in req.tools:
            if t.strict:
                # Gemini has no strict schema adherence switch: refuse rather than promise what it cannot keep
                raise _unsupported(f"tools[{t.name}].strict")
            decl: dict[str, Any] = {"name": t.name}
            if t.description is not None:
                decl["description"] = t.description
            if t.parameters is not None:
                decl["parametersJsonSchema"] = t.parameters
            decls.append(decl)
        body["tools"] = [{"functionDeclarations": decls}]
    if req.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _encode_tool_choice(req.tool_choice)}
    if req.metadata:
        labels: dict[str, str] = {}
        for key, v in req.metadata.items():
            if not isinstance(v, str):
                raise _unsupported(f"metadata[{key!r}] with a non-string value (Gemini labels are strings)")
            labels[key] = v
        body["labels"] = labels
    return body


def _encode_tool_choice(tc: str | dict[str, Any]) -> dict[str, Any]:
    if tc == "auto":
        return {"mode": "AUTO"}
    if tc == "none":
        return {"mode": "NONE"}
    if tc == "required":
        return {"mode": "ANY"}
    if isinstance(tc, dict) and tc.get("type") == "function":
        fn = tc.get("function")
        name = tc.get("name") or (fn.get("name") if isinstance(fn, dict) else None)
        if isinstance(name, str):
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise _unsupported(f"tool_choice {tc!r}")


# --- upstream side: decode a response and a stream ----------------------------------------------------------


def usage_from(raw: dict[str, Any]) -> Usage:
    """Normalize Gemini `usageMetadata` (prompt count includes cached tokens; thoughts are added to output)."""
    cached = _int(raw.get("cachedContentTokenCount"))
    prompt = _int(raw.get("promptTokenCount")) + _int(raw.get("toolUsePromptTokenCount"))
    thoughts = _int(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=_int(raw.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens=cached,
        reasoning_tokens=thoughts,
    )


def _stop_in(reason: Any, has_calls: bool) -> str | None:
    if reason is None:
        return None
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTER_REASONS:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


class _Parts:
    """Shared part walker for unary and streamed candidates; call ids are numbered across a whole answer."""

    def __init__(self) -> None:
        self.n_calls = 0

    def call(self, fc: dict[str, Any]) -> ToolCall:
        cid = fc.get("id")
        self.n_calls += 1
        return ToolCall(
            id=cid if isinstance(cid, str) and cid else f"call_{self.n_calls - 1}",
            name=str(fc.get("name", "")),
            arguments=_args_text(fc.get("args")),
        )


def decode_response(body: dict[str, Any]) -> GatewayResponse:
    """Decode a GenerateContentResponse into a GatewayResponse (first candidate)."""
    walker = _Parts()
    blocks: list[ContentPart] = []
    calls: list[ToolCall] = []
    candidates = body.get("candidates") or []
    cand = candidates[0] if candidates else {}
    for part in (cand.get("content") or {}).get("parts") or []:
        sig = part.get("thoughtSignature")
        if part.get("thought") is True:
            blocks.append(ContentPart(type="thinking", text=part.get("text", ""), signature=sig))
            continue
        if sig:
            blocks.append(ContentPart(type="thinking", text="", signature=sig))
        if "text" in part:
            blocks.append(ContentPart(type="text", text=part["text"]))
        elif "functionCall" in part:
            calls.append(walker.call(part["functionCall"]))
        elif "inlineData" in part:
            blob = part["inlineData"]
            blocks.append(ContentPart(type="image", data=blob.get("data"), media_type=blob.get("mimeType")))
    stop = _stop_in(cand.get("finishReason"), bool(calls))
    if not candidates and (body.get("promptFeedback") or {}).get("blockReason"):
        stop = "content_filter"
    raw_usage = body.get("usageMetadata") or {}
    rid = body.get("responseId")
    return GatewayResponse(
        provider=PROVIDER,
        model=str(body.get("modelVersion", "")),
        content="".join(b.text or "" for b in blocks if b.type == "text"),
        stop_reason=stop,
        content_blocks=blocks or None,
        tool_calls=calls or None,
        usage=usage_from(raw_usage),
        id=rid,
        raw_usage=raw_usage or None,
        provider_request_id=rid,
        raw=body,
    )


class StreamDecoder:
    """Turn Gemini SSE chunks (`alt=sse`) into normalized events; UsageEvents are cumulative (last wins)."""

    def __init__(self) -> None:
        self._walker = _Parts()
        self._started = False
        self._last_usage: dict[str, Any] | None = None
        self.done = False  # a finish reason (or a blocked prompt) seen: the answer is complete
        self.ended = False  # the finished candidate's chunk with its usage: Gemini's last chunk

    def feed(self, ev: SSEEvent) -> list[StreamEvent]:  # noqa: C901 - older than the complexity rule; to split
        """Decode one upstream chunk."""
        if not ev.data or ev.data.strip() in ("[", "]", ","):
            return []
        try:
            data = loads(ev.data)
        except ValueError:
            raise UpstreamError(
                "gemini stream: invalid JSON chunk", "upstream_error", kind="protocol"
            ) from None
        if isinstance(data, dict) and "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {}
            raise UpstreamError(
                f"gemini stream error: {err.get('message', 'unknown error')}",
                "upstream_error",
                kind="5xx",
                upstream_body=ev.data.encode(),
            )
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(
                StreamStart(id=str(data.get("responseId", "")), model=str(data.get("modelVersion", "")))
            )
        candidates = data.get("candidates") or []
        cand = candidates[0] if candidates else {}
        for part in (cand.get("content") or {}).get("parts") or []:
            sig = part.get("thoughtSignature")
            if part.get("thought") is True:
                out.append(ThinkingDelta(text=part.get("text", ""), signature=sig))
                continue
            if sig:
                out.append(ThinkingDelta(signature=sig))
            if "text" in part:
                if part["text"]:
                    out.append(TextDelta(text=part["text"]))
            elif "functionCall" in part:
                index = self._walker.n_calls
                call = self._walker.call(part["functionCall"])
                out.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments))
        usage = data.get("usageMetadata")
        if usage and usage != self._last_usage:
            self._last_usage = usage
            out.append(UsageEvent(usage=usage_from(usage), raw=usage))
        reason = cand.get("finishReason")
        if reason is not None:
            out.append(StreamStop(stop_reason=_stop_in(reason, self._walker.n_calls > 0) or "stop"))
            self.done = True
            self.ended = bool(usage) and len(candidates) == 1  # unified calls ask for one candidate
        elif not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            out.append(StreamStop(stop_reason="content_filter"))
            self.done = True
        return out


# --- client side: encode a response, a stream, an error -----------------------------------------------------


def _usage_out(u: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "promptTokenCount": u.total_input,
        "candidatesTokenCount": max(u.output_tokens - u.reasoning_tokens, 0),
        "totalTokenCount": u.total,
    }
    if u.cached_input_tokens:
        out["cachedContentTokenCount"] = u.cached_input_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    return out


def _call_part(call: ToolCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        args = {}
    fc: dict[str, Any] = {"name": call.name, "args": args if isinstance(args, dict) else {}}
    if call.id and not call.id.startswith("call_"):
        fc["id"] = call.id
    return {"functionCall": fc}


def encode_response(resp: GatewayResponse, *, model: str) -> bytes:
    """Encode a unary answer as a Gemini GenerateContentResponse."""
    parts: list[dict[str, Any]] = []
    sig: list[str] = []
    if resp.content_blocks is not None:
        for p in resp.content_blocks:
            if p.type in ("text", "refusal"):
                parts.append(_with_sig({"text": p.text or ""}, sig))
            elif p.type == "thinking":
                if not p.text and p.signature:
                    sig.append(p.signature)
                else:
                    part: dict[str, Any] = {"text": p.text or "", "thought": True}
                    if p.signature:
                        part["thoughtSignature"] = p.signature
                    parts.append(part)
            elif p.type == "image" and p.data is not None:
                parts.append({"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}})
    elif resp.content:
        parts.append({"text": resp.content})
    for call in resp.tool_calls or []:
        parts.append(_with_sig(_call_part(call), sig))
    body = {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": _STOP_OUT.get(resp.stop_reason or "stop", "STOP"),
                "index": 0,
            }
        ],
        "usageMetadata": _usage_out(resp.usage),
        "modelVersion": model,
        "responseId": resp.id or uuid.uuid4().hex,
    }
    return _dumps(body)


class StreamEncoder:
    """Encode normalized events as Gemini stream chunks: SSE (`alt=sse`) or, with json_array=True, a JSON array."""

    def __init__(self, *, model: str, request_id: str, json_array: bool = False) -> None:
        self.model = model
        self.id = request_id
        self.json_array = json_array
        self._sent = 0
        self._tools: dict[int, ToolCall] = {}
        self._usage = Usage()
        self._stop: str | None = None
        self._done = False

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        data = _dumps(obj)
        self._sent += 1
        if not self.json_array:
            return sse(data)
        return (b"[" if self._sent == 1 else b"\n,") + data

    def _parts_chunk(self, parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        cand.update(extra)
        return {"candidates": [cand], "modelVersion": self.model, "responseId": self.id}

    def _flush_tools(self) -> list[dict[str, Any]]:
        # Gemini delivers each function call whole, so argument fragments are held until the call is complete
        parts = [_call_part(self._tools[k]) for k in sorted(self._tools)]
        self._tools.clear()
        return parts

    def events(self, ev: StreamEvent) -> bytes:
        """Encode one normalized event (possibly nothing)."""
        if self._done:
            return b""
        if isinstance(ev, ToolCallDelta):
            call = self._tools.get(ev.index)
            if call is None:
                self._tools[ev.index] = ToolCall(id=ev.id or "", name=ev.name or "", arguments=ev.arguments)
            else:
                call.arguments += ev.arguments
                if ev.name and not call.name:
                    call.name = ev.name
            return b""
        if isinstance(ev, UsageEvent):
            self._usage = ev.usage
            return b""
        if isinstance(ev, StreamStop):
            self._stop = ev.stop_reason
            return b""
        parts = self._flush_tools()
        if isinstance(ev, TextDelta) and ev.text:
            parts.append({"text": ev.text})
        elif isinstance(ev, ThinkingDelta) and (ev.text or ev.signature):
            part: dict[str, Any] = {"text": ev.text, "thought": True}
            if ev.signature:
                part["thoughtSignature"] = ev.signature
            parts.append(part)
        if not parts:
            return b""
        return self._chunk(self._parts_chunk(parts))

    event = events  # the chat dialect's spelling

    def finish(self) -> bytes:
        """End cleanly: a last chunk with finishReason and usageMetadata (and `]` in JSON-array mode)."""
        if self._done:
            return b""
        self._done = True
        chunk = self._parts_chunk(
            self._flush_tools(), finishReason=_STOP_OUT.get(self._stop or "stop", "STOP")
        )
        chunk["usageMetadata"] = _usage_out(self._usage)
        out = self._chunk(chunk)
        return out + b"\n]" if self.json_array else out

    def fail(self, err: GatewayError) -> bytes:
        """End with an explicit Gemini error object (the SDK raises APIError on a chunk starting with {"error":)."""
        if self._done:
            return b""
        self._done = True
        data = error_body(err)
        if not self.json_array:
            return sse(data)
        return (b"[" if self._sent == 0 else b"\n,") + data + b"\n]"


def error_body(err: GatewayError) -> bytes:
    """Render `err` as a Google API error (`ClientError` for 4xx, `ServerError` for 5xx in google-genai)."""
    status = _STATUS_NAMES.get(err.status) or ("INTERNAL" if err.status >= 500 else "FAILED_PRECONDITION")
    error: dict[str, Any] = {
        "code": err.status,
        "message": err.message,
        "status": status,
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": err.code, "domain": "odock.ai"}
        ],
    }
    for k, v in err.extra.items():
        error.setdefault(k, v)
    return _dumps({"error": error})


# --- the dialect's two sides (dialects.contract) -------------------------------------------------------------


def stream_encoder(*, model: str, request_id: str, options: StreamOptions) -> StreamEncoder:
    """A client stream encoder: SSE for `?alt=sse`, else Gemini's streamed JSON array."""
    return StreamEncoder(model=model, request_id=request_id, json_array=options.json_array)


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
