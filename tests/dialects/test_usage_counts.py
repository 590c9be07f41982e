"""Usage counts an upstream reports are taken only when they are plausible non-negative integers: an upstream may
echo a client's field into its usage, and a negative count billed is a refund."""

from __future__ import annotations

from typing import Any

import pytest

from odock.dialects import anthropic, gemini, openai_chat, openai_responses
from odock.dialects.fields import MAX_TOKEN_COUNT
from odock.edge.endpoints.openai_media import usage_any
from odock.model import Usage

GARBAGE = [-16, MAX_TOKEN_COUNT + 1, "12", "abc", 3.5, True, [1], {"n": 1}, None]
USAGE_SHAPES = {
    "openai": (openai_chat.usage_from, lambda v: {"prompt_tokens": v, "completion_tokens": v,
                                                  "prompt_tokens_details": {"cached_tokens": v},
                                                  "completion_tokens_details": {"reasoning_tokens": v}}),
    "responses": (openai_responses.usage_from, lambda v: {"input_tokens": v, "output_tokens": v,
                                                          "output_tokens_details": {"reasoning_tokens": v}}),
    "anthropic": (anthropic.usage_from, lambda v: {"input_tokens": v, "output_tokens": v,
                                                   "cache_read_input_tokens": v}),
    "gemini": (gemini.usage_from, lambda v: {"promptTokenCount": v, "candidatesTokenCount": v,
                                             "thoughtsTokenCount": v}),
    "any": (usage_any, lambda v: {"total_tokens": v}),
}


@pytest.mark.parametrize("dialect", sorted(USAGE_SHAPES))
@pytest.mark.parametrize("value", GARBAGE, ids=repr)
def test_implausible_counts_count_as_zero(dialect: str, value: Any) -> None:
    """Negative, huge, textual, fractional or structured counts are 0, never an exception or a negative."""
    usage_from, shape = USAGE_SHAPES[dialect]
    assert usage_from(shape(value)) in (Usage(), None)


def test_openai_usage_details_of_the_wrong_type_are_ignored() -> None:
    """Details that are not objects are ignored (they were an AttributeError)."""
    usage = openai_chat.usage_from({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": [1],
                                    "completion_tokens_details": "x"})
    assert usage == Usage(input_tokens=5, output_tokens=2)
