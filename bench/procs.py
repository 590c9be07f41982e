"""Child processes: free ports, pinning, readiness, RSS and CPU readings, and a guaranteed teardown."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cores() -> list[int]:
    """Return the CPUs this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def pin_prefix(cpu: int | None) -> list[str]:
    """Return a `taskset -c CPU` command prefix, or nothing when pinning is off or taskset is missing."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


class LowLatencyIdle:
    """Hold the kernel's CPU-latency request at 0 (PM QoS, /dev/cpu_dma_latency) while open.

    On a VM the idle vCPU halts and each wake-up costs tens of microseconds in the hypervisor. A proxy adds two
    cross-core wake-ups per sequential request, so at 1 connection the figure would measure the hypervisor, not
    the gateway. Holding the request at 0 keeps idle CPUs polling (what tuned's latency-performance profile does
    with `force_latency`) for direct, gateway and peer runs alike. Needs write access (root); else a no-op.
    """

    PATH = "/dev/cpu_dma_latency"

    def __init__(self) -> None:
        self._fd: int | None = None
        self.state = "default (not requested)"

    def open(self) -> None:
        try:
            fd = os.open(self.PATH, os.O_WRONLY)
            os.write(fd, (0).to_bytes(4, "little", signed=True))
        except OSError as exc:
            self.state = f"default ({self.PATH}: {exc.strerror})"
            return
        self._fd = fd
        self.state = "polling (cpu_dma_latency=0)"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the request
            self._fd = None


def tree_pids(root: int) -> list[int]:
    """Return `root` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pin_tree(root: int, cpu: int | None) -> None:
    """Move every thread of `root`'s process tree onto `cpu` (the syscall taskset uses)."""
    if cpu is None:
        return
    for pid in tree_pids(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            continue


def cpu_seconds(root: int) -> float:
    """Return user+system CPU seconds used so far by `root`'s process tree."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def wait_quiet(root: int, *, window_s: float = 0.2, busy_pct: float = 10.0, timeout_s: float = 5.0) -> float:
    """Wait until `root`'s process tree used under `busy_pct`% of a CPU over one window; return the seconds waited.

    A warm-up at N connections leaves background work behind (a gateway's usage backlog being written); a
    latency run started at once would measure that, not one connection's steady state. Bounded by `timeout_s`.
    """
    start = time.monotonic()
    while True:
        before = cpu_seconds(root)
        time.sleep(window_s)
        waited = time.monotonic() - start
        if (cpu_seconds(root) - before) * 100 / window_s < busy_pct or waited >= timeout_s:
            return waited


def system_busy_seconds() -> float:
    """Return the CPU seconds all CPUs spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def memory_kb(root: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak) in KiB, summed over `root`'s process tree."""
    out = {"rss_kb": 0, "hwm_kb": 0}
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        out["rss_kb"] += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        out["hwm_kb"] += int(line.split()[1])
        except OSError:
            continue
    return out


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path and return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_post(
    port: int, path: str, body: bytes, headers: Mapping[str, str], timeout: float = 10.0
) -> tuple[int, bytes]:
    """POST to http://127.0.0.1:port/path and return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Service:
    """A started child process (its own process group) with its log file and port."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    cpu: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.popen.poll() is None

    def tail(self, lines: int = 8, chars: int = 1500) -> str:
        """Return the end of the process log, bounded in lines and characters (for error messages)."""
        try:
            text = "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
        return text if len(text) <= chars else "…" + text[-chars:]

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        """Poll GET `path` until it answers 200; raise with the log tail if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                status, _ = http_get(self.port, path, timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not ready on :{self.port}{path} after {timeout:.0f}s:\n{self.tail()}"
        )


@dataclass
class Supervisor:
    """Owns every child process of a run; `close()` ends them all (also on errors and Ctrl-C)."""

    workdir: Path
    services: list[Service] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        env: Mapping[str, str] | None = None,
        cpu: int | None = None,
        cwd: Path | None = None,
    ) -> Service:
        """Start `argv` pinned to `cpu` in a new session, logging to workdir/<name>.log."""
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                [*pin_prefix(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        service = Service(name, port, popen, log, cpu)
        self.services.append(service)
        return service

    def stop(self, service: Service, grace: float = 5.0) -> None:
        """End one service's process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if service in self.services:
            self.services.remove(service)
        if service.popen.poll() is not None:
            return
        try:
            os.killpg(service.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            service.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)
            service.popen.wait(timeout=grace)

    def close(self) -> None:
        """Stop every service still running, newest first."""
        for service in reversed(list(self.services)):
            self.stop(service)
