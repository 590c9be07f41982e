"""Tests of the benchmark harness itself (no gateway needed): wrk driving, teardown, scenarios, report."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bench import report
from bench.procs import LowLatencyIdle, Supervisor, free_port, memory_kb, tree_pids, wait_quiet
from bench.run import soak_marks, sqlite_bytes, usage_backlog
from bench.scenarios import CATALOGUES, KEY_ENV, CatalogueSpec, build_scenarios, select
from bench.wrk import lua_script, lua_string, run_wrk


class _Echo(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, bytes, str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Echo.seen.append((self.path, body, self.headers.get("x-odd")))
        status = 503 if b"fail" in body else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_GET(self) -> None:  # a gateway's /metrics, as far as the bench reads it
        body = b"# TYPE gateway_usage_queue_depth gauge\ngateway_usage_queue_depth 6250.0\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def echo() -> Iterator[int]:
    """A small HTTP server on loopback that records what it receives."""
    _Echo.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# under CI=true a missing wrk fails these tests instead of skipping them (.ci/run installs it)
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("CI") != "true", reason="wrk is not installed"
)


def test_lua_string_escapes_quotes_backslashes_and_non_ascii() -> None:
    """Quotes, backslashes, newlines and UTF-8 bytes become decimal escapes; plain text stays."""
    assert lua_string('a"b\\c\né') == '"a\\034b\\092c\\010\\195\\169"'
    assert lua_string("plain text") == '"plain text"'


def test_lua_script_sets_method_path_body_and_headers() -> None:
    """The script posts the body to the path with every header."""
    script = lua_script("/v1/x", b"{}", {"Authorization": "Bearer k"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.path = "/v1/x"' in script
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script


@needs_wrk
def test_wrk_sends_exact_body_and_headers_and_stops_at_cap(echo: int, tmp_path: Path) -> None:
    """A capped run sends exactly `cap` requests with the body and headers, and ends long before -d."""
    body = json.dumps({"q": 'quote " backslash \\ é'}).encode()
    started = time.monotonic()
    res = run_wrk(
        tmp_path,
        echo,
        "/p?alt=sse",
        body,
        {"Content-Type": "application/json", "x-odd": 'a"b'},
        connections=1,
        duration_s=30,
        cap=50,
    )
    assert time.monotonic() - started < 10
    assert res.requests == 50
    assert res.errors == 0
    assert len(_Echo.seen) == 50
    assert _Echo.seen[0] == ("/p?alt=sse", body, 'a"b')
    assert res.p50_us > 0


@needs_wrk
def test_wrk_counts_non_2xx_answers_as_errors(echo: int, tmp_path: Path) -> None:
    """Answers with an error status are counted in err_status."""
    res = run_wrk(tmp_path, echo, "/", b'{"fail":1}', {}, connections=1, duration_s=30, cap=20)
    assert res.err_status == res.requests == 20


def test_usage_backlog_reads_the_gateways_queue_gauge(echo: int) -> None:
    """After a throughput run the bench reads how many usage records the gateway still has to write."""
    assert usage_backlog(echo) == 6250
    assert usage_backlog(free_port()) is None  # nothing listening: unknown, not zero


def test_supervisor_close_ends_the_whole_process_group(tmp_path: Path) -> None:
    """close() ends a child and the grandchild it started."""
    sup = Supervisor(tmp_path)
    svc = sup.start("sleeper", ["sh", "-c", "sleep 60 & sleep 60"], free_port())
    deadline = time.monotonic() + 5
    while len(tree_pids(svc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    family = tree_pids(svc.pid)
    assert len(family) >= 2
    assert memory_kb(svc.pid)["rss_kb"] > 0
    sup.close()
    time.sleep(0.2)
    alive = [
        pid
        for pid in family
        if Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    ]
    assert alive == []


def test_wait_quiet_waits_out_background_work_and_is_bounded(tmp_path: Path) -> None:
    """The latency run starts once the system under test stops working for the warm-up; a busy one is waited
    for no longer than the bound."""
    sup = Supervisor(tmp_path)
    try:
        busy_then_idle = (
            "import time\nend = time.monotonic() + 0.8\nwhile time.monotonic() < end: pass\ntime.sleep(60)"
        )
        burst = sup.start("burst", [sys.executable, "-c", busy_then_idle], free_port())
        waited = wait_quiet(burst.pid, window_s=0.1)
        assert 0.5 <= waited < 3
        spinner = sup.start("spin", [sys.executable, "-c", "while True: pass"], free_port())
        time.sleep(0.2)  # spinning, not starting up
        assert 0.5 <= wait_quiet(spinner.pid, window_s=0.1, timeout_s=0.5) < 1.0
    finally:
        sup.close()


def test_wait_ready_reports_a_child_that_exits(tmp_path: Path) -> None:
    """A service that dies before answering raises with its log tail instead of waiting out the timeout."""
    sup = Supervisor(tmp_path)
    try:
        svc = sup.start("dies", ["sh", "-c", "echo boom; exit 3"], free_port())
        with pytest.raises(RuntimeError, match="boom"):
            svc.wait_ready("/health", timeout=10)
    finally:
        sup.close()


def test_every_catalogue_grants_its_models_and_keeps_secrets_in_env_references() -> None:
    """Each catalogue's key is granted every model and no secret is inline."""
    for name, build in CATALOGUES.items():
        cat = build(CatalogueSpec("http://127.0.0.1:1"))
        models = {m["name"] for m in cat["models"]}
        assert set(cat["keys"][0]["models"]) == models, name
        assert cat["keys"][0]["secret"] == "${" + KEY_ENV + "}"
        assert all(p["api_key"].startswith("${") for p in cat["providers"])
        providers = {p["name"] for p in cat["providers"]}
        assert all(m["provider"] in providers for m in cat["models"])


