"""Sanity of the usage an upstream reports: a count below zero or above a ceiling cannot be true.

Such a count is clamped (to 0, or to the ceiling) and flagged on the call, never priced as reported: a negative
count would otherwise price as a negative cost and credit a budget, and an absurd one overflow the ledger.
"""

from __future__ import annotations

from typing import Any

import msgspec

from odock.model import Usage

_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
# the counts are read positionally (one C call): they must stay Usage's first fields, in this order
assert Usage.__struct_fields__[: len(_FIELDS)] == _FIELDS


def checked_usage(usage: Usage, raw: dict[str, Any] | None, ceiling: int) -> tuple[Usage, list[str]]:
    """Return the usage with impossible counts clamped, and the flags naming what was clamped."""
    negative = bool(raw) and _negative_in(raw)  # the dialect may have floored a difference of two counts at 0
    counts = msgspec.structs.astuple(usage)[: len(_FIELDS)]
    if not negative and min(counts) >= 0 and max(counts) <= ceiling:
        return usage, []  # the common case: one pass in C, no flag
    flags: set[str] = {"negative"} if negative else set()
    changes: dict[str, int] = {}
    for name, value in zip(_FIELDS, counts, strict=True):
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
    kind = type(node)  # exact types: JSON decodes to these only, and a bool is not a count
    if kind is dict:
        values: Any = node.values()
    elif kind is list:
        values = node
    else:
        return False
    for value in values:
        kind = type(value)
        if kind is int or kind is float:
            if value < 0:
                return True
        elif (kind is dict or kind is list) and depth < 3 and _negative_in(value, depth + 1):
            return True
    return False
