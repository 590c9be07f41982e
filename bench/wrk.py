"""The load generator: wrk with a generated Lua script (POST body, headers, request cap, JSON summary)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import pin_prefix

# wrk's Lua: `response` is defined only when a request cap is set, because a defined `response`
# makes wrk copy every header and body into Lua (measurable client CPU at high rates).
_LUA = """\
wrk.method = "POST"
wrk.path = {path}
wrk.body = {body}
{headers}
local cap = tonumber(os.getenv("BENCH_CAP") or "0")
if cap > 0 then
  local count = 0
  function response(status, headers, body)
    count = count + 1
    if count == cap then
      -- wrk sleeps for the whole -d even when every thread stopped: tell the harness to SIGINT it
      local flag = io.open(os.getenv("BENCH_OUT") .. ".cap", "w")
      flag:close()
      wrk.thread:stop()
    end
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  out:write(string.format(
    '{{"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"lat_mean_us":%.2f,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
"""


def lua_string(text: str) -> str:
    """Quote `text` as a Lua double-quoted string (bytes outside printable ASCII as decimal escapes)."""
    out = []
    for byte in text.encode():
        if byte in (0x22, 0x5C) or not 0x20 <= byte < 0x7F:
            out.append(f"\\{byte:03d}")
        else:
            out.append(chr(byte))
    return '"' + "".join(out) + '"'


def lua_script(path: str, body: bytes, headers: Mapping[str, str]) -> str:
    """Return the wrk Lua script that POSTs `body` to `path` with `headers`."""
    lines = [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    return _LUA.format(path=lua_string(path), body=lua_string(body.decode()), headers="\n".join(lines))


@dataclass
class WrkResult:
    """One wrk run: counts, errors, latency percentiles (µs) and what it cost the client."""

    requests: int
    duration_us: int
    bytes: int
    err_connect: int
    err_read: int
    err_write: int
    err_status: int
    err_timeout: int
    lat_mean_us: float
    lat_max_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        """Requests per second over the run."""
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        """Socket errors plus non-2xx/3xx answers."""
        return self.err_connect + self.err_read + self.err_write + self.err_status + self.err_timeout

    def as_dict(self) -> dict[str, float | int]:
        """Return the fields plus derived rps, errors and client CPU per 1k requests."""
        out: dict[str, float | int] = dict(asdict(self))
        out["rps"] = round(self.rps, 1)
        out["errors"] = self.errors
        out["client_cpu_ms_per_1k"] = (
            round(self.client_cpu_s * 1e6 / self.requests, 1) if self.requests else 0.0
        )
        return out


def ensure_wrk(install: bool = True) -> str:
    """Return the wrk binary, installing the Debian package when it is missing and `install` is set."""
    found = shutil.which("wrk")
    if found or not install:
        if not found:
            raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
        return found
    print("wrk missing: apt-get install -y wrk", flush=True)
    for argv in (
        ["apt-get", "install", "-y", "wrk"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "wrk"],
    ):
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        found = shutil.which("wrk")
        if found:
            return found
    raise RuntimeError("could not install wrk (apt-get install -y wrk)")


def run_wrk(
    workdir: Path,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connections: int,
    duration_s: float,
    cap: int = 0,
    cpu: int | None = None,
    timeout_s: float = 5.0,
) -> WrkResult:
    """Run wrk (one thread) against 127.0.0.1:port for `duration_s`, or until `cap` requests in total."""
    script = workdir / "wrk.lua"
    script.write_text(lua_script(path, body, headers))
    out = workdir / "wrk.json"
    out.unlink(missing_ok=True)
    argv = [
        *pin_prefix(cpu),
        ensure_wrk(install=False),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    env = {**os.environ, "BENCH_OUT": str(out), "BENCH_CAP": str(cap)}
    flag = Path(f"{out}.cap")
    flag.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = started + duration_s + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if flag.exists():
                proc.send_signal(signal.SIGINT)  # wrk's SIGINT handler ends the run and still calls done()
                break
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"wrk failed ({proc.returncode}) after {time.monotonic() - started:.1f}s: "
            f"{stderr.decode(errors='replace')[-500:]}"
        )
    data = json.loads(out.read_text())
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(**data, client_cpu_s=cpu_s)
