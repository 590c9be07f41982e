"""Usage counts an upstream reports: anything but an integer counts as 0 and never raises; an integer that cannot be
true (negative: an upstream may echo a client's field into its usage; absurdly large) is kept as reported by the
dialect, then clamped and flagged by the usage check before it is priced, so it is never billed as a refund."""

from __future__ import annotations

from typing import Any

import pytest

from odock.dialects import anthropic, gemini, openai_chat, openai_responses
from odock.dialects.fields import MAX_TOKEN_COUNT
from odock.edge.endpoints.openai_media import usage_any
from odock.governance.usage_check import checked_usage
from odock.model import Usage

GARBAGE = ["12", "abc", 3.5, True, [1], {"n": 1}, None]
IMPOSSIBLE = [-16, MAX_TOKEN_COUNT + 1]
USAGE_SHAPES = {
    "openai": (
        openai_chat.usage_from,
        lambda v: {
            "prompt_tokens": v,
            "completion_tokens": v,
            "prompt_tokens_details": {"cached_tokens": v},
            "completion_tokens_details": {"reasoning_tokens": v},
        },
    ),
    "responses": (
        openai_responses.usage_from,
        lambda v: {"input_tokens": v, "output_tokens": v, "output_tokens_details": {"reasoning_tokens": v}},
    ),
    "anthropic": (
        anthropic.usage_from,
        lambda v: {"input_tokens": v, "output_tokens": v, "cache_read_input_tokens": v},
    ),
    "gemini": (
        gemini.usage_from,
        lambda v: {"promptTokenCount": v, "candidatesTokenCount": v, "thoughtsTokenCount": v},
    ),
    "any": (usage_any, lambda v: {"total_tokens": v}),
}


@pytest.mark.parametrize("dialect", sorted(USAGE_SHAPES))
@pytest.mark.parametrize("value", GARBAGE, ids=repr)
def test_implausible_counts_count_as_zero(dialect: str, value: Any) -> None:
    """Textual, fractional or structured counts are 0, never an exception."""
    usage_from, shape = USAGE_SHAPES[dialect]
    assert usage_from(shape(value)) in (Usage(), None)


@pytest.mark.parametrize("dialect", sorted(USAGE_SHAPES))
@pytest.mark.parametrize("value", IMPOSSIBLE, ids=repr)
def test_impossible_counts_are_clamped_and_flagged_before_pricing(dialect: str, value: int) -> None:
    """A negative or absurd count comes out of the usage check within [0, ceiling], with a flag naming why."""
    usage_from, shape = USAGE_SHAPES[dialect]
    raw = shape(value)
    usage = usage_from(raw)
    assert usage is not None
    checked, flags = checked_usage(usage, raw, 10_000_000)
    counts = [
        checked.input_tokens,
        checked.output_tokens,
        checked.cached_input_tokens,
        checked.cache_write_tokens,
        checked.reasoning_tokens,
    ]
    assert all(0 <= count <= 10_000_000 for count in counts)
    assert flags == (["negative"] if value < 0 else ["above_ceiling"])


def test_openai_usage_details_of_the_wrong_type_are_ignored() -> None:
    """Details that are not objects are ignored (they were an AttributeError)."""
    usage = openai_chat.usage_from(
        {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "prompt_tokens_details": [1],
            "completion_tokens_details": "x",
        }
    )
    assert usage == Usage(input_tokens=5, output_tokens=2)
