"""OpenAI wire formats: chat completions, legacy completions, responses, embeddings, images, models."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from odock.mock import multipart
from odock.mock.content import Plan, ToolSpec, build_plan, choose_tool, count_images, estimate_tokens
from odock.mock.directives import Directives
from odock.mock.wire import (
    MAX_IMAGES,
    BadRequest,
    Call,
    MockRequest,
    Reply,
    StreamReply,
    bounded_inputs,
    bounded_int,
    bounded_max_tokens,
    dumps,
    int_or_none,
    new_id,
    now,
    obj,
    sse,
    text_of,
)

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    413: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
DONE = b"data: [DONE]\n\n"
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "text-embedding-3-small", "gpt-image-1", "dall-e-3")
# A valid 1x1 transparent PNG, so clients that decode the image succeed.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def error_payload(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """Build OpenAI's error object for a status."""
    kind, default_code = _ERROR_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}


def error_reply(status: int, message: str, code: str | None = None) -> Reply:
    """Answer an error in OpenAI's shape."""
    return Reply(status, dumps(error_payload(status, message, code)))


def named_error(name: str, model: str) -> Reply:
    """A named error (`error=` directive) worded as OpenAI words it."""
    if name == "context_length":
        return Reply(
            400,
            dumps(
                {
                    "error": {
                        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                        "131072 tokens. Please reduce the length of the messages.",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                }
            ),
        )
    return error_reply(
        404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
    )


def _stream_error(_: int) -> bytes:
    return sse(error_payload(500, "The mock upstream injected a stream error.", "mock_stream_error"))


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    return model


def _max_tokens(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = bounded_max_tokens(body.get(key), key)
        if value is not None:
            return value
    return None


def _chat_tools(body: dict[str, Any]) -> list[ToolSpec]:
    tools = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            fn = obj(tool.get("function")) or tool
            if isinstance(fn.get("name"), str):
                params = fn.get("parameters")
                tools.append(ToolSpec(fn["name"], params if isinstance(params, dict) else None))
    return tools


def _tool_choice(value: Any) -> str:
    if value in (None, "auto"):
        return "auto"
    if value == "none":
        return "none"
    if value == "required":
        return "any"
    if isinstance(value, dict):
        fn = obj(value.get("function")) or value
        if isinstance(fn.get("name"), str):
            return str(fn["name"])
    return "auto"


def _json_format(fmt: Any) -> tuple[dict[str, Any] | None, bool]:
    """Return (schema, json_mode) from a response_format / text.format object."""
    if not isinstance(fmt, dict):
        return None, False
    if fmt.get("type") == "json_schema":
        spec = obj(fmt.get("json_schema")) or fmt
        schema = spec.get("schema")
        return (schema if isinstance(schema, dict) else {}), True
    return None, fmt.get("type") == "json_object"


def chat_usage(plan: Plan) -> dict[str, Any]:
    """Build a chat completion usage object (completion tokens include reasoning)."""
    completion = plan.output_tokens + plan.reasoning_tokens
    return {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.input_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(plan: Plan) -> str:
    return "tool_calls" if plan.tool else ("length" if plan.truncated else "stop")


def chat_completions(req: MockRequest) -> Call:  # noqa: C901 - older than the complexity rule; to split
    """Handle POST /v1/chat/completions."""
    body = req.json()
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    texts, user_text, last_role = [], "", ""
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        text = text_of(message.get("content"))
        texts.append(text)
        last_role = str(message.get("role", ""))
        if last_role == "user":
            user_text = text
    all_text = "\n".join(texts)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    schema, json_mode = _json_format(body.get("response_format"))
    tools = _chat_tools(body)
    choice = _tool_choice(body.get("tool_choice"))
    effort = body.get("reasoning_effort")
    wants_thinking = isinstance(effort, str) and effort not in ("none", "minimal")
    max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")

    def make(d: Directives, name: str) -> Reply | StreamReply:
        tool = choose_tool(tools, choice, d.tool, last_role == "tool")
        plan = build_plan(
            all_text=all_text,
            user_text=user_text,
            directives=d,
            max_tokens=max_tokens,
            json_schema=schema,
            json_mode=json_mode,
            tool=tool,
            thinking=wants_thinking,
            images=count_images(messages),
        )
        cid, created = new_id("chatcmpl-"), now()
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if plan.tool else plan.text,
                "refusal": None,
                "annotations": [],
            }
            if plan.tool:
                message["tool_calls"] = [
                    {
                        "id": plan.tool_call_id,
                        "type": "function",
                        "function": {"name": plan.tool.name, "arguments": plan.tool_args},
                    }
                ]
            if plan.thinking:
                message["reasoning_content"] = plan.thinking
            return Reply(
                200,
                dumps(
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": name,
                        "choices": [
                            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(plan)}
                        ],
                        "usage": chat_usage(plan),
                        "service_tier": "default",
                        "system_fingerprint": "fp_mock",
                    }
                ),
            )
        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                **head,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return sse(payload)

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"reasoning_content": piece}) for piece in plan.thinking_chunks]
        if plan.tool:
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": plan.tool_call_id,
                                "type": "function",
                                "function": {"name": plan.tool.name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            events += [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in plan.tool_arg_pieces
            ]
        else:
            events += [chunk({"content": piece}) for piece in plan.chunks]
        events.append(chunk({}, _finish(plan)))
        if include_usage:
            events.append(sse({**head, "choices": [], "usage": chat_usage(plan)}))
        events.append(DONE)
        return StreamReply(events, _stream_error)

    return Call(model, stream, user_text, make)


def completions(req: MockRequest) -> Call:
    """Handle POST /v1/completions (legacy text completions, as vLLM serves them)."""
    body = req.json()
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt_text = " ".join(
            p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p)
            for p in prompt
        )
    elif isinstance(prompt, str):
        prompt_text = prompt
    else:
        raise BadRequest("'prompt' must be a string or an array")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    max_tokens = _max_tokens(body, "max_tokens")

    def make(d: Directives, name: str) -> Reply | StreamReply:
        plan = build_plan(all_text=prompt_text, user_text=prompt_text, directives=d, max_tokens=max_tokens)
        usage = {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
        }
        head = {"id": new_id("cmpl-"), "object": "text_completion", "created": now(), "model": name}
        if not stream:
            choice = {"index": 0, "text": plan.text, "logprobs": None, "finish_reason": _finish(plan)}
            return Reply(200, dumps({**head, "choices": [choice], "usage": usage}))

        def chunk(text: str, finish: str | None) -> bytes:
            payload: dict[str, Any] = {
                **head,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return sse(payload)

        events = [chunk(piece, None) for piece in plan.chunks] + [chunk("", _finish(plan))]
        if include_usage:
            events.append(sse({**head, "choices": [], "usage": usage}))
        events.append(DONE)
        return StreamReply(events, _stream_error)

    return Call(model, stream, prompt_text, make)


def _responses_input(body: dict[str, Any]) -> tuple[str, str, bool]:
    """Return (all text, last user text, whether the last item is a tool result)."""
    texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    value = body.get("input")
    if isinstance(value, str):
        return "\n".join([*texts, value]), value, False
    if not isinstance(value, list):
        raise BadRequest("'input' must be a string or an array of items")
    user_text, last_tool = "", False
    for item in value:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        last_tool = kind == "function_call_output"
        if kind == "message" or "role" in item:
            text = text_of(item.get("content"))
            texts.append(text)
            if item.get("role") == "user":
                user_text = text
        elif kind == "function_call_output":
            texts.append(str(item.get("output", "")))
        elif kind == "function_call":
            texts.append(str(item.get("arguments", "")))
    return "\n".join(texts), user_text, last_tool


def responses_usage(plan: Plan) -> dict[str, Any]:
    """Build a Responses API usage object."""
    output = plan.output_tokens + plan.reasoning_tokens
    return {
        "input_tokens": plan.input_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.input_tokens + output,
    }


def responses(req: MockRequest) -> Call:  # noqa: C901 - older than the complexity rule; to split
    """Handle POST /v1/responses (unary and the full streamed event sequence)."""
    body = req.json()
    model = _model(body)
    all_text, user_text, last_tool = _responses_input(body)
    stream = body.get("stream") is True
    text_cfg = obj(body.get("text"))
    schema, json_mode = _json_format(text_cfg.get("format"))
    tools = [
        ToolSpec(t["name"], t.get("parameters") if isinstance(t.get("parameters"), dict) else None)
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]
    choice = _tool_choice(body.get("tool_choice"))
    reasoning = body.get("reasoning")
    wants_thinking = isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none", "minimal")
    max_tokens = _max_tokens(body, "max_output_tokens")

    def make(d: Directives, name: str) -> Reply | StreamReply:
        tool = choose_tool(tools, choice, d.tool, last_tool)
        plan = build_plan(
            all_text=all_text,
            user_text=user_text,
            directives=d,
            max_tokens=max_tokens,
            json_schema=schema,
            json_mode=json_mode,
            tool=tool,
            thinking=wants_thinking,
            images=count_images(body.get("input")),
        )
        rid = new_id("resp_")
        ids = {"rs": new_id("rs_"), "msg": new_id("msg_"), "fc": new_id("fc_")}
        status = "incomplete" if plan.truncated else "completed"
        items: list[dict[str, Any]] = []
        if plan.thinking:
            items.append(
                {
                    "id": ids["rs"],
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": plan.thinking}],
                }
            )
        if plan.tool:
            items.append(
                {
                    "id": ids["fc"],
                    "type": "function_call",
                    "call_id": plan.tool_call_id,
                    "name": plan.tool.name,
                    "arguments": plan.tool_args,
                    "status": "completed",
                }
            )
        else:
            items.append(
                {
                    "id": ids["msg"],
                    "type": "message",
                    "role": "assistant",
                    "status": status,
                    "content": [
                        {"type": "output_text", "text": plan.text, "annotations": [], "logprobs": []}
                    ],
                }
            )
        base: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": now(),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": max_tokens,
            "model": name,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {
                "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
                "summary": None,
            },
            "temperature": 1.0,
            "text": {"format": text_cfg.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        final = {
            **base,
            "status": status,
            "output": items,
            "usage": responses_usage(plan),
            "incomplete_details": {"reason": "max_output_tokens"} if plan.truncated else None,
        }
        if not stream:
            return Reply(200, dumps(final))
        seq = 0
        events: list[bytes] = []

        def emit(kind: str, **fields: Any) -> None:
            nonlocal seq
            events.append(sse({"type": kind, "sequence_number": seq, **fields}, kind))
            seq += 1

        emit("response.created", response=base)
        emit("response.in_progress", response=base)
        for index, item in enumerate(items):
            if item["type"] == "reasoning":
                emit("response.output_item.added", output_index=index, item={**item, "summary": []})
                ref = {"item_id": item["id"], "output_index": index, "summary_index": 0}
                emit(
                    "response.reasoning_summary_part.added", **ref, part={"type": "summary_text", "text": ""}
                )
                for piece in plan.thinking_chunks:
                    emit("response.reasoning_summary_text.delta", **ref, delta=piece)
                emit("response.reasoning_summary_text.done", **ref, text=plan.thinking)
                emit(
                    "response.reasoning_summary_part.done",
                    **ref,
                    part={"type": "summary_text", "text": plan.thinking},
                )
            elif item["type"] == "function_call":
                emit(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
                ref = {"item_id": item["id"], "output_index": index}
                for piece in plan.tool_arg_pieces:
                    emit("response.function_call_arguments.delta", **ref, delta=piece)
                emit(
                    "response.function_call_arguments.done",
                    **ref,
                    arguments=plan.tool_args,
                    name=item["name"],
                )
            else:
                emit(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "status": "in_progress", "content": []},
                )
                ref = {"item_id": item["id"], "output_index": index, "content_index": 0}
                emit(
                    "response.content_part.added",
                    **ref,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
                for piece in plan.chunks:
                    emit("response.output_text.delta", **ref, delta=piece, logprobs=[])
                emit("response.output_text.done", **ref, text=plan.text, logprobs=[])
                emit("response.content_part.done", **ref, part=item["content"][0])
            emit("response.output_item.done", output_index=index, item=item)
        emit("response.incomplete" if plan.truncated else "response.completed", response=final)

        def error_frame(index: int) -> bytes:
            return sse(
                {
                    "type": "error",
                    "sequence_number": index,
                    "code": "server_error",
                    "message": "The mock upstream injected a stream error.",
                    "param": None,
                },
                "error",
            )

        return StreamReply(events, error_frame)

    return Call(model, stream, user_text, make)


def _embedding(text: str, dims: int) -> list[float]:
    """Derive a deterministic unit vector from the text."""
    raw = b""
    counter = 0
    while len(raw) < dims * 2:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(int.from_bytes(raw[2 * i : 2 * i + 2], "little") / 32767.5) - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Round-trip through float32 so float and base64 encodings carry the same numbers.
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in values))))


