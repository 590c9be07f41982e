"""Anthropic Messages wire format: unary and the full SSE event sequence."""

from __future__ import annotations

import hashlib
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
    obj,
    sse,
    text_of,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_payload(status: int, message: str) -> dict[str, Any]:
    """Build Anthropic's error object for a status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_reply(status: int, message: str, code: str | None = None) -> Reply:
    """Answer an error in Anthropic's shape, with the `request-id` header the real API sends."""
    return Reply(
        status, dumps(error_payload(status, message)), headers=[(b"request-id", new_id("req_").encode())]
    )


def named_error(name: str, model: str) -> Reply:
    """A named error (`error=` directive) worded as Anthropic words it."""
    if name == "context_length":
        return error_reply(400, "prompt is too long: 213000 tokens > 200000 maximum")
    return error_reply(404, f"model: {model}")


def check_headers(req: MockRequest) -> Reply | None:
    """Refuse a request without `anthropic-version`, as Anthropic does."""
    if not req.headers.get("anthropic-version"):
        return error_reply(400, "anthropic-version: header is required")
    return None


def _stream_error(_: int) -> bytes:
    return sse(error_payload(529, "Overloaded (injected by the mock upstream)."), "error")


def _signature(text: str) -> str:
    return "mocksig" + hashlib.sha256(text.encode()).hexdigest()[:32]


def usage(plan: Plan) -> dict[str, Any]:
    """Build Anthropic usage: input_tokens excludes cache reads; output includes thinking."""
    out: dict[str, Any] = {
        "input_tokens": max(0, plan.input_tokens - plan.cached_tokens),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": plan.output_tokens + plan.reasoning_tokens,
        "service_tier": "standard",
    }
    if plan.reasoning_tokens:
        # the reasoning part of output_tokens, as Anthropic reports it (a breakdown, not an extra class)
        out["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return out


def _stop_reason(plan: Plan) -> str:
    return "tool_use" if plan.tool else ("max_tokens" if plan.truncated else "end_turn")


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    for holder in (body.get("output_format"), (body.get("output_config") or {}).get("format")):
        if isinstance(holder, dict) and holder.get("type") == "json_schema":
            schema = holder.get("schema")
            return schema if isinstance(schema, dict) else {}
    return None


def messages(req: MockRequest) -> Call:  # noqa: C901 - older than the complexity rule; to split
    """Handle POST /v1/messages."""
    body = req.json()
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    max_tokens = bounded_max_tokens(body.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: at least one message is required")
    texts = [text_of(body.get("system"))] if body.get("system") else []
    user_text, last_tool = "", False
    for message in msgs:
        if not isinstance(message, dict):
            raise BadRequest("messages: each message must be an object")
        content = message.get("content")
        texts.append(text_of(content))
        blocks = content if isinstance(content, list) else []
        last_tool = any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
        if message.get("role") == "user":
            text = (
                " ".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
                if blocks
                else text_of(content)
            )
            if text or not blocks:
                user_text = text
    all_text = "\n".join(texts)
    stream = body.get("stream") is True
    tools = [
        ToolSpec(t["name"], t.get("input_schema") if isinstance(t.get("input_schema"), dict) else None)
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("type") in (None, "custom")
    ]
    tc = obj(body.get("tool_choice"))
    choice = {"any": "any", "none": "none", "tool": str(tc.get("name", ""))}.get(str(tc.get("type")), "auto")
    thinking_cfg = body.get("thinking")
    wants_thinking = isinstance(thinking_cfg, dict) and thinking_cfg.get("type") in ("enabled", "adaptive")
    schema = _json_schema(body)

    def make(d: Directives, name: str) -> Reply | StreamReply:
        tool = choose_tool(tools, choice, d.tool, last_tool)
        plan = build_plan(
            all_text=all_text,
            user_text=user_text,
            directives=d,
            max_tokens=max_tokens,
            json_schema=schema,
            json_mode=schema is not None,
            tool=tool,
            thinking=wants_thinking,
            images=count_images(msgs),
        )
        mid = new_id("msg_")
        blocks: list[dict[str, Any]] = []
        if plan.thinking:
            blocks.append(
                {"type": "thinking", "thinking": plan.thinking, "signature": _signature(plan.thinking)}
            )
        if plan.tool:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": plan.tool_call_id.replace("call_", "toolu_"),
                    "name": plan.tool.name,
                    "input": plan.tool_input,
                }
            )
        else:
            blocks.append({"type": "text", "text": plan.text})
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": blocks,
            "stop_reason": _stop_reason(plan),
            "stop_sequence": None,
            "usage": usage(plan),
        }
        if not stream:
            return Reply(200, dumps(message))
        start_usage = {**usage(plan), "output_tokens": 1}
        events = [
            sse(
                {
                    "type": "message_start",
                    "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
                },
                "message_start",
            ),
            sse({"type": "ping"}, "ping"),
        ]
        for index, block in enumerate(blocks):
            kind = block["type"]

            def delta(payload: dict[str, Any], i: int = index) -> bytes:
                return sse(
                    {"type": "content_block_delta", "index": i, "delta": payload}, "content_block_delta"
                )

            if kind == "thinking":
                start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
                pieces = [delta({"type": "thinking_delta", "thinking": p}) for p in plan.thinking_chunks]
                pieces.append(delta({"type": "signature_delta", "signature": block["signature"]}))
            elif kind == "tool_use":
                start = {**block, "input": {}}
                pieces = [
                    delta({"type": "input_json_delta", "partial_json": p}) for p in plan.tool_arg_pieces
                ]
            else:
                start = {"type": "text", "text": ""}
                pieces = [delta({"type": "text_delta", "text": p}) for p in plan.chunks]
            events.append(
                sse(
                    {"type": "content_block_start", "index": index, "content_block": start},
                    "content_block_start",
                )
            )
            events += pieces
            events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        final_usage = usage(plan)
        final_usage.pop("service_tier")
        events.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(plan), "stop_sequence": None},
                    "usage": final_usage,
                },
                "message_delta",
            )
        )
        events.append(sse({"type": "message_stop"}, "message_stop"))
        return StreamReply(events, _stream_error)

    return Call(model, stream, user_text, make)
