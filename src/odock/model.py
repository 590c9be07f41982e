"""The normalized call model: what every dialect decodes into and encodes from.

Field names follow the seed page's "Request Fields" and "Response Fields". Messages are kept close to the
OpenAI chat shape (the unified endpoint's wire format) with typed content parts, so that the OpenAI dialect is
nearly an identity and the others translate from one well-known shape.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["system", "developer", "user", "assistant", "tool"]


class ContentPart(msgspec.Struct, omit_defaults=True):
    """One typed piece of a message: text, image (URL or base64), or a thinking block kept for round trips."""

    type: Literal["text", "image", "thinking", "redacted_thinking", "refusal", "audio"]
    text: str | None = None
    # images: either a URL, or base64 data with its media type
    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None
    # thinking blocks (Anthropic) carry a signature that must be sent back unchanged
    signature: str | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    """A function call the assistant made; `arguments` is the exact JSON text the model produced."""

    id: str
    name: str
    arguments: str = ""


class Tool(msgspec.Struct, omit_defaults=True):
    """A function the model may call (OpenAI function format)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Message(msgspec.Struct, omit_defaults=True):
    """One conversation turn; `content` is plain text or typed parts."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """Return the message's text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class UpstreamOverride(msgspec.Struct, omit_defaults=True):
    """Per-request upstream settings applied from the model/provider configuration (never from the client)."""

    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float | None = None
    model: str | None = None


class GatewayRequest(msgspec.Struct, omit_defaults=True):
    """A normalized LLM request."""

    model: str
    messages: list[Message] = []
    provider: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    # {"type": "text" | "json_object" | "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    # "auto" | "none" | "required" | {"type": "function", "name": ...}
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    # reasoning/thinking budget when the client asked for one (Anthropic thinking, Gemini thinkingConfig)
    reasoning_effort: str | None = None
    thinking_budget: int | None = None
    raw: dict[str, Any] | None = None
    upstream: UpstreamOverride | None = None


class Usage(msgspec.Struct, omit_defaults=True):
    """Token usage with each class counted once.

    `input_tokens` excludes cached-read and cache-write input tokens (OpenAI's and Gemini's prompt counts include
    cached tokens, so decoders subtract them). `output_tokens` includes reasoning tokens; `reasoning_tokens` is
    the part of it spent thinking (OpenAI and Anthropic count it that way; Gemini decoders add thoughts in).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # True when the provider reported nothing and the gateway estimated
    estimated: bool = False

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total(self) -> int:
        return self.total_input + self.output_tokens


StopReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class GatewayResponse(msgspec.Struct, omit_defaults=True):
    """A normalized LLM answer (seed "Response Fields")."""

    provider: str
    model: str
    content: str = ""
    stop_reason: str | None = None
    content_blocks: list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    id: str | None = None
    created: int | None = None
    raw_usage: dict[str, Any] | None = None
    provider_request_id: str | None = None
    raw: dict[str, Any] | None = None


# --- stream events: what a provider stream decodes into, and what a client dialect encodes from -----------


class StreamStart(msgspec.Struct, tag="start"):
    id: str
    model: str
    created: int = 0


class TextDelta(msgspec.Struct, tag="text"):
    text: str
    index: int = 0


class ThinkingDelta(msgspec.Struct, tag="thinking"):
    text: str = ""
    signature: str | None = None


class ToolCallDelta(msgspec.Struct, tag="tool_call"):
    """A piece of a tool call; `id`/`name` arrive on the first delta of a call, then argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class UsageEvent(msgspec.Struct, tag="usage"):
    usage: Usage
    raw: dict[str, Any] | None = None


class StreamStop(msgspec.Struct, tag="stop"):
    stop_reason: str


StreamEvent = StreamStart | TextDelta | ThinkingDelta | ToolCallDelta | UsageEvent | StreamStop