def test_select_defaults_to_core_and_adds_option_tags() -> None:
    """No --only gives the core scenarios; option tags add theirs; --only picks by name or tag."""
    all_ = build_scenarios("k", "u")
    assert [s.name for s in select(all_, [], set())] == ["openai-unary", "openai-stream"]
    assert {"anthropic-stream", "gemini-stream"} <= {s.name for s in select(all_, [], {"dialects"})}
    assert [s.name for s in select(all_, ["unary"], set())] == [s.name for s in all_ if "unary" in s.tags]
    assert [s.name for s in select(all_, ["gemini-stream"], set())] == ["gemini-stream"]
    # governance is held against the same gateway without it, in the same run
    assert [s.name for s in select(all_, ["governance"], set())] == [
        "openai-unary",
        "openai-stream",
        "governance-unary",
        "governance-stream",
    ]


def test_report_holds_governance_to_its_cost_and_every_gateway_to_its_tail() -> None:
    """Issue 16's rows: governed added p50, req/s against the ungoverned gateway and the bare forwarder; added
    p99 and the slowest request of every scenario, per mode."""
    slow = _run(450, 3_000)
    slow["latency"] |= {"p99_us": 2_500, "lat_max_us": 25_000}
    results = {
        "meta": {},
        "scenarios": {"openai-unary": {}, "governance-unary": {"baseline": "openai-unary"}},
        "runs": {
            "openai-unary": {"direct": _run(100, 10_000), "odock": _run(300, 5_000)},
            "governance-unary": {
                "direct": _run(100, 10_000),
                "odock": _run(350, 4_500),
                "odock-cluster": slow,
                "forwarder": _run(400, 4_000),
            },
        },
    }
    text = report.markdown(results)
    assert "| added p50 ≤ 0.3 ms (governance-unary) | 0.250 ms | PASS |" in text
    assert (
        "| req/s ≥ 0.8× without governance (governance-unary / openai-unary, odock) | 0.90× (4,500 / 5,000 req/s)"
        " | PASS |" in text
    )
    assert (
        "| req/s ≥ the bare Python forwarder's (governance-unary, odock) | 1.12× (4,500 / 4,000 req/s) | PASS |"
        in text
    )
    assert "| added p50 ≤ 0.3 ms (governance-unary, odock-cluster) | 0.350 ms | FAIL |" in text
    assert "without governance (governance-unary / openai-unary, odock-cluster) | – | n/a |" in text
    assert "| req/s ≥ the bare Python forwarder's (governance-unary, odock-cluster) | 0.75×" in text
    assert "| added p99 ≤ 1 ms at 1 connection (governance-unary, odock) | 0.500 ms | PASS |" in text
    assert "| added p99 ≤ 1 ms at 1 connection (governance-unary, odock-cluster) | 2.300 ms | FAIL |" in text
    assert (
        "| slowest request ≤ 20 ms in the latency run (governance-unary, odock-cluster) | 25.000 ms | FAIL |"
        in text
    )
    assert "| governance-unary | forwarder | 0.400 |" in text