def embeddings(req: MockRequest) -> Call:
    """Handle POST /v1/embeddings (float and base64 encoding formats)."""
    body = req.json()
    model = _model(body)
    value = body.get("input")
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        inputs = [" ".join(map(str, value))]
    elif isinstance(value, list) and value:
        inputs = [
            v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v)
            for v in value
        ]
    else:
        raise BadRequest("'input' must be a non-empty string or array")
    bounded_inputs(inputs, "input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'")
    dims = int_or_none(body.get("dimensions")) or 16
    if not 1 <= dims <= 4096:
        raise BadRequest("'dimensions' must be between 1 and 4096")

    def make(_: Directives, name: str) -> Reply:
        data = []
        for index, text in enumerate(inputs):
            vector = _embedding(text, dims)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if fmt == "base64" else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(estimate_tokens(len(t)) for t in inputs)
        return Reply(
            200,
            dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            ),
        )

    return Call(model, False, inputs[-1], make)


def _image_data(n: int, b64: bool, revised: str) -> list[dict[str, Any]]:
    if b64:
        return [{"b64_json": PNG_1X1, "revised_prompt": revised} for _ in range(n)]
    return [
        {"url": f"https://mock.odock.invalid/images/{i}.png", "revised_prompt": revised} for i in range(n)
    ]


