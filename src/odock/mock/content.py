"""Deterministic answers of the mock upstream: text, JSON, tool calls, thinking, and their token usage."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from odock.mock.directives import Directives, strip_markers

DEFAULT_WORDS = 12
DEFAULT_CHUNKS = 4
_ECHO_WORDS = 6
_FILLER = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
_TOOL_PIECE = 6
# Friendly values for common property names so tool arguments look like the docs' examples.
_NAMED_VALUES: dict[str, Any] = {
    "city": "Paris",
    "location": "Paris",
    "country": "France",
    "unit": "celsius",
    "units": "celsius",
    "query": "mock query",
    "name": "Mock",
    "language": "en",
    "date": "2024-01-01",
    "email": "mock@example.com",
}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the request offered: its name and JSON schema of arguments (if any)."""

    name: str
    schema: dict[str, Any] | None = None


@dataclass(slots=True)
class Plan:
    """Everything one answer consists of, ready for any dialect to encode."""

    text: str = ""
    chunks: list[str] = field(default_factory=list)
    is_json: bool = False
    tool: ToolSpec | None = None
    tool_args: str = ""
    tool_arg_pieces: list[str] = field(default_factory=list)
    tool_call_id: str = ""
    thinking: str = ""
    thinking_chunks: list[str] = field(default_factory=list)
    input_tokens: int = 1
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    truncated: bool = False

    @property
    def tool_input(self) -> dict[str, Any]:
        """Return the tool arguments as an object."""
        value = json.loads(self.tool_args) if self.tool_args else {}
        return value if isinstance(value, dict) else {}


def estimate_tokens(chars: int) -> int:
    """Count tokens the mock's way: ceil(chars / 4), at least 1."""
    return max(1, math.ceil(chars / 4))


_IMAGE_PART_TYPES = ("image_url", "input_image", "image")


def count_images(node: Any) -> int:
    """Count the image parts of a request's messages (OpenAI chat/Responses, Anthropic, Gemini inline/file data)."""
    if isinstance(node, list):
        return sum(count_images(item) for item in node)
    if not isinstance(node, dict):
        return 0
    if node.get("type") in _IMAGE_PART_TYPES:
        return 1
    for key in ("inlineData", "inline_data", "fileData", "file_data"):
        data = node.get(key)
        if isinstance(data, dict) and str(data.get("mimeType", data.get("mime_type", ""))).startswith(
            "image/"
        ):
            return 1
    return sum(count_images(value) for value in node.values() if isinstance(value, (dict, list)))


def split_words(text: str, parts: int) -> list[str]:
    """Split text at word boundaries into `parts` pieces whose concatenation is the text."""
    words = text.split(" ")
    parts = max(1, min(parts, len(words)))
    size, extra = divmod(len(words), parts)
    pieces: list[str] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        piece = " ".join(words[start:end])
        pieces.append(piece if i == 0 else " " + piece)
        start = end
    return pieces


def split_chars(text: str, parts: int) -> list[str]:
    """Split text into `parts` nearly equal character runs."""
    if not text:
        return [""]
    parts = max(1, min(parts, len(text)))
    step = math.ceil(len(text) / parts)
    return [text[i : i + step] for i in range(0, len(text), step)]


def value_for_schema(schema: Any, name: str = "value", depth: int = 0) -> Any:  # noqa: C901 - older than the complexity rule; to split
    """Build a deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 6:
        return _NAMED_VALUES.get(name, f"mock {name}")
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return value_for_schema(options[0], name, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "string")
    kind = str(kind).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {key: value_for_schema(sub, key, depth + 1) for key, sub in props.items()}
    if kind == "array":
        return [value_for_schema(schema.get("items"), name, depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _NAMED_VALUES.get(name, f"mock {name}")


def answer_words(user_text: str, count: int) -> list[str]:
    """Return `count` words: the echo of the user's text, then filler."""
    echo = strip_markers(user_text).split()[:_ECHO_WORDS] or ["(empty)"]
    words = ["Mock", "reply", "to:", *echo]
    i = 0
    while len(words) < count:
        words.append(_FILLER[i % len(_FILLER)])
        i += 1
    return words[:count]


