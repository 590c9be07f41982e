"""Plain values shared by the mock's dialect modules and its ASGI server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from odock.mock.directives import MAX_TOKENS, Directives

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(value: Any) -> bytes:
    """Encode a value as compact JSON bytes."""
    return _encoder.encode(value)


def loads(data: bytes) -> Any:
    """Decode JSON bytes."""
    return _decoder.decode(data)


def sse(payload: Any, event: str | None = None) -> bytes:
    """Frame one server-sent event whose data is the JSON of `payload`."""
    data = b"data: " + dumps(payload) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def new_id(prefix: str) -> str:
    """Return a fresh random id with a provider-style prefix."""
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    """Return the current Unix time in seconds."""
    return int(time.time())


class BadRequest(Exception):
    """The request is malformed; answered 400 in the provider's error shape."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Every count or size the mock honours is bounded, so that no request can make it allocate or wait without end
# (an unbounded `n = 2**63` once took 23 GB before the kernel killed the process); above a bound: 400.
MAX_BODY_BYTES = 64 * 1024 * 1024  # request body (413 above)
MAX_IMAGES = 10  # images per request (`n`), OpenAI's own bound
MAX_INPUTS = (
    2048  # inputs of one embeddings/pooling/classify/score/rerank request, OpenAI's bound for embeddings
)


def bounded_int(value: Any, field: str, low: int, high: int, default: int) -> int:
    """Return an optional integer field within [low, high] (`default` when absent), or raise BadRequest."""
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid '{field}': expected an integer.")
    if value < low:
        raise BadRequest(
            f"Invalid '{field}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead."
        )
    if value > high:
        raise BadRequest(
            f"Invalid '{field}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead."
        )
    return value


def bounded_max_tokens(value: Any, field: str) -> int | None:
    """Return an output-token cap (any integer up to MAX_TOKENS; other values mean none), or raise BadRequest."""
    number = int_or_none(value)
    if number is not None and number > MAX_TOKENS:
        raise BadRequest(
            f"Invalid '{field}': integer above maximum value. Expected a value <= {MAX_TOKENS}, "
            f"but got {number} instead."
        )
    return number


def bounded_inputs(inputs: list[str], field: str) -> list[str]:
    """Return the inputs when there are at most MAX_INPUTS, or raise BadRequest."""
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(
            f"Invalid '{field}': array too long. Expected an array with maximum length {MAX_INPUTS}, "
            f"but got an array with length {len(inputs)} instead."
        )
    return inputs


@dataclass(slots=True)
class MockRequest:
    """One HTTP request as the mock sees it (header names lower-case)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    _json: Any = None

    def json(self) -> dict[str, Any]:
        """Return the body as a JSON object, or raise BadRequest."""
        if self._json is None:
            try:
                value = loads(self.body) if self.body else {}
            except msgspec.DecodeError:
                raise BadRequest("request body is not valid JSON") from None
            if not isinstance(value, dict):
                raise BadRequest("request body must be a JSON object")
            self._json = value
        return self._json  # type: ignore[no-any-return]


@dataclass(slots=True)
class Reply:
    """A complete (unary) response."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class StreamReply:
    """A streamed response: framed events (the last one terminates) and how to frame an injected error."""

    events: list[bytes]
    error_frame: Callable[[int], bytes]
    content_type: bytes = b"text/event-stream"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Call:
    """What a dialect learned from a request before the answer is built."""

    model: str
    stream: bool
    user_text: str
    make: Callable[[Directives, str], Reply | StreamReply]
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[MockRequest], Call | Reply]


def text_of(content: Any) -> str:
    """Concatenate the text of a message content (string, or list of parts with `text`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                elif isinstance(part.get("content"), (str, list)):
                    texts.append(text_of(part["content"]))
        return " ".join(texts)
    return ""


def int_or_none(value: Any) -> int | None:
    """Return value if it is an int (not bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def obj(value: Any) -> dict[str, Any]:
    """Return value if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}
