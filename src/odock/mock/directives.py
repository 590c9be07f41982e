"""Failure/latency directives of the mock upstream: parsed from a header, the model string or a text marker."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

MARKER_RE = re.compile(r"\[\[mock\b([^\]]*)\]\]")
_SPLIT_RE = re.compile(r"[\s,;&]+")


class DirectiveError(ValueError):
    """A directive that cannot be understood (unknown key or bad value)."""


@dataclass(frozen=True, slots=True)
class MockDefaults:
    """Server-wide defaults applied to every request (the CLI flags)."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    require_auth: bool = True


@dataclass(frozen=True, slots=True)
class Directives:
    """Per-request behaviour; None means "not given" so that later sources and defaults can fill in."""

    status: int | None = None
    fail_rate: float | None = None
    latency_ms: float | None = None
    chunk_delay_ms: float | None = None
    chunks: int | None = None
    cut_after: int | None = None
    error_after: int | None = None
    tool: str | None = None
    thinking: bool | None = None
    words: int | None = None
    cached: int | None = None
    # usage shapes (an honest provider's bill): tokens per image part, reasoning tokens (inside max_tokens),
    # prompt text billed at one token per this many UTF-8 bytes (default: the mock's ~4 characters per token)
    image_tokens: int | None = None
    reasoning: int | None = None
    token_bytes: int | None = None
    linger_ms: float | None = None  # streams: wait this long after the last event before ending the body
    # a broken upstream: the output tokens an image answer reports, whatever it generated (negative allowed)
    misreport_output: int | None = None
    error: str | None = None  # a named provider error in the provider's own words (see NAMED_ERRORS)
    retry_after: int | None = None  # seconds for the Retry-After header of an error answer

    def merged(self, other: Directives) -> Directives:
        """Return self overridden by every field that `other` sets."""
        changes = {
            f.name: getattr(other, f.name) for f in fields(other) if getattr(other, f.name) is not None
        }
        return replace(self, **changes) if changes else self


MAX_DELAY_MS = 600_000.0  # ten minutes: any latency, chunk delay or linger
MAX_TOKENS = 10_000_000  # any token count a request asks for (`max_tokens`)
MAX_REPORTED = 10**12  # a count the mock only reports (allocates nothing): above the gateway's usage ceiling
# the inclusive bounds of every number a directive may set: nothing a request asks for allocates or waits unbounded
_INT_KEYS = {
    "status": (100, 599),
    "chunks": (0, 10_000),
    "cut_after": (0, 1_000_000),
    "error_after": (0, 1_000_000),
    "words": (0, 100_000),
    "cached": (0, MAX_REPORTED),
    "retry_after": (0, 86_400),
    "image_tokens": (0, MAX_TOKENS),
    "reasoning": (0, MAX_TOKENS),
    "token_bytes": (1, 1_000),
    "misreport_output": (-MAX_REPORTED, MAX_REPORTED),
}
_FLOAT_KEYS = {
    "fail_rate": 1.0,
    "latency_ms": MAX_DELAY_MS,
    "chunk_delay_ms": MAX_DELAY_MS,
    "linger_ms": MAX_DELAY_MS,
}
# `error=<name>`: the errors a real provider answers to a well-formed request it cannot serve
NAMED_ERRORS = frozenset({"context_length", "model_not_found"})


def parse(text: str) -> Directives:  # noqa: C901 - older than the complexity rule; to split
    """Parse `key=value` pairs separated by spaces, commas, semicolons or `&`."""
    values: dict[str, object] = {}
    for token in _SPLIT_RE.split(text.strip()):
        if not token:
            continue
        key, sep, raw = token.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep:
            raise DirectiveError(f"mock directive {token[:40]!r} is not key=value")
        if key not in _INT_KEYS and key not in _FLOAT_KEYS and key not in ("tool", "thinking", "error"):
            raise DirectiveError(f"unknown mock directive {key[:40]!r}")
        try:
            if key in _INT_KEYS:
                number = int(raw)
                low, high = _INT_KEYS[key]
                if not low <= number <= high:
                    raise DirectiveError(
                        f"mock directive {key!r} must be between {low} and {high}, not {raw[:40]!r}"
                    )
                values[key] = number
            elif key in _FLOAT_KEYS:
                value = float(raw)
                if not 0 <= value <= _FLOAT_KEYS[key]:  # also refuses nan and inf
                    raise DirectiveError(
                        f"mock directive {key!r} must be between 0 and {_FLOAT_KEYS[key]:g}, not {raw[:40]!r}"
                    )
                values[key] = value
            elif key == "tool":
                if not raw:
                    raise ValueError
                values[key] = raw
            elif key == "error":
                if raw not in NAMED_ERRORS:
                    raise ValueError
                values[key] = raw
            else:
                values[key] = raw.lower() in ("1", "true", "yes", "on")
        except DirectiveError:
            raise
        except ValueError:
            raise DirectiveError(f"bad value for mock directive {key!r}: {raw[:40]!r}") from None
    return Directives(**values)  # type: ignore[arg-type]


def split_model(model: str) -> tuple[str, Directives]:
    """Split `gpt-4o;status=503` into the bare model name and its directives."""
    name, sep, rest = model.partition(";")
    return (name, parse(rest)) if sep else (model, Directives())


def from_text(text: str) -> Directives:
    """Collect every `[[mock ...]]` marker of a text (later markers win)."""
    result = Directives()
    for match in MARKER_RE.finditer(text):
        result = result.merged(parse(match.group(1)))
    return result


def strip_markers(text: str) -> str:
    """Remove `[[mock ...]]` markers so they do not appear in the echoed answer."""
    return MARKER_RE.sub(" ", text) if "[[" in text else text


def resolve(model_directives: Directives, text: str, header: str | None) -> Directives:
    """Combine the sources; precedence model < text marker < `x-mock` header."""
    result = model_directives
    if "[[" in text:
        result = result.merged(from_text(text))
    if header:
        result = result.merged(parse(header))
    return result
