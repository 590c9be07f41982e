"""`python -m bench --mcp`: `tools/call` through the gateway's MCP route against the same call made directly to
the upstream (a minimal fast MCP server, so the difference is the gateway's own cost).

Rounds alternate direct and gateway runs of one connection each (wrk, a fixed number of requests); the figure is
the median over rounds of the added p50 (and p99), and the spread of the added p50 across rounds says how noisy
the machine was. One gateway process, embedded mode (SQLite), no governance limits configured.

`python -m bench.mcp --instructions [--requests N] [--src DIR]` counts instead the instructions the gateway process
executes per `tools/call` under callgrind (as bench/instructions.py does for the LLM routes: a figure the machine's
load cannot move), the usage flush that follows included; `--src` runs another tree's `src` for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import Supervisor, cores, free_port, pin_tree
from bench.wrk import ensure_wrk, run_wrk

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hello from the benchmark"}},
}
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-06-18",
}


async def _seed(database_url: str, secret_key: str, upstream: str, key_secret: str) -> None:
    from odock.mcp.service import McpCatalogueService
    from odock.settings import Settings
    from odock.state.sql import SqlStore

    store = await SqlStore.open(database_url, Settings(database_url=database_url, secret_key=secret_key))
    try:
        service = McpCatalogueService(store)
        await service.create_organisation({"name": "bench"})
        await service.create_key(
            {"organisation": "bench", "name": "bench", "type": "ORGANISATION", "secret": key_secret}
        )
        await service.create_mcp_server({"organisation": "bench", "name": "bench", "endpoint_url": upstream})
        await service.add_mcp_grant("bench", "bench", "bench")
    finally:
        await store.close()


def run(args: argparse.Namespace) -> int:
    """Run the MCP comparison; print it and write bench/results/mcp-<time>.json."""
    ensure_wrk(install=True)
    avail = cores()
    sut_cpu, load_cpu = (avail[0], avail[1]) if len(avail) >= 2 and not args.no_pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="odock-bench-mcp-"))
    sup = Supervisor(workdir)
    rounds, requests = args.mcp_rounds, args.requests
    try:
        up_port, gw_port = free_port(), free_port()
        upstream = sup.start(
            "mcp-upstream", [sys.executable, "-m", "bench.mcp_upstream", str(up_port)], up_port, cpu=load_cpu
        )
        secret_key = base64.b64encode(os.urandom(32)).decode()
        key_secret = "odk-bench-mcp-" + secrets.token_hex(12)
        database_url = f"sqlite:///{workdir / 'odock.db'}"
        asyncio.run(_seed(database_url, secret_key, f"http://127.0.0.1:{up_port}/mcp", key_secret))
        env = {
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(gw_port),
            "ODOCK_DATABASE_URL": database_url,
            "ODOCK_SECRET_KEY": secret_key,
            "ODOCK_LOG_LEVEL": "warning",
        }
        if load_cpu is not None:  # the usage writer process off the gateway's core, as in the main bench
            env["ODOCK_USAGE_WRITER_CPUS"] = str(load_cpu)
        gateway = sup.start("odock", [sys.executable, "-m", "odock", "serve"], gw_port, env=env, cpu=sut_cpu)
        gateway.wait_ready("/v1/health")
        pin_tree(upstream.pid, load_cpu)
        body = json.dumps(CALL).encode()
        targets = {
            "direct": (up_port, "/mcp", HEADERS),
            "gateway": (gw_port, "/v1/mcp/bench", {**HEADERS, "authorization": f"Bearer {key_secret}"}),
        }
        for name, (port, path, headers) in targets.items():  # warm up; check the answer is a real result
            warm = run_wrk(
                workdir, port, path, body, headers, connections=1, duration_s=60, cap=500, cpu=load_cpu
            )
            if warm.err_status or warm.requests < 500:
                print(f"{name}: warm-up failed ({warm})", file=sys.stderr)
                return 1
        figures: dict[str, list[dict[str, int]]] = {"direct": [], "gateway": []}
        for i in range(rounds):
            for name, (port, path, headers) in targets.items():
                res = run_wrk(
                    workdir,
                    port,
                    path,
                    body,
                    headers,
                    connections=1,
                    duration_s=120,
                    cap=requests,
                    cpu=load_cpu,
                )
                if res.err_status or res.err_read or res.err_timeout:
                    print(f"{name}: errors in round {i}: {res}", file=sys.stderr)
                    return 1
                figures[name].append({"p50_us": res.p50_us, "p99_us": res.p99_us})
        added_p50 = [
            g["p50_us"] - d["p50_us"] for g, d in zip(figures["gateway"], figures["direct"], strict=True)
        ]
        added_p99 = [
            g["p99_us"] - d["p99_us"] for g, d in zip(figures["gateway"], figures["direct"], strict=True)
        ]
        summary: dict[str, Any] = {
            "direct_p50_ms": statistics.median(f["p50_us"] for f in figures["direct"]) / 1000,
            "gateway_p50_ms": statistics.median(f["p50_us"] for f in figures["gateway"]) / 1000,
            "added_p50_ms": statistics.median(added_p50) / 1000,
            "added_p99_ms": statistics.median(added_p99) / 1000,
            "added_p50_spread_ms": (max(added_p50) - min(added_p50)) / 1000,
            "rounds": rounds,
            "requests_per_round": requests,
            "pinned": {"gateway": sut_cpu, "load_and_upstream": load_cpu},
        }
        print(
            f"MCP tools/call, Streamable HTTP, 1 connection, {rounds} rounds × {requests} requests\n"
            f"  direct p50 {summary['direct_p50_ms']:.3f} ms   via gateway p50 {summary['gateway_p50_ms']:.3f} ms\n"
            f"  added p50 {summary['added_p50_ms']:.3f} ms (spread across rounds {summary['added_p50_spread_ms']:.3f} ms)"
            f"   added p99 {summary['added_p99_ms']:.3f} ms",
            flush=True,
        )
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"mcp-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"summary": summary, "rounds": figures}, indent=2))
        print(f"results: {out}")
        return 0
    finally:
        sup.close()


def count_instructions(requests: int, warmup: int, src: str, request_path: bool = False) -> int:
    """Instructions of the gateway process per `tools/call` (callgrind, user space, every thread), the usage
    records' flush included; with `request_path`, without it (no flush during the count: the figure that moves
    latency, and steadier, since batch sizes follow the wall clock)."""
    from bench.instructions import FLUSH_WAIT_S, _total

    ensure_wrk(install=True)
    workdir = Path(tempfile.mkdtemp(prefix="odock-instr-mcp-"))
    sup = Supervisor(workdir)
    try:
        up_port, gw_port = free_port(), free_port()
        sup.start("mcp-upstream", [sys.executable, "-m", "bench.mcp_upstream", str(up_port)], up_port)
        secret_key = base64.b64encode(os.urandom(32)).decode()
        key_secret = "odk-bench-mcp-" + secrets.token_hex(12)
        database_url = f"sqlite:///{workdir / 'odock.db'}"
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        repo = str(Path(__file__).resolve().parent.parent)
        # seeded by the tree under test (its migrations, its catalogue code)
        seed = "import asyncio, sys; from bench.mcp import _seed; asyncio.run(_seed(*sys.argv[1:]))"
        path_env = {"PYTHONPATH": f"{src}:{repo}"} if src else {}
        subprocess.run(
            [sys.executable, "-c", seed, database_url, secret_key, upstream, key_secret],
            check=True,
            env={**os.environ, **path_env},
            cwd=repo,
        )
        env = {
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(gw_port),
            "ODOCK_DATABASE_URL": database_url,
            "ODOCK_SECRET_KEY": secret_key,
            "ODOCK_LOG_LEVEL": "warning",
            **({"PYTHONPATH": src} if src else {}),
            **(
                {"ODOCK_USAGE_FLUSH_INTERVAL": "1h", "ODOCK_USAGE_BATCH_SIZE": "1000000"}
                if request_path
                else {}
            ),
        }
        out = workdir / "callgrind-mcp"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
        gw = sup.start("odock", [*argv, sys.executable, "-m", "odock", "serve"], gw_port, env=env)
        gw.wait_ready("/v1/health", timeout=900)
        body = json.dumps(CALL).encode()
        headers = {**HEADERS, "authorization": f"Bearer {key_secret}"}
        warm = run_wrk(
            workdir, gw_port, "/v1/mcp/bench", body, headers, connections=1, duration_s=900, cap=warmup
        )
        if warm.errors or warm.requests < warmup:
            raise RuntimeError(f"warm-up failed: {warm}")
        time.sleep(FLUSH_WAIT_S)
        subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
        res = run_wrk(
            workdir, gw_port, "/v1/mcp/bench", body, headers, connections=1, duration_s=900, cap=requests
        )
        time.sleep(FLUSH_WAIT_S)
        subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
        if res.errors:
            raise RuntimeError(f"{res.errors} of {res.requests} requests failed")
        return _total(sorted(workdir.glob(f"{out.name}.*.1"))[-1]) // res.requests
    finally:
        sup.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mcp", description=__doc__)
    p.add_argument("--instructions", action="store_true", help="count instructions per call (callgrind)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument(
        "--src", default="", help="run the gateway from this source tree instead of the installed one"
    )
    p.add_argument(
        "--request-path",
        action="store_true",
        help="leave the usage flush out of the count (no flush meanwhile)",
    )
    args = p.parse_args(argv)
    if not args.instructions:
        p.error("use `python -m bench --mcp` for the latency comparison, or --instructions here")
    per_call = count_instructions(args.requests, args.warmup, args.src, args.request_path)
    what = "request path only" if args.request_path else "usage flush included"
    print(f"MCP tools/call through the gateway: {per_call:,} instructions per call ({what})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
