"""`--safety`'s on/off comparison in alternating rounds: SafetySec's cost as the ratio of two added latencies.

The main table measures each catalogue's gateway once, minutes apart, so a machine that drifts in between moves
one figure and not the other. Here a gateway with SafetySec on (`safety` catalogue) and one without (`base`) run
side by side on the same core, and each round measures direct, on and off back to back (wrk, one connection, a
fixed number of requests); the figure is the median over rounds of each added p50 and their ratio, with the
spread of the per-round ratios to say how noisy the machine was.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.wrk import run_wrk

if TYPE_CHECKING:
    from bench.run import Ctx
    from bench.scenarios import Scenario


def measure(ctx: Ctx, scenarios: dict[str, Scenario], rounds: int, requests: int) -> dict[str, Any]:
    """The on/off figures of the unary and streamed SafetySec scenarios present in `scenarios`."""
    from bench.procs import wait_quiet
    from bench.run import start_gateway

    on = start_gateway(ctx, "safety", {}, "safety-rounds-on")
    off = start_gateway(ctx, "base", {}, "safety-rounds-off")
    out: dict[str, Any] = {}
    try:
        for kind in ("unary", "stream"):
            sc_on, sc_off = scenarios.get(f"safety-{kind}"), scenarios.get(f"safety-off-{kind}")
            if sc_on is None or sc_off is None:
                continue
            targets = {
                "direct": (ctx.mock.port, sc_on.direct),
                "on": (on.port, sc_on.gateway),
                "off": (off.port, sc_off.gateway),
            }
            for port, call in targets.values():  # warm-up
                run_wrk(
                    ctx.sup.workdir, port, call.path, call.body, call.headers,
                    connections=1, duration_s=30, cap=1000, cpu=ctx.load_cpu,
                )  # fmt: skip
            p50: dict[str, list[int]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (port, call) in targets.items():
                    wait_quiet(on.pid)
                    wait_quiet(off.pid)
                    res = run_wrk(
                        ctx.sup.workdir, port, call.path, call.body, call.headers,
                        connections=1, duration_s=120, cap=requests, cpu=ctx.load_cpu,
                    )  # fmt: skip
                    if res.errors:
                        raise RuntimeError(f"safety rounds: errors on {name} ({kind}): {res}")
                    p50[name].append(res.p50_us)
            added_on = [a - d for a, d in zip(p50["on"], p50["direct"], strict=True)]
            added_off = [a - d for a, d in zip(p50["off"], p50["direct"], strict=True)]
            ratios = [a / b for a, b in zip(added_on, added_off, strict=True) if b > 0]
            on_ms, off_ms = statistics.median(added_on) / 1000, statistics.median(added_off) / 1000
            out[kind] = {
                "added_p50_on_ms": on_ms,
                "added_p50_off_ms": off_ms,
                "ratio": on_ms / off_ms if off_ms > 0 else None,
                "round_ratios": [round(r, 2) for r in ratios],
                "rounds": rounds,
                "requests_per_round": requests,
                "p50_us": p50,
            }
            print(
                f"SafetySec {kind}: added p50 on {on_ms:.3f} ms, off {off_ms:.3f} ms, "
                f"ratio {out[kind]['ratio']:.2f} (per round {out[kind]['round_ratios']})",
                flush=True,
            )
    finally:
        ctx.sup.stop(on)
        ctx.sup.stop(off)
    return out