def _images_response(name: str, n: int, b64: bool, prompt: str, revised: str) -> dict[str, Any]:
    tokens = estimate_tokens(len(prompt))
    return {
        "created": now(),
        "data": _image_data(n, b64, revised),
        "usage": {
            "input_tokens": tokens,
            "output_tokens": 16 * n,
            "total_tokens": tokens + 16 * n,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
        },
    }


def images_generations(req: MockRequest) -> Call:
    """Handle POST /v1/images/generations."""
    body = req.json()
    raw_model = body.get("model")
    model = raw_model if isinstance(raw_model, str) and raw_model else "dall-e-2"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' is required")
    n = bounded_int(body.get("n"), "n", 1, MAX_IMAGES, 1)
    b64 = body.get("response_format") == "b64_json" or model.startswith("gpt-image")

    def make(d: Directives, name: str) -> Reply:
        answer = _images_response(name, n, b64, prompt, prompt)
        if d.misreport_output is not None:  # a broken upstream's bill
            answer["usage"]["output_tokens"] = d.misreport_output
        return Reply(200, dumps(answer))

    return Call(model, False, prompt, make)


def _form_count(raw: str | None, field: str, high: int) -> int:
    """A count from a multipart form field: absent or not a number is 1 (as before); above `high`, 400."""
    if raw is None or not raw.isdigit():
        return 1
    return bounded_int(int(raw) if len(raw) <= 18 else high + 1, field, 1, high, 1)


