"""Client side of the unified-endpoint tests: call `POST /v1/llm/chat` unary or streamed and normalize both answers
to one shape, so that a stream can be compared field by field with the unary answer of the same conversation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from openai.types.chat import ChatCompletionChunk

MODELS = ("gpt-test", "claude-test", "gemini-test", "vllm-test")
PROVIDER_OF = {"gpt-test": "openai", "claude-test": "anthropic", "gemini-test": "gemini", "vllm-test": "vllm"}


@dataclass
class Call:
    """One tool call as the client sees it (name and raw argument text, byte for byte)."""

    id: str
    name: str
    arguments: str


@dataclass
class Answer:
    """A unary or reassembled streamed answer of `/v1/llm/chat`, normalized for comparison."""

    content: str
    stop: str | None
    tool_calls: list[Call]
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    reasoning: str = ""
    request_id: str = ""
    raw: Any = field(default=None, repr=False)


def headers(key: str) -> dict[str, str]:
    """Authorization headers for the granted key."""
    return {"Authorization": f"Bearer {key}"}


async def unary(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> Answer:
    """POST a unary unified request and normalize its Odock JSON answer."""
    resp = await http.post("/v1/llm/chat", headers=headers(key), json={**body, "stream": False})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    reasoning = "".join(
        b.get("text") or "" for b in data.get("content_blocks") or [] if b.get("type") == "thinking"
    )
    return Answer(
        content=data["content"],
        stop=data["stop_reason"],
        tool_calls=[
            Call(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in data.get("tool_calls") or []
        ],
        input_tokens=data["input_tokens"],
        output_tokens=data["output_tokens"],
        cached_input_tokens=data.get("cached_input_tokens", 0),
        reasoning_tokens=data.get("reasoning_tokens", 0),
        reasoning=reasoning,
        request_id=resp.headers["x-request-id"],
        raw=data,
    )


async def stream_events(
    http: httpx.AsyncClient, key: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    """POST a streamed unified request; return the response and the payload of every SSE `data:` line."""
    async with http.stream(
        "POST", "/v1/llm/chat", headers=headers(key), json={**body, "stream": True}
    ) as resp:
        raw = b"".join([part async for part in resp.aiter_bytes()])
    assert resp.status_code == 200, raw[:500]
    assert resp.headers["content-type"].startswith("text/event-stream")
    return resp, [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def reassemble(events: list[str]) -> Answer:
    """Rebuild one answer from OpenAI chunks: text deltas joined, tool calls by index (name from the first delta,
    arguments concatenated), the finish reason, and the usage chunk."""
    assert events and events[-1] == "[DONE]", events[-3:]
    assert "[DONE]" not in events[:-1]
    content, reasoning, stops, usages = [], [], [], []
    calls: dict[int, Call] = {}
    for event in events[:-1]:
        chunk = ChatCompletionChunk.model_validate_json(event)
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            delta = choice.delta
            content.append(delta.content or "")
            extra = delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or extra.get("reasoning") or "")
            for tc in delta.tool_calls or []:
                fn = tc.function
                if tc.index not in calls:
                    assert fn is not None and fn.name, f"first delta of tool call {tc.index} carries no name"
                    assert tc.id, f"first delta of tool call {tc.index} carries no id"
                    calls[tc.index] = Call(tc.id, fn.name, fn.arguments or "")
                else:
                    assert fn is None or not fn.name, "a later tool-call delta repeats the name"
                    calls[tc.index].arguments += (fn.arguments or "") if fn else ""
            if choice.finish_reason is not None:
                stops.append(choice.finish_reason)
    assert len(stops) == 1, f"expected exactly one finish_reason, got {stops}"
    assert len(usages) <= 1, "usage chunk repeated"
    usage = usages[0] if usages else None
    details_in = usage.prompt_tokens_details if usage else None
    details_out = usage.completion_tokens_details if usage else None
    return Answer(
        content="".join(content),
        stop=stops[0],
        tool_calls=[calls[i] for i in sorted(calls)],
        input_tokens=usage.prompt_tokens if usage else None,
        output_tokens=usage.completion_tokens if usage else None,
        cached_input_tokens=(details_in.cached_tokens or 0) if details_in else 0,
        reasoning_tokens=(details_out.reasoning_tokens or 0) if details_out else 0,
        reasoning="".join(reasoning),
    )


async def streamed(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> Answer:
    """POST a streamed unified request asking for usage and reassemble it."""
    resp, events = await stream_events(http, key, {**body, "stream_options": {"include_usage": True}})
    answer = reassemble(events)
    answer.request_id = resp.headers["x-request-id"]
    return answer


async def ask(http: httpx.AsyncClient, key: str, body: dict[str, Any], mode: str) -> Answer:
    """Ask in the given mode ("unary" or "stream")."""
    return await (unary(http, key, body) if mode == "unary" else streamed(http, key, body))


# --- the conversations of the matrix ------------------------------------------------------------------------

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "temperature", "sunny"],
    "additionalProperties": False,
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SYSTEM = {"role": "system", "content": "You are a terse assistant."}
WEATHER_QUESTION = {"role": "user", "content": "What is the weather in Paris right now?"}


def plain(model: str) -> dict[str, Any]:
    """Plain text with a system message."""
    return {
        "model": model,
        "messages": [SYSTEM, {"role": "user", "content": "Summarize the plot of Hamlet briefly."}],
    }


def tool_call(model: str) -> dict[str, Any]:
    """A question with one tool offered: the mock calls it."""
    return {
        "model": model,
        "messages": [SYSTEM, WEATHER_QUESTION],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    }


def tool_result(model: str, call: Call) -> dict[str, Any]:
    """The same conversation continued with the assistant's tool call and the tool's result."""
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        ],
    }
    result = {
        "role": "tool",
        "tool_call_id": call.id,
        "content": json.dumps({"temperature": 21, "sky": "clear"}),
    }
    return {**tool_call(model), "messages": [SYSTEM, WEATHER_QUESTION, assistant, result]}


def image(model: str) -> dict[str, Any]:
    """Text with a base64 data-URL image and an https image."""
    parts = [
        {"type": "text", "text": "Compare these two pictures please."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    return {"model": model, "messages": [{"role": "user", "content": parts}]}


def json_answer(model: str) -> dict[str, Any]:
    """A JSON-schema `response_format`."""
    return {
        "model": model,
        "messages": [SYSTEM, {"role": "user", "content": "Weather in Paris as JSON."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "strict": True, "schema": WEATHER_SCHEMA},
        },
    }


def truncated(model: str) -> dict[str, Any]:
    """A `max_tokens` below the mock's 12-word answer: cut at the limit, stop reason "length"."""
    return {**plain(model), "max_tokens": 5}


def no_tool(model: str) -> dict[str, Any]:
    """Tools offered but `tool_choice: none`: a text answer."""
    return {**tool_call(model), "tool_choice": "none"}


def forced_tool(model: str) -> dict[str, Any]:
    """Two tools offered, the second one forced by name."""
    return {
        **tool_call(model),
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
