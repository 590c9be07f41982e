"""Instructions per request through the gateway, counted by callgrind: a figure the machine's load cannot move.

    uv run python -m bench.instructions                       # governance-unary and openai-unary, embedded
    uv run python -m bench.instructions --scenario governance-unary --requests 1000 --src /path/to/other/src
    uv run python -m bench.instructions --scenario safety-off-stream --scenario safety-stream   # SafetySec's cost

The gateway runs under `valgrind --tool=callgrind` with instrumentation off until a warm-up (the catalogue and
key caches filled, every code path taken once) is done; then `--requests` sequential requests (one connection)
and the usage/charge flushes that follow them are counted, user-space instructions of every thread. Wall-clock
figures on a shared machine move by tens of percent between runs; these move by well under one. `--src` runs
another tree's `src` (e.g. an exported older commit) with the same harness, for a before/after pair.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import run as bench_run
from bench.procs import Supervisor, cores, free_port
from bench.scenarios import CATALOGUES, KEY_ENV, UPSTREAM_KEY_ENV, CatalogueSpec, build_scenarios
from bench.wrk import ensure_wrk, run_wrk

# a feature's scenario name -> its baseline's (governance-unary / openai-unary, safety-stream / safety-off-stream)
FEATURE_BASELINES = ((r"^governance-", "openai-"), (r"^safety-(?!off-)", "safety-off-"))
FLUSH_WAIT_S = 3.0  # longer than the usage (0.5 s) and charge flush intervals: their work is counted too


def _children(pid: int) -> list[int]:
    """The processes `pid` started (the gateway's usage writer)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def count(
    scenario_name: str, requests: int, warmup: int, src: str, workdir: Path, forwarder: bool = False
) -> tuple[int, int]:
    """Return the instructions callgrind counted per request over `requests` requests of the scenario (plus
    their flushes): in the gateway's process, and in its usage writer process; with `forwarder`, of the bare
    Python forwarder relaying the scenario's direct call instead of the gateway."""
    key = "odk-bench-" + secrets.token_hex(16)
    os.environ[KEY_ENV], os.environ[UPSTREAM_KEY_ENV] = key, "sk-bench-upstream"
    sc = next(s for s in build_scenarios(key, "sk-bench-upstream") if s.name == scenario_name)
    sup = Supervisor(workdir)
    args = bench_run.parse_args([])
    avail = cores()
    load_cpu = avail[1] if len(avail) > 1 else None
    try:
        mock = bench_run.start_mock(sup, args, load_cpu)
        ctx = bench_run.Ctx(args, sup, mock, None, load_cpu)
        cfg = workdir / f"{scenario_name}.yaml"
        cfg.write_text(yaml.safe_dump(CATALOGUES[sc.catalogue](CatalogueSpec(ctx.mock_url)), sort_keys=False))
        port = free_port()
        env = {
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "ODOCK_LOG_LEVEL": "warning",
            "ODOCK_DATABASE_URL": f"sqlite:///{workdir / (scenario_name + '.db')}",
            **({"PYTHONPATH": src} if src else {}),
        }
        out = workdir / f"callgrind-{scenario_name}"
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--trace-children=yes",
            f"--callgrind-out-file={out}.%p",
        ]
        if forwarder:
            from bench.forwarder import HEALTH

            target = ["-m", "bench.forwarder", "--port", str(port), "--upstream", ctx.mock_url]
            gw = sup.start(
                "fwd", [*argv, sys.executable, *target], port, cwd=Path(__file__).resolve().parent.parent
            )
            gw.wait_ready(HEALTH, timeout=900)
            call = sc.direct
        else:
            gw = sup.start(
                "gw", [*argv, sys.executable, "-m", "odock", "serve", "--config", str(cfg)], port, env=env
            )
            gw.wait_ready("/v1/health", timeout=900)
            call = sc.gateway
        bench_run.probe(ctx, port, call, "forwarder" if forwarder else "odock")
        run_wrk(workdir, port, call.path, call.body, call.headers, connections=1, duration_s=900, cap=warmup)
        time.sleep(FLUSH_WAIT_S)
        counted = [gw.pid, *_children(gw.pid)]
        for pid in counted:
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        res = run_wrk(
            workdir, port, call.path, call.body, call.headers, connections=1, duration_s=900, cap=requests
        )
        time.sleep(FLUSH_WAIT_S)
        for pid in counted:
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        if res.errors:
            raise RuntimeError(f"{res.errors} of {res.requests} requests failed")
        own, *writer = (_total(workdir / f"{out.name}.{pid}.1") // res.requests for pid in counted)
        return own, sum(writer)
    finally:
        sup.close()


def _total(dump: Path) -> int:
    found = [int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("totals:")]
    if not found or not found[-1]:
        raise RuntimeError(f"callgrind counted nothing in {dump}")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="repeatable (default: governance-unary and openai-unary)",
    )
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument(
        "--forwarder", action="store_true", help="also count the bare Python forwarder on openai-unary"
    )
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument(
        "--src", default="", help="run the gateway from this source tree instead of the installed one"
    )
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    ensure_wrk(install=True)
    counts: dict[str, int] = {}
    for name in args.scenario or ["governance-unary", "openai-unary"]:
        workdir = Path(tempfile.mkdtemp(prefix="odock-instr-"))
        counts[name], writer = count(name, args.requests, args.warmup, args.src, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        print(
            f"{name}: {counts[name]:,} instructions per request (and {writer:,} in the usage writer process)",
            flush=True,
        )
    if args.forwarder:
        workdir = Path(tempfile.mkdtemp(prefix="odock-instr-"))
        counts["forwarder"], _ = count(
            "openai-unary", args.requests, args.warmup, "", workdir, forwarder=True
        )
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"bare forwarder (openai-unary): {counts['forwarder']:,} instructions per request", flush=True)
    # a feature's cost: its scenario against the same call without it, when both were counted
    for name, c in counts.items():
        for feature, without in FEATURE_BASELINES:
            base_name = re.sub(feature, without, name)
            base = counts.get(base_name) if base_name != name else None
            if base:
                print(
                    f"{name} / {base_name}: {c / base:.3f}× the instructions (adds {c - base:,} per request)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