def _run(p50: int, rps: float) -> dict[str, dict[str, float]]:
    return {
        "latency": {"p50_us": p50, "p99_us": p50 * 2},
        "throughput": {"rps": rps, "errors": 0, "sut_cpu_pct": 99.0},
    }


def test_report_computes_added_latency_ratios_and_verdicts() -> None:
    """Added p50 is gateway minus direct; peer ratios and soak growth get PASS/FAIL against the targets."""
    results = {
        "meta": {"options": {"connections": 32}},
        "runs": {
            "openai-unary": {
                "direct": _run(100, 10_000),
                "odock": _run(350, 5_000),
                "portkey": _run(2_000, 2_000),
                "litellm": _run(20_000, 400),
            }
        },
        "soak": {"scenario": "openai-unary", "seconds": 1.0, "rss_growth_pct": 12.5, "marks": []},
    }
    text = report.markdown(results)
    assert "| openai-unary | odock | 0.350 | 0.700 | – | 0.250 | 0.500 | 5,000 | 0.50× |" in text
    assert "| req/s ≥ 2× portkey (openai-unary) | 2.50× | PASS |" in text
    assert "| req/s ≥ 15× litellm (openai-unary) | 12.50× | FAIL |" in text
    assert "| added p50 ≤ 0.3 ms (openai-unary) | 0.250 ms | PASS |" in text
    assert "+12.50% | FAIL |" in text


def test_report_holds_dialect_routes_to_the_core_target_and_translation_to_its_ratio() -> None:
    """Each dialect's streamed route gets the added-p50 target; the unified endpoint ≤ 1.5× the native route's."""
    runs = {
        "anthropic-stream": {"direct": _run(100, 1), "odock": _run(300, 1)},
        "gemini-stream": {"direct": _run(100, 1), "odock": _run(450, 1)},
        "unified-to-anthropic-stream": {"direct": _run(100, 1), "odock": _run(400, 1)},
        "unified-to-gemini-stream": {"direct": _run(100, 1), "odock": _run(500, 1)},
    }
    text = report.markdown({"meta": {}, "runs": runs})
    assert "| added p50 ≤ 0.3 ms (anthropic-stream) | 0.200 ms | PASS |" in text
    assert "| added p50 ≤ 0.3 ms (gemini-stream) | 0.350 ms | FAIL |" in text
    assert "| unified-to-anthropic-stream added p50 ≤ 1.5× anthropic-stream's | 1.50× | PASS |" in text
    assert "| unified-to-gemini-stream added p50 ≤ 1.5× gemini-stream's | 1.14× | PASS |" in text
    runs["gemini-stream"]["odock"] = _run(
        100, 1
    )  # no overhead to compare with: no verdict, not a division by 0
    assert "| unified-to-gemini-stream added p50 ≤ 1.5× gemini-stream's | – | n/a |" in report.markdown(
        {"meta": {}, "runs": runs}
    )


def test_soak_reads_memory_every_step_and_at_the_end(tmp_path: Path) -> None:
    """The soak's marks fall every --soak-step requests and on the total; SQLite's size counts its WAL."""
    assert soak_marks(500_000, 100_000) == [100_000, 200_000, 300_000, 400_000, 500_000]
    assert soak_marks(250_000, 100_000) == [100_000, 200_000, 250_000]
    assert soak_marks(10, 100) == [10]
    (tmp_path / "x.db").write_bytes(b"1" * 100)
    (tmp_path / "x.db-wal").write_bytes(b"2" * 20)
    assert sqlite_bytes(f"sqlite:///{tmp_path / 'x.db'}") == 120
    assert sqlite_bytes("postgresql://u@h/db") is None


