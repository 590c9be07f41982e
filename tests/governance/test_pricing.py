"""Exact cost arithmetic in integer nanos USD."""

from __future__ import annotations

from odock.governance.pricing import DEFAULT_MAX_TOKENS, cost_nanos, worst_case_nanos
from odock.model import Usage


def test_plain_input_output_exact() -> None:
    """1000 input at $2.50/M and 500 output at $10/M cost exactly 2.5 + 5.0 thousandths of a dollar."""
    pricing = {"input": 2.5, "output": 10}
    assert cost_nanos(pricing, Usage(input_tokens=1000, output_tokens=500)) == 2_500_000 + 5_000_000


def test_cached_and_cache_write_each_counted_once() -> None:
    """Cached-read and cache-write tokens are billed at their own rates, never again as input."""
    pricing = {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75}
    usage = Usage(input_tokens=100, cached_input_tokens=2000, cache_write_tokens=1000, output_tokens=10)
    # 100*3000 + 2000*300 + 1000*3750 + 10*15000 nanos
    assert cost_nanos(pricing, usage) == 300_000 + 600_000 + 3_750_000 + 150_000


def test_cached_falls_back_to_input_rate() -> None:
    """Without a cached rate, cached tokens cost the input rate."""
    assert cost_nanos({"input": 1}, Usage(input_tokens=1, cached_input_tokens=1)) == 2000


def test_reasoning_rate_applies_to_reasoning_part_only() -> None:
    """Reasoning tokens (part of output) use the reasoning rate; the rest of the output the output rate."""
    pricing = {"input": 1, "output": 4, "reasoning": 8}
    usage = Usage(input_tokens=0, output_tokens=300, reasoning_tokens=200)
    assert cost_nanos(pricing, usage) == 100 * 4000 + 200 * 8000


def test_reasoning_without_rate_is_output_rate() -> None:
    """Without a reasoning rate, reasoning tokens are plain output tokens (not billed twice)."""
    pricing = {"input": 1, "output": 4}
    assert cost_nanos(pricing, Usage(output_tokens=300, reasoning_tokens=200)) == 300 * 4000


def test_fractional_rates_round_half_up_once() -> None:
    """Sub-nano class costs are summed exactly and rounded once, half-up."""
    pricing = {"input": 0.0001, "output": 0.0001}  # 0.1 nanos per token
    assert cost_nanos(pricing, Usage(input_tokens=3, output_tokens=2)) == 1  # 0.5 → 1
    assert cost_nanos(pricing, Usage(input_tokens=2, output_tokens=2)) == 0  # 0.4 → 0
    assert cost_nanos({"input": 0.15}, Usage(input_tokens=7)) == 1050  # 0.15 read exactly, not 0.1499…


def test_per_image_and_per_unit() -> None:
    """Per-item prices are USD each."""
    assert cost_nanos({"per_image": 0.04}, Usage(), images=3) == 120_000_000
    assert cost_nanos({"per_unit": 0.0015}, Usage(), units=2) == 3_000_000


def test_missing_pricing_is_none_and_reserves_zero() -> None:
    """No pricing: cost unknown (None) and nothing is reserved."""
    assert cost_nanos({}, Usage(input_tokens=5)) is None
    assert cost_nanos({"notes": "x"}, Usage(input_tokens=5)) is None
    assert worst_case_nanos({}, 100, 100) == 0


def test_legacy_per_1k_shape() -> None:
    """The reference's per-1K pricing with a cached discount converts exactly."""
    pricing = {
        "input": {"text_cost_per_1k_tokens": 0.005},
        "output": {"text_cost_per_1k_tokens": 0.015, "reasoning_cost_per_1k_tokens": 0.015},
        "cached_input_discount_percent": 50,
    }
    usage = Usage(input_tokens=1000, cached_input_tokens=1000, output_tokens=1000)
    assert cost_nanos(pricing, usage) == 5_000_000 + 2_500_000 + 15_000_000


def test_worst_case_uses_dearest_rates_and_default_cap() -> None:
    """The worst case prices all input at the dearer input rate and max_tokens at the dearer output rate."""
    pricing = {"input": 1, "cache_write": 1.25, "output": 2, "reasoning": 3}
    assert worst_case_nanos(pricing, 1000, 10) == 1000 * 1250 + 10 * 3000
    assert worst_case_nanos({"output": 1}, 0, None) == DEFAULT_MAX_TOKENS * 1000


def test_worst_case_bounds_actual() -> None:
    """Any usage within the estimate costs no more than the worst case."""
    pricing = {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75, "reasoning": 15}
    worst = worst_case_nanos(pricing, 1000, 500)
    for usage in (
        Usage(input_tokens=1000, output_tokens=500),
        Usage(cache_write_tokens=1000, output_tokens=500, reasoning_tokens=400),
        Usage(input_tokens=10, cached_input_tokens=990, output_tokens=1),
    ):
        cost = cost_nanos(pricing, usage)
        assert cost is not None and cost <= worst
