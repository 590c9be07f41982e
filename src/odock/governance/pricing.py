"""Exact cost in integer nanos USD from a model's pricing and a call's usage.

Pricing keys are USD per 1M tokens: `input`, `output`, `cached_input`, `cache_write`, `reasoning`; and USD per
item: `per_image`, `per_unit`. The legacy per-1K shape of reference §12.3 (`{"input": {"text_cost_per_1k_tokens":
…}, "cached_input_discount_percent": …}`) is accepted too and converted.

Rounding (deterministic): every class is multiplied exactly in `Decimal` (rates are read through `str()`, so
0.15 is exactly 0.15), the classes are summed exactly, and the total is rounded ONCE to whole nanos, half-up.
Worst-case estimates round up (ceiling), so a reservation is never below the cost of the tokens it covers.

Token classes follow `odock.model.Usage`: `input_tokens` excludes cached and cache-write tokens; `output_tokens`
includes `reasoning_tokens`. Reasoning tokens are billed at the `reasoning` rate when it is set, otherwise at the
`output` rate; the rest of the output at the `output` rate — no token is billed twice. Cached-read and cache-write
tokens fall back to the `input` rate when their own rate is absent.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from odock.model import Usage

NANOS_PER_USD = 1_000_000_000
# USD per 1M tokens → nanos per token is rate × 1e9 / 1e6
_PER_TOKEN = Decimal(1000)
_NANOS = Decimal(NANOS_PER_USD)
# Worst-case output when the request gives no max_tokens and the model config no `max_output_tokens`.
DEFAULT_MAX_TOKENS = 4096

_RATE_KEYS = ("input", "output", "cached_input", "cache_write", "reasoning", "per_image", "per_unit")


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not result.is_finite() or result < 0:
        return None
    return result


def normalize_pricing(pricing: dict[str, Any] | None) -> dict[str, Decimal]:
    """Return the recognised rates (USD per 1M tokens / per item) as Decimals; legacy per-1K shape converted."""
    if not pricing:
        return {}
    rates: dict[str, Decimal] = {}
    legacy_in, legacy_out = pricing.get("input"), pricing.get("output")
    if isinstance(legacy_in, dict) or isinstance(legacy_out, dict):
        thousand = Decimal(1000)
        text_in = (
            _dec((legacy_in or {}).get("text_cost_per_1k_tokens")) if isinstance(legacy_in, dict) else None
        )
        if text_in is not None:
            rates["input"] = text_in * thousand
            discount = _dec(pricing.get("cached_input_discount_percent"))
            if discount is not None:
                rates["cached_input"] = (
                    text_in * thousand * (Decimal(100) - min(discount, Decimal(100))) / 100
                )
        if isinstance(legacy_out, dict):
            text_out = _dec(legacy_out.get("text_cost_per_1k_tokens"))
            reasoning = _dec(legacy_out.get("reasoning_cost_per_1k_tokens"))
            if text_out is not None:
                rates["output"] = text_out * thousand
            if reasoning is not None:
                rates["reasoning"] = reasoning * thousand
        return rates
    for key in _RATE_KEYS:
        rate = _dec(pricing.get(key))
        if rate is not None:
            rates[key] = rate
    return rates


# parsed rates per pricing dict: every call prices with its model's dict, which the catalogue caches and replaces
# (never mutates); the dict is held so its id() cannot be reused while cached
_RATES: dict[int, tuple[dict[str, Any], dict[str, Decimal]]] = {}
_RATES_SIZE = 1024


def _rates(pricing: dict[str, Any] | None) -> dict[str, Decimal]:
    if not pricing:
        return {}
    hit = _RATES.get(id(pricing))
    if hit is not None and hit[0] is pricing:
        return hit[1]
    rates = normalize_pricing(pricing)
    if len(_RATES) >= _RATES_SIZE:
        _RATES.clear()
    _RATES[id(pricing)] = (pricing, rates)
    return rates


def _exact(rates: dict[str, Decimal], usage: Usage, images: int, units: int) -> Decimal:
    zero = Decimal(0)
    input_rate = rates.get("input", zero)
    output_rate = rates.get("output", zero)
    reasoning_rate = rates.get("reasoning", output_rate)
    reasoning = max(0, min(usage.reasoning_tokens, usage.output_tokens))
    per_million = (
        usage.input_tokens * input_rate
        + usage.cached_input_tokens * rates.get("cached_input", input_rate)
        + usage.cache_write_tokens * rates.get("cache_write", input_rate)
        + (usage.output_tokens - reasoning) * output_rate
        + reasoning * reasoning_rate
    )
    per_item = images * rates.get("per_image", zero) + units * rates.get("per_unit", zero)
    return per_million * _PER_TOKEN + per_item * _NANOS


def cost_nanos(
    pricing: dict[str, Any] | None, usage: Usage, *, images: int = 0, units: int = 0
) -> int | None:
    """Return the exact cost of `usage` in nanos USD, or None when the model has no usable pricing."""
    rates = _rates(pricing)
    if not rates:
        return None
    return int(_exact(rates, usage, images, units).to_integral_value(rounding=ROUND_HALF_UP))


def worst_case_nanos(
    pricing: dict[str, Any] | None, input_tokens: int, max_tokens: int | None, *, images: int = 0
) -> int:
    """Return the most a call can cost: all input at the dearest input rate (input, cache write or cached read:
    a cache write may cost more than input), `max_tokens` at the dearest output rate (None: the default cap;
    0: no output), and `images` generated images at the `per_image` price."""
    rates = _rates(pricing)
    if not rates:
        return 0  # missing pricing: reserve nothing (reference §6.4 [INF]); usage is still recorded
    cap = DEFAULT_MAX_TOKENS if max_tokens is None else max(0, max_tokens)
    zero = Decimal(0)
    input_rate = max(
        rates.get("input", zero), rates.get("cache_write", zero), rates.get("cached_input", zero)
    )
    output_rate = max(rates.get("output", zero), rates.get("reasoning", zero))
    exact = (max(0, input_tokens) * input_rate + cap * output_rate) * _PER_TOKEN
    exact += max(0, images) * rates.get("per_image", zero) * _NANOS
    return int(exact.to_integral_value(rounding=ROUND_CEILING))
