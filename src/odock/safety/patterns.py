"""Operator-supplied SafetySec patterns, compiled with RE2: matching time is linear in the text whatever the
pattern (no backtracking, so no catastrophic pattern can stall a worker), and features that need backtracking
(backreferences, lookaround) are refused when the policy is written."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2  # type: ignore[import-untyped]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported to the admin, not logged to stderr
_OPTIONS.max_mem = 8 << 20  # a pattern whose automaton would need more is refused


@lru_cache(maxsize=512)
def compile_pattern(source: str) -> tuple[Any, str | None]:
    """The compiled pattern, or None and why it was refused."""
    try:
        return re2.compile(source, options=_OPTIONS), None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return None, f"not a valid RE2 pattern ({reason})"


def find_spans(source: str, text: str) -> list[tuple[int, int]]:
    """Where an (already validated) operator pattern matches `text`; empty matches are ignored."""
    compiled, _ = compile_pattern(source)
    if compiled is None:
        return []
    return [(m.start(), m.end()) for m in compiled.finditer(text) if m.end() > m.start()]
