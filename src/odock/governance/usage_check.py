"""Sanity of the usage an upstream reports: a count below zero or above a ceiling cannot be true.

Such a count is clamped (to 0, or to the ceiling) and flagged on the call, never priced as reported: a negative
count would otherwise price as a negative cost and credit a budget, and an absurd one overflow the ledger.
"""

from __future__ import annotations

from typing import Any

import msgspec

from odock.model import Usage

_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


def checked_usage(usage: Usage, raw: dict[str, Any] | None, ceiling: int) -> tuple[Usage, list[str]]:
    """Return the usage with impossible counts clamped, and the flags naming what was clamped."""
    flags: set[str] = set()
    if raw and _negative_in(raw):
        flags.add("negative")  # the dialect may already have floored a difference of two counts at 0
    changes: dict[str, int] = {}
    for name in _FIELDS:
        value = getattr(usage, name)
        if value < 0:
            flags.add("negative")
            changes[name] = 0
        elif value > ceiling:
            flags.add("above_ceiling")
            changes[name] = ceiling
    if changes:
        usage = msgspec.structs.replace(usage, **changes)
    return usage, sorted(flags)


def _negative_in(node: Any, depth: int = 0) -> bool:
    """Whether a usage object holds a negative number (its nested details too, a few levels deep)."""
    if isinstance(node, dict):
        values: Any = node.values()
    elif isinstance(node, list):
        values = node
    else:
        return False
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                return True
        elif depth < 3 and _negative_in(value, depth + 1):
            return True
    return False
