"""MCP pricing (reference §11.6): nanos USD per call, per input byte, per output byte, plus a per-tool price.

    cost = call + Σ tool prices + input_bytes × input_rate + output_bytes × output_rate

The reservation prices the request's bytes and, for the answer not yet known, `reserveOutputBytes` (64 KiB by
default); the settle uses the bytes actually relayed.
"""

from __future__ import annotations

import math
from typing import Any

from odock.mcp.validation import DEFAULT_RESERVE_OUTPUT_BYTES


def _rate(pricing: dict[str, Any], key: str) -> float:
    value = pricing.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def fixed_nanos(pricing: dict[str, Any], tools: list[str], calls: int) -> float:
    per_tool = pricing.get("toolNanosUsd") or {}
    return _rate(pricing, "callNanosUsd") * calls + sum(float(per_tool.get(t, 0)) for t in tools)


def cost_nanos(pricing: dict[str, Any], tools: list[str], calls: int, bytes_in: int, bytes_out: int) -> int:
    """The call's exact cost (rounded up: a fraction of a nano is still charged)."""
    if not pricing:
        return 0
    total = fixed_nanos(pricing, tools, calls)
    total += bytes_in * _rate(pricing, "inputByteNanosUsd") + bytes_out * _rate(pricing, "outputByteNanosUsd")
    return math.ceil(total)


def reserve_nanos(pricing: dict[str, Any], tools: list[str], calls: int, bytes_in: int) -> int:
    """What budgets and cost quotas hold before the call."""
    out = int(pricing.get("reserveOutputBytes", DEFAULT_RESERVE_OUTPUT_BYTES)) if pricing else 0
    return cost_nanos(pricing, tools, calls, bytes_in, out)
