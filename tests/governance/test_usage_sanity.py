"""Upstream usage is sanity-checked: malformed counts parse as 0 without raising, impossible ones are clamped."""

from __future__ import annotations

from typing import Any

import pytest

from odock.dialects import anthropic, gemini, openai_chat, openai_responses
from odock.governance.usage_check import checked_usage
from odock.model import Usage

MALFORMED: list[tuple[Any, dict[str, Any]]] = [
    (
        openai_chat.usage_from,
        {
            "prompt_tokens": "12",
            "completion_tokens": None,
            "prompt_tokens_details": [1],
            "completion_tokens_details": "x",
        },
    ),
    (
        openai_responses.usage_from,
        {"input_tokens": "12", "output_tokens": [], "input_tokens_details": [1], "output_tokens_details": 7},
    ),
]


@pytest.mark.parametrize(("usage_from", "raw"), MALFORMED, ids=["openai_chat", "responses"])
def test_malformed_usage_counts_nothing_and_never_raises(usage_from: Any, raw: dict[str, Any]) -> None:
    """Strings, lists and objects where counts belong count as 0 (as Anthropic's and Gemini's decoders do)."""
    assert usage_from(raw) == Usage()


def test_integral_floats_count() -> None:
    """A count sent as a float holding an integer is that integer (not 0), in every dialect."""
    got = anthropic.usage_from({"input_tokens": 12.0, "output_tokens": 3.0, "cache_read_input_tokens": 2.5})
    assert (got.input_tokens, got.output_tokens, got.cached_input_tokens) == (12, 3, 0)
    assert gemini.usage_from({"promptTokenCount": 9.0, "candidatesTokenCount": 4.0}).total == 13


def test_negative_and_absurd_counts_are_clamped_and_flagged() -> None:
    """Negative counts become 0, counts above the ceiling the ceiling; each kind is flagged once."""
    usage, flags = checked_usage(
        Usage(input_tokens=-5, output_tokens=50, reasoning_tokens=-1, cached_input_tokens=10**12),
        None,
        1_000_000,
    )
    assert usage == Usage(input_tokens=0, output_tokens=50, reasoning_tokens=0, cached_input_tokens=1_000_000)
    assert flags == ["above_ceiling", "negative"]


def test_a_negative_count_the_dialect_floored_is_still_flagged() -> None:
    """A negative prompt count hidden by the dialect's `prompt - cached` floor is flagged from the raw usage."""
    raw = {"prompt_tokens": -1000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}}
    usage, flags = checked_usage(openai_chat.usage_from(raw), raw, 10**7)
    assert (usage.input_tokens, flags) == (0, ["negative"])
    gemini_raw = {"promptTokenCount": 7, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": -7}]}
    assert checked_usage(gemini.usage_from(gemini_raw), gemini_raw, 10**7)[1] == ["negative"]


def test_sane_usage_is_untouched() -> None:
    """Ordinary usage passes unchanged and unflagged."""
    usage = Usage(
        input_tokens=10, output_tokens=20, cached_input_tokens=5, cache_write_tokens=1, reasoning_tokens=4
    )
    assert checked_usage(usage, {"prompt_tokens": 15, "completion_tokens": 20}, 10**7) == (usage, [])