def test_report_lists_the_embedded_and_the_cluster_soak() -> None:
    """Each mode's soak gets its table and its target row: RSS from the first to the last mark within 5%."""
    mark = {"errors": 0, "rps": 5000.0, "hwm_kb": 110_000, "usage_backlog": 12, "db_mb": None}
    results = {
        "meta": {},
        "runs": {},
        "soak": {
            "scenario": "openai-unary",
            "mode": "embedded",
            "seconds": 90.0,
            "rss_growth_pct": 1.5,
            "marks": [
                {**mark, "requests": 100_000, "rss_kb": 100_000, "db_mb": 93.0},
                {**mark, "requests": 500_000, "rss_kb": 101_500, "db_mb": 450.0},
            ],
        },
        "soak-cluster": {
            "scenario": "openai-unary",
            "mode": "cluster",
            "seconds": 99.0,
            "rss_growth_pct": 6.0,
            "marks": [
                {**mark, "requests": 100_000, "rss_kb": 100_000},
                {**mark, "requests": 500_000, "rss_kb": 106_000},
            ],
        },
    }
    text = report.markdown(results)
    assert "### Soak (openai-unary, embedded mode, 90.0 s)" in text and "cluster mode, 99.0 s" in text
    assert "| 500,000 | 99.1 | 107.4 | 5,000 | 0 | 12 | 450 |" in text
    assert "| RSS after 500k within 5% of after 100k (embedded) | +1.50% | PASS |" in text
    assert "| RSS after 500k within 5% of after 100k (cluster) | +6.00% | FAIL |" in text


def test_low_latency_idle_reports_its_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PM QoS request is held while open and dropped on close; a device it cannot open is reported, not fatal."""
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    monkeypatch.setattr(LowLatencyIdle, "PATH", str(device))
    idle = LowLatencyIdle()
    idle.open()
    assert idle.state.startswith("polling") and device.read_bytes() == (0).to_bytes(4, "little")
    idle.close()
    idle.close()  # idempotent
    monkeypatch.setattr(LowLatencyIdle, "PATH", str(tmp_path / "missing" / "device"))
    refused = LowLatencyIdle()
    refused.open()
    assert refused.state.startswith("default (") and "missing" in refused.state
    refused.close()


def test_report_holds_safetysec_to_twice_the_added_latency_without_it() -> None:
    """SafetySec on against off: from the main table, and from the alternating rounds when they ran."""
    runs = {
        "safety-unary": {"direct": _run(100, 1), "odock": _run(400, 1)},
        "safety-off-unary": {"direct": _run(100, 1), "odock": _run(250, 1)},
        "safety-stream": {"direct": _run(200, 1), "odock": _run(700, 1)},
        "safety-off-stream": {"direct": _run(200, 1), "odock": _run(400, 1)},
    }
    rounds = {
        "stream": {
            "added_p50_on_ms": 0.39,
            "added_p50_off_ms": 0.2,
            "ratio": 1.95,
            "round_ratios": [1.9, 1.95, 2.1],
            "rounds": 3,
        }
    }
    text = report.markdown({"meta": {}, "runs": runs, "safety_rounds": rounds})
    assert (
        "| SafetySec on: added p50 ≤ 2× off (safety-unary, table) | 2.00× (0.300 vs 0.150 ms) | PASS |"
        in text
    )
    assert (
        "| SafetySec on: added p50 ≤ 2× off (safety-stream, table) | 2.50× (0.500 vs 0.200 ms) | FAIL |"
        in text
    )
    assert (
        "| SafetySec on: added p50 ≤ 2× off (safety-stream, median of 3 alternating rounds) | 1.95× (0.390 vs "
        "0.200 ms; per round [1.9, 1.95, 2.1]) | PASS |" in text
    )
