"""`python -m bench`: mock + gateway (+ peers) on loopback, direct vs through-gateway, Markdown + JSON."""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import console, peers, report
from bench.procs import (
    LowLatencyIdle,
    Service,
    Supervisor,
    cores,
    cpu_seconds,
    free_port,
    http_get,
    http_post,
    memory_kb,
    pin_tree,
    system_busy_seconds,
    wait_quiet,
)
from bench.scenarios import (
    CATALOGUES,
    KEY_ENV,
    UPSTREAM_KEY_ENV,
    Call,
    CatalogueSpec,
    Scenario,
    build_scenarios,
    select,
)
from bench.wrk import ensure_wrk, run_wrk

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput run (default 10)")
    p.add_argument(
        "--connections", type=int, default=32, help="connections of the throughput runs (default 32)"
    )
    p.add_argument(
        "--requests", type=int, default=2000, help="sequential requests of each latency run (default 2000)"
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of warm-up before each target (default 2)"
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME|TAG",
        help="scenario names or tags (unary, stream, core, dialects, failover, governance, cache); repeatable",
    )
    p.add_argument("--dialects", action="store_true", help="add the streamed route of every dialect")
    p.add_argument("--failover", action="store_true", help="add the failover scenarios (1%% 503 primary)")
    p.add_argument("--governance", action="store_true", help="add the limits-configured-not-hit scenarios")
    p.add_argument(
        "--cache", action="store_true", help="add the response-cache hit scenarios (unary, stream)"
    )
    p.add_argument(
        "--safety",
        action="store_true",
        help="add SafetySec on/off with a 4 KB prompt, and the detectors' scan cost per 4 KB",
    )
    p.add_argument(
        "--cluster", action="store_true", help="also run the gateway in cluster mode (PostgreSQL+Redis)"
    )
    p.add_argument("--peers", action="store_true", help="also run LiteLLM proxy and Portkey gateway")
    p.add_argument(
        "--mcp",
        action="store_true",
        help="only the MCP comparison: tools/call through /v1/mcp/{slug} vs direct (see bench/mcp.py)",
    )
    p.add_argument("--mcp-rounds", type=int, default=5, help="alternating direct/gateway rounds of --mcp")
    p.add_argument(
        "--safety-rounds",
        type=int,
        default=5,
        help="alternating direct/on/off rounds of --safety's SafetySec comparison (0: none)",
    )
    p.add_argument("--no-gateway", action="store_true", help="skip the Odock gateway (direct and peers only)")
    p.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=500_000,
        default=0,
        metavar="N",
        help="N requests through a fresh gateway, RSS every --soak-step (default N=500000); "
        "with --cluster, in cluster mode too",
    )
    p.add_argument(
        "--soak-step",
        type=int,
        default=100_000,
        metavar="N",
        help="requests between two soak marks (default 100000)",
    )
    p.add_argument("--soak-only", action="store_true", help="run only the soak (no direct or gateway runs)")
    p.add_argument(
        "--loadgen-compare",
        action="store_true",
        help="measure wrk against the Python (aiohttp) load generator on the mock",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--default-idle",
        action="store_true",
        help="leave CPU idle states alone (default: hold cpu_dma_latency=0 so idle vCPUs poll; see README)",
    )
    p.add_argument(
        "--odock-command",
        default="",
        help="the odock command to run (default: this Python with -m odock), e.g. while the CLI is "
        "being built",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON results file (default bench/results/<time>.json)"
    )
    console.add_arguments(p)
    return p.parse_args(argv)


@dataclass
class Ctx:
    """What every measurement needs: options, the supervisor, the mock and the core layout."""

    args: argparse.Namespace
    sup: Supervisor
    mock: Service
    sut_cpu: int | None
    load_cpu: int | None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock.port}"

    def note(self, text: str) -> None:
        """Record and print a problem that skipped part of the run."""
        print(f"! {text}", flush=True)
        self.results.setdefault("problems", []).append(text)


# --- measuring one target ---------------------------------------------------------------------------


def _journal(ctx: Ctx, method: str = "GET") -> list[dict[str, Any]]:
    """Return (or with DELETE, clear) the mock's request journal."""
    conn = http.client.HTTPConnection("127.0.0.1", ctx.mock.port, timeout=5)
    try:
        conn.request(method, "/_mock/requests")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"mock journal: {method} answered {resp.status}")
    requests: list[dict[str, Any]] = json.loads(body).get("requests", []) if method == "GET" else []
    return requests


