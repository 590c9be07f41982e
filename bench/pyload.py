"""A lean Python load generator (aiohttp), kept to measure what wrk saves the shared 2-core machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import pin_prefix
from bench.scenarios import Call
from bench.wrk import WrkResult


async def _drive(
    port: int, path: str, body: bytes, headers: dict[str, str], conns: int, duration: float
) -> dict[str, float | int]:
    import aiohttp

    url = f"http://127.0.0.1:{port}{path}"
    latencies: list[int] = []
    errors = 0
    total_bytes = 0
    deadline = time.monotonic() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, total_bytes
        while time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    total_bytes += len(data)
                    if resp.status >= 400:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append((time.perf_counter_ns() - t0) // 1000)

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    elapsed_us = int((time.monotonic() - started) * 1e6)
    latencies.sort()

    def pct(q: float) -> int:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q / 100))] if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": elapsed_us,
        "bytes": total_bytes,
        "err_connect": 0,
        "err_read": 0,
        "err_write": 0,
        "err_status": errors,
        "err_timeout": 0,
        "lat_mean_us": sum(latencies) / len(latencies) if latencies else 0.0,
        "lat_max_us": latencies[-1] if latencies else 0,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
    }


def run_subprocess(port: int, call: Call, conns: int, duration: float, cpu: int | None) -> WrkResult:
    """Run this client in a child process pinned to `cpu`; return its figures and CPU cost."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "call.json"
        spec.write_text(json.dumps({"path": call.path, "body": call.body.decode(), "headers": call.headers}))
        out = Path(tmp) / "out.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [
                *pin_prefix(cpu),
                sys.executable,
                "-m",
                "bench.pyload",
                str(port),
                str(spec),
                str(conns),
                str(duration),
                str(out),
            ],
            check=True,
            timeout=duration + 60,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        data = json.loads(out.read_text())
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(**data, client_cpu_s=cpu_s)


def main() -> None:
    """Entry of the child process: PORT CALL_JSON CONNECTIONS DURATION OUT_JSON."""
    p = argparse.ArgumentParser()
    for name in ("port", "spec", "conns", "duration", "out"):
        p.add_argument(name)
    a = p.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(
        _drive(
            int(a.port), spec["path"], spec["body"].encode(), spec["headers"], int(a.conns), float(a.duration)
        )
    )
    Path(a.out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