def images_upload(req: MockRequest) -> Call:
    """Handle POST /v1/images/edits and /v1/images/variations (multipart), reporting the received file sizes."""
    parts = multipart.parse(req.headers.get("content-type", ""), req.body)
    form = multipart.fields(parts)
    uploads = multipart.files(parts)
    if not uploads:
        raise BadRequest("an image file is required")
    model = form.get("model") or "dall-e-2"
    prompt = form.get("prompt", "")
    n = _form_count(form.get("n"), "n", MAX_IMAGES)
    b64 = form.get("response_format") == "b64_json" or model.startswith("gpt-image")
    summary = multipart.describe(parts)
    revised = "received files: " + " ".join(f"{p.name}={len(p.data)}" for p in uploads)

    def make(_: Directives, name: str) -> Reply:
        return Reply(
            200,
            dumps(_images_response(name, n, b64, prompt, revised)),
            headers=[(b"x-mock-files", summary.encode())],
        )

    return Call(model, False, prompt, make, extra={"form_keys": sorted({p.name for p in parts})})


def models(_: MockRequest) -> Reply:
    """Handle GET /v1/models."""
    created = 1700000000
    data = [{"id": m, "object": "model", "created": created, "owned_by": "odock-mock"} for m in MODELS]
    return Reply(200, dumps({"object": "list", "data": data}))
