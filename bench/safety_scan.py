"""SafetySec's scan cost per 4 KB, in this process: every built-in detector over the `--safety` scenarios'
prompt (the same text as the gateway scenarios), against `json.loads` of a 4 KB body as the machine's yardstick
(a ratio stays meaningful on a loaded machine where absolute microseconds do not).

    uv run python -m bench.safety_scan
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.scenarios import SAFETY_PROMPT

ROUNDS = 2000


def _p50_us(run: Callable[[], object], rounds: int) -> float:
    for _ in range(100):
        run()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def measure(rounds: int = ROUNDS) -> dict[str, Any]:
    """p50 microseconds of one scan of the 4 KB prompt (all detectors; prose, and a secret-dense variant)."""
    from odock.safety.detectors import scan

    dense = (
        "key sk-proj-Abc123Def456Ghi789Jkl012Mno345 mail jane@example.com card 4111 1111 1111 1111 "
        "ip 10.1.2.3 " + SAFETY_PROMPT
    )[:4096]
    body = json.dumps({"messages": [{"role": "user", "content": SAFETY_PROMPT}]})
    return {
        "scan_4kb_p50_us": round(_p50_us(lambda: scan(SAFETY_PROMPT), rounds), 1),
        "scan_4kb_dense_p50_us": round(_p50_us(lambda: scan(dense), rounds), 1),
        "json_loads_4kb_p50_us": round(_p50_us(lambda: json.loads(body), rounds), 1),
        "target_us": 50,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