def call_id(prefix: str, seed: str) -> str:
    """Return a stable id derived from the request text."""
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:24]


def choose_tool(
    tools: list[ToolSpec], choice: str, directive: str | None, last_is_tool_result: bool
) -> ToolSpec | None:
    """Pick the tool to call: the directive's, a forced one, or the first offered unless a result just came back."""
    by_name = {t.name: t for t in tools}
    if directive:
        return by_name.get(directive, ToolSpec(directive))
    if not tools or choice == "none":
        return None
    if choice not in ("auto", "any"):
        return by_name.get(choice, ToolSpec(choice))
    if choice == "any" or not last_is_tool_result:
        return tools[0]
    return None


def build_plan(
    *,
    all_text: str,
    user_text: str,
    directives: Directives,
    max_tokens: int | None = None,
    json_schema: dict[str, Any] | None = None,
    json_mode: bool = False,
    tool: ToolSpec | None = None,
    thinking: bool = False,
    images: int = 0,
) -> Plan:
    """Compute the deterministic answer and usage for one request."""
    plan = Plan()
    cached = directives.cached or 0
    if directives.token_bytes:
        text_tokens = max(1, math.ceil(len(all_text.encode()) / directives.token_bytes))
    else:
        text_tokens = estimate_tokens(len(all_text))
    plan.input_tokens = max(text_tokens + images * (directives.image_tokens or 0), cached)
    plan.cached_tokens = cached
    parts = directives.chunks if directives.chunks else DEFAULT_CHUNKS
    seed = user_text or all_text
    if thinking or directives.thinking or directives.reasoning:
        echo = " ".join(strip_markers(user_text).split()[:4]) or "the request"
        plan.thinking = f"Let me think about {echo} and answer briefly."
        plan.thinking_chunks = split_words(plan.thinking, 3)
        plan.reasoning_tokens = directives.reasoning or len(plan.thinking.split())
    if max_tokens is not None and max_tokens > 0 and plan.reasoning_tokens:
        # reasoning is output inside the cap (as every provider bills it): it leaves the rest for the answer
        plan.reasoning_tokens = min(plan.reasoning_tokens, max_tokens - 1)
        max_tokens -= plan.reasoning_tokens
    if tool is not None:
        plan.tool = tool
        args = (
            value_for_schema(tool.schema) if tool.schema else {"input": " ".join(answer_words(user_text, 6))}
        )
        if not isinstance(args, dict):
            args = {"value": args}
        plan.tool_args = json.dumps(args, separators=(", ", ": "))
        plan.tool_arg_pieces = [
            plan.tool_args[i : i + _TOOL_PIECE] for i in range(0, len(plan.tool_args), _TOOL_PIECE)
        ]
        plan.tool_call_id = call_id("call_", seed + tool.name)
        plan.output_tokens = estimate_tokens(len(plan.tool_args))
        return plan
    wanted = directives.words if directives.words is not None else DEFAULT_WORDS
    if max_tokens is not None and 0 < max_tokens < wanted:
        wanted, plan.truncated = max_tokens, True
    wanted = max(1, wanted)
    if json_schema is not None or json_mode:
        value = value_for_schema(json_schema) if json_schema is not None else None
        if not isinstance(value, dict):
            value = {"reply": " ".join(answer_words(user_text, wanted))}
        plan.text = json.dumps(value)
        plan.is_json = True
        plan.truncated = False
        plan.chunks = split_chars(plan.text, parts)
        plan.output_tokens = estimate_tokens(len(plan.text))
        return plan
    words = answer_words(user_text, wanted)
    plan.text = " ".join(words)
    plan.chunks = split_words(plan.text, parts)
    plan.output_tokens = len(words)
    return plan