def probe(ctx: Ctx, port: int, call: Call, via: str) -> None:
    """Send one request, check it is a good answer and (when proxied) that the mock journal saw it."""
    if via != "direct":
        _journal(ctx, "DELETE")
    status, body = http_post(port, call.path, call.body, call.headers)
    if status != 200 or call.expect not in body:
        raise RuntimeError(f"{via} {call.path}: {status} {body[:300]!r}")
    if via != "direct":
        seen = _journal(ctx)
        if not seen:
            raise RuntimeError(
                f"{via} answered 200 but the mock journal is empty: it did not proxy to the mock"
            )
        print(
            f"  {via}: probe reached the mock ({len(seen)} upstream request(s): "
            f"{', '.join(str(e.get('path')) for e in seen[:3])})",
            flush=True,
        )


USAGE_BACKLOG_LIMIT = 5_000  # usage records still queued after a throughput run: ten write batches


def usage_backlog(port: int) -> int | None:
    """The gateway's usage records waiting to be written (its /metrics gauge); None when it cannot be read."""
    try:
        status, body = http_get(port, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("gateway_usage_queue_depth "):
            return int(float(line.split()[1]))
    return None


def measure(
    ctx: Ctx, scenario: str, target: str, sut: Service | None, port: int, call: Call
) -> dict[str, Any]:
    """Probe, warm up, then the 1-connection latency run and the N-connection throughput run."""
    a = ctx.args
    ensure_mock(ctx)
    if sut is not None and not sut.alive():
        raise RuntimeError(f"{sut.name} is not running (exit {sut.popen.returncode}): {sut.tail(3)}")
    # the system under test gets its own core; the load generator (and the mock, when proxied) the other
    pin_tree(ctx.mock.pid, ctx.sut_cpu if sut is None else ctx.load_cpu)
    if sut is not None:
        pin_tree(sut.pid, ctx.sut_cpu)
    probe(ctx, port, call, target)
    cpu = ctx.load_cpu
    if a.warmup > 0:
        run_wrk(
            ctx.sup.workdir,
            port,
            call.path,
            call.body,
            call.headers,
            connections=a.connections,
            duration_s=a.warmup,
            cpu=cpu,
        )
    sut_pid = (sut or ctx.mock).pid
    settle_s = wait_quiet(sut_pid)
    lat = run_wrk(
        ctx.sup.workdir,
        port,
        call.path,
        call.body,
        call.headers,
        connections=1,
        duration_s=300,
        cap=a.requests,
        cpu=cpu,
    )
    c0, m0, s0, t0 = cpu_seconds(sut_pid), cpu_seconds(ctx.mock.pid), system_busy_seconds(), time.monotonic()
    thr = run_wrk(
        ctx.sup.workdir,
        port,
        call.path,
        call.body,
        call.headers,
        connections=a.connections,
        duration_s=a.duration,
        cpu=cpu,
    )
    wall = time.monotonic() - t0
    busy = system_busy_seconds() - s0
    out: dict[str, Any] = {
        "latency": lat.as_dict() | {"settle_s": round(settle_s, 2)},
        "throughput": thr.as_dict(),
    }
    tp = out["throughput"]
    tp["sut_cpu_pct"] = round(100 * (cpu_seconds(sut_pid) - c0) / wall, 1)
    if sut is not None:
        tp["mock_cpu_pct"] = round(100 * (cpu_seconds(ctx.mock.pid) - m0) / wall, 1)
    load = tp["client_cpu_s"] * 100 / wall + (tp.get("mock_cpu_pct", 0.0) if sut is not None else 0.0)
    tp["load_core_pct"] = round(load, 1)
    # CPU used by anything else on the machine (other test runs, builds): the run was not alone above ~10%
    own = cpu_seconds(sut_pid) - c0 + tp["client_cpu_s"] + (cpu_seconds(ctx.mock.pid) - m0 if sut else 0.0)
    tp["foreign_cpu_pct"] = round(max(0.0, busy - own) * 100 / wall, 1)
    if tp["foreign_cpu_pct"] > 10:
        ctx.note(
            f"{scenario} via {target}: other processes used {tp['foreign_cpu_pct']:.0f}% of a CPU during the run"
        )
    if ctx.load_cpu is not None and load > 90:
        ctx.note(f"{scenario} via {target}: the load core was {load:.0f}% busy: the figure may be load-bound")
    if sut is not None:
        out["memory_after"] = memory_kb(sut.pid)
    if target in report.GATEWAYS:
        # a usage writer that falls behind at saturation shows as memory growth only much later
        tp["usage_backlog"] = backlog = usage_backlog(port)
        if backlog is not None and backlog > USAGE_BACKLOG_LIMIT:
            ctx.note(
                f"{scenario} via {target}: {backlog:,} usage records still queued after the run "
                "(the writer does not keep up)"
            )
    print(
        f"  {target:>14}: p50 {lat.p50_us / 1000:.3f} ms  p99 {lat.p99_us / 1000:.3f} ms  "
        f"{thr.rps:,.0f} req/s  errors {thr.errors}  sut cpu {tp['sut_cpu_pct']}%",
        flush=True,
    )
    return out


def record(ctx: Ctx, scenario: Scenario, target: str, data: dict[str, Any]) -> None:
    """Store one target's figures under the scenario."""
    ctx.results.setdefault("runs", {}).setdefault(scenario.name, {})[target] = data


def ensure_mock(ctx: Ctx) -> None:
    """Restart the mock if it died (noting how), so one lost process does not void the rest of the run."""
    if ctx.mock.alive():
        return
    ctx.note(
        f"the mock exited (status {ctx.mock.popen.returncode}; negative = killed by that signal): restarted"
    )
    ctx.sup.stop(ctx.mock)
    ctx.mock = start_mock(ctx.sup, ctx.args, ctx.load_cpu)


def safe_measure(
    ctx: Ctx, scenario: Scenario, target: str, sut: Service | None, port: int, call: Call
) -> None:
    """Measure, recording a failure as a problem instead of ending the whole run."""
    try:
        record(ctx, scenario, target, measure(ctx, scenario.name, target, sut, port, call))
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        if sut is not None and not sut.alive():
            exc = RuntimeError(f"{exc} ({sut.name} exited with status {sut.popen.returncode})")
        ctx.note(f"{scenario.name} via {target}: {exc}")


# --- the processes ------------------------------------------------------------------------------------


def odock_argv(args: argparse.Namespace) -> list[str]:
    """Return the command that runs `odock`."""
    return shlex.split(args.odock_command) if args.odock_command else [sys.executable, "-m", "odock"]


def odock_available(args: argparse.Namespace, command: str) -> str | None:
    """Return None when `odock COMMAND` exists, else the reason it does not."""
    proc = subprocess.run(
        [*odock_argv(args), command, "--help"], check=False, capture_output=True, timeout=60, cwd=REPO
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def start_mock(sup: Supervisor, args: argparse.Namespace, cpu: int | None) -> Service:
    """Start the mock provider and wait for /_mock/health."""
    port = free_port()
    argv = [*odock_argv(args), "mock-upstream", "--host", "127.0.0.1", "--port", str(port)]
    mock = sup.start("mock", argv, port, cpu=cpu, cwd=REPO)
    mock.wait_ready("/_mock/health", timeout=60)
    return mock


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_gateway(ctx: Ctx, catalogue: str, env_extra: dict[str, str], name: str) -> Service:
    """Write the catalogue YAML, start `odock serve` on a free port and wait for /v1/health."""
    work = ctx.sup.workdir
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(CATALOGUES[catalogue](CatalogueSpec(ctx.mock_url)), sort_keys=False))
    port = free_port()
    env = {"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "ODOCK_LOG_LEVEL": "warning", **env_extra}
    if ctx.load_cpu is not None:
        # the usage writer process off the event loop's core, as on any machine with a second core (its work is
        # the ledger database's, like PostgreSQL's server processes in cluster mode)
        env.setdefault("ODOCK_USAGE_WRITER_CPUS", str(ctx.load_cpu))
    env.setdefault("ODOCK_DATABASE_URL", f"sqlite:///{work / (name + '.db')}")
    svc = ctx.sup.start(
        name, [*odock_argv(ctx.args), "serve", "--config", str(cfg)], port, env=env, cpu=ctx.sut_cpu, cwd=work
    )
    svc.wait_ready("/v1/health", timeout=90)
    return svc


def cluster_env(ctx: Ctx) -> tuple[dict[str, str], str]:
    """Create a throwaway PostgreSQL database; return the cluster-mode environment and the database name."""
    db = f"odock_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{db}"'))
    env = {
        "ODOCK_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db}",
        "ODOCK_REDIS_URL": REDIS_URL,
        "ODOCK_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    return env, db


def drop_db(db: str) -> None:
    """Drop a throwaway database (best effort)."""
    try:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    except Exception as exc:
        print(f"! could not drop database {db}: {exc}", flush=True)


# --- phases -----------------------------------------------------------------------------------------


def run_gateway(ctx: Ctx, scenarios: list[Scenario], cluster: bool) -> None:
    """Measure every scenario through the gateway, one fresh gateway per catalogue."""
    target = "odock-cluster" if cluster else "odock"
    for catalogue in dict.fromkeys(sc.catalogue for sc in scenarios):
        db = ""
        svc = None
        try:
            env: dict[str, str] = {}
            if cluster:
                env, db = cluster_env(ctx)
            svc = start_gateway(ctx, catalogue, env, f"{target}-{catalogue}")
            mem: dict[str, Any] = {"idle": memory_kb(svc.pid)}
            print(f"{target} [{catalogue}] up on :{svc.port} (pid {svc.pid})", flush=True)
            for sc in (s for s in scenarios if s.catalogue == catalogue):
                print(f"- {sc.name}", flush=True)
                safe_measure(ctx, sc, target, svc, svc.port, sc.gateway)
            mem["end"] = memory_kb(svc.pid)
            ctx.results.setdefault("memory", {})[f"{target}[{catalogue}]"] = mem
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            ctx.note(f"{target} [{catalogue}]: {exc}")
        finally:
            if svc is not None:
                ctx.sup.stop(svc)
            if db:
                drop_db(db)


def run_direct(ctx: Ctx, scenarios: list[Scenario]) -> None:
    """Measure every scenario's direct call to the mock."""
    for sc in scenarios:
        print(f"- {sc.name}", flush=True)
        safe_measure(ctx, sc, "direct", None, ctx.mock.port, sc.direct)


def run_peers(ctx: Ctx, scenarios: list[Scenario]) -> None:
    """Measure the peer scenarios through LiteLLM and Portkey, one peer process at a time."""
    ctx.results["peer_settings"] = json.loads(peers.describe_flags())
    for name in ("portkey", "litellm"):
        svc = None
        try:
            print(f"{name}: starting", flush=True)
            if name == "litellm":
                svc = peers.start_litellm(ctx.sup, ctx.mock_url, ctx.sut_cpu)
            else:
                svc = peers.start_portkey(ctx.sup, ctx.sut_cpu)
            for sc in (s for s in scenarios if s.peers):
                print(f"- {sc.name}", flush=True)
                safe_measure(ctx, sc, name, svc, svc.port, peers.peer_call(name, sc, ctx.mock_url))
            ctx.results.setdefault("memory", {})[name] = {"end": memory_kb(svc.pid)}
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            ctx.note(f"{name}: {exc}")
        finally:
            if svc is not None:
                ctx.sup.stop(svc)


def forwarded(scenarios: list[Scenario]) -> list[Scenario]:
    """The scenarios the bare Python forwarder is measured on: the peers' ones and the governed ones (whose
    req/s target is the forwarder's)."""
    return [s for s in scenarios if s.peers or "governance" in s.tags]


def run_forwarder(ctx: Ctx, scenarios: list[Scenario]) -> None:
    """Measure the bare Python forwarder (uvicorn + aiohttp, raw ASGI, no auth or accounting) on `scenarios`."""
    svc = None
    try:
        print("forwarder: starting", flush=True)
        svc = peers.start_forwarder(ctx.sup, ctx.mock_url, ctx.sut_cpu)
        for sc in scenarios:
            print(f"- {sc.name}", flush=True)
            safe_measure(ctx, sc, "forwarder", svc, svc.port, peers.peer_call("forwarder", sc, ctx.mock_url))
        ctx.results.setdefault("memory", {})["forwarder"] = {"end": memory_kb(svc.pid)}
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        ctx.note(f"forwarder: {exc}")
    finally:
        if svc is not None:
            ctx.sup.stop(svc)


def sqlite_bytes(database_url: str) -> int | None:
    """The size of a SQLite database with its WAL; None for other databases."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = Path(database_url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def soak_marks(total: int, step: int) -> list[int]:
    """The request counts at which the soak reads memory: every `step`, and `total` last."""
    step = max(1, min(step, total))
    return [*range(step, total, step), total]


def run_soak(ctx: Ctx, scenario: Scenario, total: int, cluster: bool) -> None:
    """Send `total` requests through a fresh gateway (usage recorded as always); read RSS, the usage backlog and
    the database size every --soak-step requests, and compare RSS at the first and the last mark."""
    name = "soak-cluster" if cluster else "soak"
    svc = None
    db = ""
    try:
        env: dict[str, str] = {}
        if cluster:
            env, db = cluster_env(ctx)
        svc = start_gateway(ctx, scenario.catalogue, env, f"odock-{name}")
        database_url = env.get("ODOCK_DATABASE_URL", f"sqlite:///{ctx.sup.workdir / f'odock-{name}.db'}")
        pin_tree(ctx.mock.pid, ctx.load_cpu)
        call = scenario.gateway
        probe(ctx, svc.port, call, "odock")
        marks: list[dict[str, Any]] = []
        started = time.monotonic()
        done = 0
        for mark in soak_marks(total, ctx.args.soak_step):
            res = run_wrk(
                ctx.sup.workdir,
                svc.port,
                call.path,
                call.body,
                call.headers,
                connections=ctx.args.connections,
                duration_s=3600,
                cap=mark - done,
                cpu=ctx.load_cpu,
            )
            done += res.requests
            size = sqlite_bytes(database_url)
            marks.append(
                {
                    "requests": done,
                    "errors": res.errors,
                    "rps": round(res.rps, 1),
                    **memory_kb(svc.pid),
                    "usage_backlog": usage_backlog(svc.port),
                    "db_mb": None if size is None else round(size / 2**20, 1),
                }
            )
            print(
                f"  {name}: {done:,} requests, RSS {marks[-1]['rss_kb'] / 1024:.1f} MiB, "
                f"usage backlog {marks[-1]['usage_backlog']}, database {marks[-1]['db_mb']} MiB",
                flush=True,
            )
        growth = 100.0 * (marks[-1]["rss_kb"] - marks[0]["rss_kb"]) / marks[0]["rss_kb"]
        ctx.results[name] = {
            "scenario": scenario.name,
            "mode": "cluster" if cluster else "embedded",
            "marks": marks,
            "rss_growth_pct": round(growth, 2),
            "seconds": round(time.monotonic() - started, 1),
        }
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        ctx.note(f"{name}: {exc}")
    finally:
        if svc is not None:
            ctx.sup.stop(svc)
        if db:
            drop_db(db)


def run_loadgen_compare(ctx: Ctx, scenario: Scenario) -> None:
    """Drive the mock with wrk and with the Python client alike; record what each costs the client."""
    from bench import pyload

    call = scenario.direct
    pin_tree(ctx.mock.pid, ctx.sut_cpu)
    out: dict[str, Any] = {}
    for conns in (1, ctx.args.connections):
        w = run_wrk(
            ctx.sup.workdir,
            ctx.mock.port,
            call.path,
            call.body,
            call.headers,
            connections=conns,
            duration_s=5,
            cpu=ctx.load_cpu,
        )
        py = pyload.run_subprocess(ctx.mock.port, call, conns, 5.0, ctx.load_cpu)
        out[f"c{conns}"] = {"wrk": w.as_dict(), "python-aiohttp": py.as_dict()}
        print(
            f"  c{conns}: wrk {w.rps:,.0f} req/s {w.as_dict()['client_cpu_ms_per_1k']} ms CPU/1k | "
            f"aiohttp {py.rps:,.0f} req/s {py.as_dict()['client_cpu_ms_per_1k']} ms CPU/1k",
            flush=True,
        )
    ctx.results["loadgen"] = out


# --- main -------------------------------------------------------------------------------------------


def _meta(args: argparse.Namespace, sut_cpu: int | None, load_cpu: int | None, idle: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, cwd=REPO, timeout=10
    )
    wrk_v = subprocess.run(["wrk", "--version"], check=False, capture_output=True, timeout=10)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "commit": commit.stdout.decode().strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "pinning": {
            "sut_cpu": sut_cpu,
            "load_cpu": load_cpu,
            "rule": "system under test alone on sut_cpu; wrk (and the mock when proxied) on load_cpu",
        },
        "idle": idle,
        "wrk": (wrk_v.stdout or wrk_v.stderr).decode().splitlines()[0]
        if (wrk_v.stdout or wrk_v.stderr)
        else "",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - older than the complexity rule; to split
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    if args.console:  # the console's pages on a seeded database: no gateway, mock or load generator
        return console.main(args)
    if args.mcp:
        from bench import mcp

        return mcp.run(args)
    ensure_wrk(install=True)
    avail = cores()
    sut_cpu, load_cpu = (avail[0], avail[1]) if len(avail) >= 2 and not args.no_pin else (None, None)
    key = "odk-bench-" + secrets.token_hex(16)
    os.environ[KEY_ENV] = key
    os.environ[UPSTREAM_KEY_ENV] = "sk-bench-upstream"
    scenarios = select(
        build_scenarios(key, os.environ[UPSTREAM_KEY_ENV]),
        args.only,
        {
            t
            for t, on in (
                ("dialects", args.dialects),
                ("failover", args.failover),
                ("governance", args.governance),
                ("cache", args.cache),
                ("safety", args.safety),
            )
            if on
        },
    )
    # SIGTERM/SIGHUP end the run like Ctrl-C, so the finally below always stops every child
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="odock-bench-"))
    sup = Supervisor(workdir)
    idle = LowLatencyIdle()
    if not args.default_idle:
        idle.open()
    results: dict[str, Any] = {
        "meta": _meta(args, sut_cpu, load_cpu, idle.state),
        "scenarios": {
            sc.name: {
                "tags": sorted(sc.tags),
                "catalogue": sc.catalogue,
                "path": sc.gateway.path,
                "stream": sc.stream,
                "note": sc.note,
                "baseline": sc.baseline,
            }
            for sc in scenarios
        },
    }
    try:
        if why := odock_available(args, "mock-upstream"):
            print(f"the mock provider is not available (`odock mock-upstream`): {why}", file=sys.stderr)
            return 2
        ctx = Ctx(args, sup, start_mock(sup, args, load_cpu), sut_cpu, load_cpu, results)
        print(
            f"mock on :{ctx.mock.port}; pinning sut={sut_cpu} load={load_cpu}; workdir {workdir}", flush=True
        )
        if args.loadgen_compare:
            print("load generator cost (direct to mock)", flush=True)
            run_loadgen_compare(ctx, scenarios[0] if scenarios else build_scenarios(key, "x")[0])
        if args.safety:
            from bench.safety_scan import measure

            results["safety_scan"] = measure()
            print(f"SafetySec scan cost: {results['safety_scan']}", flush=True)
        if not args.soak_only:
            print("direct to mock", flush=True)
            run_direct(ctx, scenarios)
        gateway_ok = not args.no_gateway
        if gateway_ok and (why := odock_available(args, "serve")):
            ctx.note(f"gateway not available (`odock serve`): {why}")
            gateway_ok = False
        if gateway_ok and not args.soak_only:
            run_gateway(ctx, scenarios, cluster=False)
            if args.safety and args.safety_rounds > 0:
                from bench import safety_rounds

                by_name = {sc.name: sc for sc in scenarios}
                results["safety_rounds"] = safety_rounds.measure(
                    ctx, by_name, args.safety_rounds, args.requests
                )
            if args.cluster:
                run_gateway(ctx, scenarios, cluster=True)
        if (args.peers or any("governance" in s.tags for s in scenarios)) and not args.soak_only:
            run_forwarder(ctx, forwarded(scenarios))
        if args.peers and not args.soak_only:
            run_peers(ctx, scenarios)
        soak = args.soak or (500_000 if args.soak_only else 0)
        if soak and gateway_ok:
            soaked = next((s for s in scenarios if s.name == "openai-unary"), scenarios[0])
            run_soak(ctx, soaked, soak, cluster=False)
            if args.cluster:
                run_soak(ctx, soaked, soak, cluster=True)
    except KeyboardInterrupt:
        results.setdefault("problems", []).append("interrupted")
        print("interrupted: stopping every child process", file=sys.stderr)
    finally:
        sup.close()
        idle.close()
        if results.get("problems"):
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out = args.out or RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print()
    print(report.markdown(results))
    print(f"\nJSON: {out}")
    return 1 if "interrupted" in results.get("problems", []) else 0
