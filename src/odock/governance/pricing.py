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

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from odock.model import Usage

NANOS_PER_USD = 1_000_000_000
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


@dataclass(frozen=True, slots=True)
class _Scaled:
    """A pricing's rates as integers over one power-of-ten denominator (exact: rates are finite decimals), with
    the fallbacks resolved, so pricing a call is a few integer multiplications instead of Decimal arithmetic."""

    den: int
    input: int  # nanos per token × den
    output: int
    cached_input: int
    cache_write: int
    reasoning: int
    per_image: int  # nanos per item × den
    per_unit: int
    worst_input: int  # the dearest input rate, the dearest output rate
    worst_output: int


def _scale(rates: dict[str, Decimal]) -> _Scaled:
    # nanos per token = USD per 1M × 10^3, nanos per item = USD × 10^9: the denominator makes both whole numbers
    shift = max([0] + [-(int(r.as_tuple().exponent) + 3) for r in rates.values()])

    def whole(rate: Decimal | None, power: int) -> int:
        # rate × 10^(power + shift) from its digits: exact, whatever their number (no context rounding)
        if rate is None:
            return 0
        sign, digits, exponent = rate.as_tuple()
        # the shift makes the power of ten non-negative for every rate: an int, never a float
        value = int("".join(map(str, digits)) or "0") * int(10 ** (int(exponent) + power + shift))
        return -value if sign else value

    def tok(key: str) -> int:
        return whole(rates.get(key), 3)

    input_rate = tok("input")
    output_rate = tok("output")
    cached, write, reasoning = tok("cached_input"), tok("cache_write"), tok("reasoning")
    return _Scaled(
        10**shift,
        input_rate,
        output_rate,
        cached if "cached_input" in rates else input_rate,
        write if "cache_write" in rates else input_rate,
        reasoning if "reasoning" in rates else output_rate,
        whole(rates.get("per_image"), 9),
        whole(rates.get("per_unit"), 9),
        max(input_rate, write, cached),
        max(output_rate, reasoning),
    )


# parsed rates per pricing dict: every call prices with its model's dict, which the catalogue caches and replaces
# (never mutates); the dict is held so its id() cannot be reused while cached
_RATES: dict[int, tuple[dict[str, Any], _Scaled | None]] = {}
_RATES_SIZE = 1024


def _rates(pricing: dict[str, Any] | None) -> _Scaled | None:
    if not pricing:
        return None
    hit = _RATES.get(id(pricing))
    if hit is not None and hit[0] is pricing:
        return hit[1]
    rates = normalize_pricing(pricing)
    scaled = _scale(rates) if rates else None
    if len(_RATES) >= _RATES_SIZE:
        _RATES.clear()
    _RATES[id(pricing)] = (pricing, scaled)
    return scaled


def cost_nanos(
    pricing: dict[str, Any] | None, usage: Usage, *, images: int = 0, units: int = 0
) -> int | None:
    """Return the exact cost of `usage` in nanos USD, or None when the model has no usable pricing."""
    r = _rates(pricing)
    if r is None:
        return None
    reasoning = max(0, min(usage.reasoning_tokens, usage.output_tokens))
    exact = (
        usage.input_tokens * r.input
        + usage.cached_input_tokens * r.cached_input
        + usage.cache_write_tokens * r.cache_write
        + (usage.output_tokens - reasoning) * r.output
        + reasoning * r.reasoning
        + images * r.per_image
        + units * r.per_unit
    )
    # rounded once, half-up (away from zero), like Decimal's ROUND_HALF_UP
    if exact >= 0:
        return (2 * exact + r.den) // (2 * r.den)
    return -((-2 * exact + r.den) // (2 * r.den))


def worst_case_nanos(
    pricing: dict[str, Any] | None, input_tokens: int, max_tokens: int | None, *, images: int = 0
) -> int:
    """Return the most a call can cost: all input at the dearest input rate (input, cache write or cached read:
    a cache write may cost more than input), `max_tokens` at the dearest output rate (None: the default cap;
    0: no output), and `images` generated images at the `per_image` price."""
    r = _rates(pricing)
    if r is None:
        return 0  # missing pricing: reserve nothing (reference §6.4 [INF]); usage is still recorded
    cap = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens if max_tokens > 0 else 0
    exact = (input_tokens if input_tokens > 0 else 0) * r.worst_input + cap * r.worst_output
    if images > 0:
        exact += images * r.per_image
    return -(-exact // r.den)  # rounded up: a reservation never falls short
