"""Gemini generateContent wire format: unary, SSE (`alt=sse`) and JSON-array streaming."""

from __future__ import annotations

import re
from typing import Any

from odock.mock.content import Plan, ToolSpec, build_plan, choose_tool, count_images
from odock.mock.directives import Directives
from odock.mock.wire import (
    BadRequest,
    Call,
    MockRequest,
    Reply,
    StreamReply,
    bounded_max_tokens,
    dumps,
    new_id,
    sse,
)

ROUTE_RE = re.compile(
    r"^/(?:v1beta|v1|v1alpha)/models/(?P<model>[^:]+):(?P<method>generateContent|streamGenerateContent)$"
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_payload(status: int, message: str) -> dict[str, Any]:
    """Build Google's error object for a status."""
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": status, "message": message, "status": name}}


def error_reply(status: int, message: str, code: str | None = None) -> Reply:
    """Answer an error in Gemini's shape."""
    return Reply(status, dumps(error_payload(status, message)))


def named_error(name: str, model: str) -> Reply:
    """A named error (`error=` directive) worded as Gemini words it."""
    if name == "context_length":
        return error_reply(
            400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
        )
    return error_reply(
        404,
        f"models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def usage(plan: Plan) -> dict[str, Any]:
    """Build usageMetadata (prompt count includes cached tokens; thoughts are counted apart)."""
    return {
        "promptTokenCount": plan.input_tokens,
        "candidatesTokenCount": plan.output_tokens,
        "cachedContentTokenCount": plan.cached_tokens,
        "thoughtsTokenCount": plan.reasoning_tokens,
        "totalTokenCount": plan.input_tokens + plan.output_tokens + plan.reasoning_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.input_tokens}],
    }


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def get(holder: Any, camel: str) -> Any:
    """Read a field in camelCase or snake_case (Google accepts both; SDKs send either when nested)."""
    if not isinstance(holder, dict):
        return None
    value = holder.get(camel)
    return value if value is not None else holder.get(_snake(camel))


def _parts_text(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return " ".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def generate(req: MockRequest, model: str, stream: bool) -> Call:  # noqa: C901 - older than the complexity rule; to split
    """Handle :generateContent and :streamGenerateContent for a model taken from the path."""
    body = req.json()
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    system = get(body, "systemInstruction")
    texts = [_parts_text(system.get("parts"))] if isinstance(system, dict) else []
    user_text, last_tool = "", False
    for content in contents:
        if not isinstance(content, dict):
            raise BadRequest("* GenerateContentRequest.contents: each content must be an object")
        parts = content.get("parts")
        text = _parts_text(parts)
        texts.append(text)
        last_tool = isinstance(parts, list) and any(get(p, "functionResponse") is not None for p in parts)
        if content.get("role", "user") == "user" and text:
            user_text = text
    all_text = "\n".join(texts)
    tools: list[ToolSpec] = []
    for tool in body.get("tools") or []:
        for decl in get(tool, "functionDeclarations") or []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                params = get(decl, "parametersJsonSchema") or decl.get("parameters")
                tools.append(ToolSpec(decl["name"], params if isinstance(params, dict) else None))
    fcc = get(get(body, "toolConfig"), "functionCallingConfig") or {}
    mode = str(fcc.get("mode") or "AUTO").upper()
    allowed = get(fcc, "allowedFunctionNames") or []
    choice = (
        "none"
        if mode == "NONE"
        else (str(allowed[0]) if mode == "ANY" and len(allowed) == 1 else "any" if mode == "ANY" else "auto")
    )
    config = get(body, "generationConfig") or {}
    schema = get(config, "responseJsonSchema") or get(config, "responseSchema")
    json_mode = get(config, "responseMimeType") == "application/json"
    wants_thinking = get(get(config, "thinkingConfig"), "includeThoughts") is True
    max_tokens = bounded_max_tokens(get(config, "maxOutputTokens"), "generationConfig.maxOutputTokens")
    sse_mode = req.query.get("alt") == "sse"

    def make(d: Directives, name: str) -> Reply | StreamReply:
        tool = choose_tool(tools, choice, d.tool, last_tool)
        plan = build_plan(
            all_text=all_text,
            user_text=user_text,
            directives=d,
            max_tokens=max_tokens,
            json_schema=schema if json_mode and isinstance(schema, dict) else None,
            json_mode=json_mode,
            tool=tool,
            thinking=wants_thinking,
            images=count_images(body.get("contents")),
        )
        rid = new_id("mock-")
        finish = "MAX_TOKENS" if plan.truncated else "STOP"

        def response(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": name, "responseId": rid}
            if last:
                candidate["finishReason"] = finish
                payload["usageMetadata"] = usage(plan)
            return payload

        thought_parts = [{"text": piece, "thought": True} for piece in plan.thinking_chunks]
        if plan.tool:
            answer_parts: list[dict[str, Any]] = [
                {"functionCall": {"name": plan.tool.name, "args": plan.tool_input}}
            ]
        else:
            answer_parts = [{"text": piece} for piece in plan.chunks]
        if not stream:
            joined = [{"text": plan.thinking, "thought": True}] if plan.thinking else []
            joined += answer_parts if plan.tool else [{"text": plan.text}]
            return Reply(200, dumps(response(joined, True)))
        steps = thought_parts + answer_parts
        payloads = [response([part], i == len(steps) - 1) for i, part in enumerate(steps)]
        if sse_mode:
            events = [sse(p) for p in payloads]

            def sse_error(_: int) -> bytes:
                return sse(error_payload(500, "The mock upstream injected a stream error."))

            return StreamReply(events, sse_error)
        # Without alt=sse Google streams one JSON array, element by element.
        events = [(b"[" if i == 0 else b",\r\n") + dumps(p) for i, p in enumerate(payloads)] + [b"]"]

        def array_error(index: int) -> bytes:
            body = dumps(error_payload(500, "The mock upstream injected a stream error."))
            return (b"[" if index == 0 else b",\r\n") + body + b"]"

        return StreamReply(events, array_error, content_type=b"application/json")

    return Call(model, stream, user_text, make)
