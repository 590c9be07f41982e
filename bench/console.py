"""`python -m bench --console`: every console page timed against 1,000,000 usage records and 100,000 keys, while
the gateway serves traffic.

Seeds a fresh database (SQLite file, or a new PostgreSQL database on the server `--console-database` names,
dropped afterwards): 100,000 keys in bulk inserts, then the usage records in 50,000-row batches through the
store's own batch insert (one multi-row statement each, so the rollups are kept exactly as in production), traffic
skewed as real traffic is (most from a few keys, 40% streamed with a time to first token). Then it starts the
mock provider and `odock serve` on that database (pinned to one core, wrk and the mock to the other) and:

1. drives the gateway alone with wrk for `--console-traffic-s` (the reference figure);
2. times every page's API calls over HTTP (one after another, as the page's script makes them), once on the idle
   gateway and then in rounds for as long as a second wrk run lasts: p50 / p95 / max per page;
3. loads the pages in Debian's Chromium (Playwright) during a third wrk run: the time from the route change to
   the page drawn, as the console measures it (`#view[data-render-ms]`).

The wrk figures of runs 2 and 3 against run 1 say what the console costs the traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from odock.admin.governance import admin_for
from odock.settings import Settings
from odock.state import schema
from odock.state.crypto import generate_key_text
from odock.state.records import UsageRecord
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore

TOKEN = "bench-console-" + secrets.token_hex(8)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "gemini-flash", "llama-8b", "rare-model")
MODEL_WEIGHTS = (30, 30, 15, 10, 10, 4.9, 0.1)
PAGE_BUDGET_MS = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --console options (added to the benchmark's parser)."""
    p.add_argument(
        "--console", action="store_true", help="time the web console's pages on 1M records / 100k keys"
    )
    p.add_argument(
        "--console-database",
        default="sqlite",
        help="'sqlite' (a temp file) or a postgresql://… server URL (a fresh database is created there)",
    )
    p.add_argument("--console-records", type=int, default=1_000_000, help="usage records to seed")
    p.add_argument("--console-keys", type=int, default=100_000, help="API keys to seed")
    p.add_argument("--console-repeat", type=int, default=5, help="timed loads of each page (at least)")
    p.add_argument(
        "--console-traffic-s", type=float, default=30.0, help="seconds of each wrk run driving the gateway"
    )
    p.add_argument(
        "--console-think-s",
        type=float,
        default=0.5,
        help="pause between two page loads under traffic (0: back to back, the admin side as load)",
    )
    p.add_argument("--console-own-port", action="store_true", help="time the console on ODOCK_CONSOLE_PORT")
    p.add_argument("--console-no-browser", action="store_true", help="skip the Chromium timings")


@asynccontextmanager
async def _database(target: str) -> AsyncIterator[tuple[str, Settings]]:
    if target == "sqlite":
        with tempfile.TemporaryDirectory(prefix="odock-console-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'odock.db'}", Settings()
        return
    import asyncpg

    server = target.rsplit("/", 1)[0] + "/postgres" if target.count("/") > 2 else target
    name = f"odock_console_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name, Settings(secret_key=generate_key_text())
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _seed_catalogue(store: SqlStore, keys: int) -> dict[str, Any]:
    service = CatalogueService(store)
    orgs = []
    for name in ("acme", "globex", "initech"):
        org = await service.create_organisation({"name": name})
        orgs.append(org.id)
        await service.create_provider(
            {"organisation": name, "name": "openai", "type": "openai", "base_url": "http://mock.invalid/v1"}
        )
        for model in MODELS:
            await service.create_model(
                {"organisation": name, "name": model, "provider": "openai", "slug": model, "type": "chat"}
            )
    teams = [(await service.create_team({"organisation": "acme", "name": f"team-{i}"})).id for i in range(20)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"key_{i:07d}_{secrets.token_hex(4)}",
            "name": f"key-{i:07d}",
            "key_hash": secrets.token_hex(32),
            "key_preview": "sk-odock-…",
            "type": "ORGANISATION",
            "organisation_id": orgs[i % 3],
            "team_id": None,
            "user_id": None,
            "expires_at": None,
            "revoked": False,
            "revealed": True,
            "timezone": "UTC",
            "policies": {},
            "rotation_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(keys)
    ]
    async with store.write() as conn:
        for start in range(0, len(rows), 10_000):
            await conn.execute(sa.insert(schema.api_keys), rows[start : start + 10_000])
    governance = admin_for(store)
    budget = await governance.create_budget(
        {"name": "acme-monthly", "organisation": "acme", "period": "MONTHLY", "amount_usd": "5000"}
    )
    await governance.create_quota(
        {
            "name": "acme-requests",
            "organisation": "acme",
            "period": "DAILY",
            "metric": "REQUESTS",
            "limit": 10**6,
        }
    )
    return {"orgs": orgs, "teams": teams, "keys": [r["id"] for r in rows], "budget": budget.id}


def _records(
    count: int, seeded: dict[str, Any], rng: random.Random, span: tuple[datetime, datetime] | None = None
) -> list[UsageRecord]:
    """`count` records at times spread over `span` (default: the last 30 days), oldest first as a ledger is."""
    keys, orgs, teams = seeded["keys"], seeded["orgs"], seeded["teams"]
    now = datetime.now(UTC)
    first, last = span or (now - timedelta(days=30), now)
    seconds = (last - first).total_seconds()
    times = sorted(first + timedelta(seconds=rng.random() * seconds) for _ in range(count))
    out = []
    for created_at in times:
        # 80% of the traffic from 1,000 keys, the rest spread over every key
        key_pos = rng.randrange(1000) if rng.random() < 0.8 else rng.randrange(len(keys))
        failed = rng.random() < 0.02
        streamed = rng.random() < 0.4
        out.append(
            UsageRecord(
                request_id=uuid.uuid4().hex,
                created_at=created_at,
                organisation_id=orgs[key_pos % 3],
                team_id=teams[key_pos % 20] if key_pos % 3 == 0 else None,
                api_key_id=keys[key_pos],
                route="/v1/chat/completions",
                status=502 if failed else 200,
                outcome="failed" if failed else "success",
                model=rng.choices(MODELS, MODEL_WEIGHTS)[0],
                provider="openai",
                input_tokens=rng.randrange(10, 4000),
                output_tokens=rng.randrange(1, 1000),
                latency_ms=int(rng.lognormvariate(6, 0.8)),
                cost_nanos=rng.randrange(1000, 10**7),
                routing={"attempts": [{"provider": "openai", "status": 200}]},
                metadata={"ttft_ms": int(rng.lognormvariate(5, 0.7))} if streamed else None,
            )
        )
    return out


async def _seed_usage(store: SqlStore, count: int, seeded: dict[str, Any]) -> float:
    """Bulk load: 50,000 records a batch through the store's own batch insert (one multi-row statement for the
    ledger and one upsert per rollup table a batch: the rollups end exactly as the gateway's writer keeps them)."""
    rng = random.Random(1)
    started = time.perf_counter()
    chunk = 50_000
    now = datetime.now(UTC)
    step = timedelta(days=30) * chunk / count
    for start in range(0, count, chunk):
        # written in time order, as the gateway writes its ledger
        first = now - timedelta(days=30) + step * (start // chunk)
        await store.insert_usage(
            _records(min(chunk, count - start), seeded, rng, (first, min(first + step, now)))
        )
        done = min(start + chunk, count)
        if done % 200_000 == 0 or done == count:
            print(f"  {done:,} records ({done / (time.perf_counter() - started):,.0f}/s)", flush=True)
    return time.perf_counter() - started


def _pages(seeded: dict[str, Any], cursors: dict[str, str]) -> dict[str, list[str]]:
    """Each page as the API calls its script makes (admin API calls through the session proxy)."""
    key = seeded["keys"][0]
    a = "/console/api/admin/"
    return {
        "overview 24h": ["/console/api/overview?hours=24"],
        "overview 30d": ["/console/api/overview?hours=720"],
        "usage by model": ["/console/api/usage?group_by=model"],
        "usage by key": ["/console/api/usage?group_by=key"],
        "usage by key, page 2": ["/console/api/usage?group_by=key&after=" + cursors["usage_key"]],
        "usage by team": ["/console/api/usage?group_by=team"],
        "usage by org": ["/console/api/usage?group_by=organisation"],
        "usage by day, one key": ["/console/api/usage?group_by=day&key=" + key],
        "keys": ["/console/api/keys", a + "organisations"],
        "keys, deep page": ["/console/api/keys?after=" + cursors["keys_deep"], a + "organisations"],
        "keys, name search": ["/console/api/keys?q=key-00999", a + "organisations"],
        "key detail": [a + "keys/" + key, a + f"keys/{key}/grants"],
        "providers & models": [a + "providers", a + "models"],
        "budgets": [a + "budgets"],
        "budget detail (burn-down)": [
            f"/console/api/budgets/{seeded['budget']}/burn",
            a + f"budget-events?budget_id={seeded['budget']}&limit=50",
        ],
        "quotas": [a + "quotas"],
        "routing": [a + "organisations"],
        "requests": ["/console/api/records"],
        "requests, page 2": ["/console/api/records?before=" + cursors["records"]],
        "requests by key": ["/console/api/records?key=" + key],
        "requests by org": ["/console/api/records?organisation=" + seeded["orgs"][1]],
        "requests failed": ["/console/api/records?outcome=failed"],
        "requests, rare model (0.1%)": ["/console/api/records?model=rare-model"],
        "request detail": ["/console/api/records/" + cursors["record_id"]],
        "live tail poll": ["/console/api/records?limit=100&after=" + cursors["tail"]],
    }


# the browser's pages: the hash route, and what marks the page as drawn (the console sets #view's data-rendered)
BROWSER_PAGES = {
    "overview 24h": "overview?hours=24",
    "overview 30d": "overview?hours=720",
    "usage by model": "usage?group_by=model",
    "usage by key": "usage?group_by=key",
    "keys": "keys",
    "providers & models": "models",
    "budgets": "budgets",
    "quotas": "quotas",
    "routing": "routing",
    "requests": "requests",
    "requests failed": "requests?outcome=failed",
    "live tail": "tail",
    "API reference": "api",
}


async def _time_pages(
    client: httpx.AsyncClient,
    pages: dict[str, list[str]],
    rounds: int,
    busy: Callable[[], bool] | None = None,
    think_s: float = 0.0,
) -> dict[str, Any]:
    """Load every page in turn (its calls one after another, as its script makes them): one warm-up round, then at
    least `rounds` rounds, and more while `busy()` (the traffic still runs), `think_s` between two pages (an
    operator reading, not a loop hammering the admin side). Per page: p50, p95, max."""
    samples: dict[str, list[float]] = {name: [] for name in pages}
    done = -1
    while done < rounds or (busy is not None and busy()):
        for name, calls in pages.items():
            started = time.perf_counter()
            for call in calls:
                response = await client.get(call)
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {call} answered {response.status_code}: {response.text[:200]}")
            if done >= 0:  # the first round warms the caches
                samples[name].append((time.perf_counter() - started) * 1000)
            if think_s:
                await asyncio.sleep(think_s)
        done += 1
    return {name: {**_stats(values), "calls": len(pages[name])} for name, values in samples.items()}


def _stats(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max_ms": ordered[-1],
    }


async def _time_browser(
    base: str, rounds: int, busy: Callable[[], bool], think_s: float
) -> dict[str, Any] | None:
    """Each page drawn in Debian's Chromium (Playwright, never its own browser download): from the route change
    to the page drawn, as the console measures it itself (#view's data-render-ms); None without a browser."""
    chromium = os.environ.get("ODOCK_CHROMIUM", "/usr/bin/chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        print("! no playwright: the browser timings are skipped", flush=True)
        return None
    if not (Path(chromium).exists() or shutil.which(chromium)):
        print(f"! no Chromium at {chromium}: the browser timings are skipped", flush=True)
        return None
    samples: dict[str, list[float]] = {name: [] for name in BROWSER_PAGES}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{base}/console")
            await page.fill("#token", TOKEN)
            await page.click("#login button")
            await page.wait_for_selector("#view[data-rendered]")
            done, n = -1, 0
            while done < rounds or busy():
                for name, route in BROWSER_PAGES.items():
                    n += 1
                    rendered = int(await page.get_attribute("#view", "data-rendered") or 0)
                    # a fresh hash each time, so that the same page loads again (a hash change, not a reload)
                    glue = "&" if "?" in route else "?"
                    await page.evaluate(f"location.hash = {json.dumps('#/' + route + glue + f'n={n}')}")
                    # a selector, not a predicate: the console's CSP refuses Playwright's eval of one
                    await page.wait_for_selector(f"#view[data-rendered='{rendered + 1}']", timeout=30_000)
                    if await page.locator("#view > p.error").count():
                        raise SystemExit(f"browser page {name}: {await page.locator('#view').inner_text()}")
                    if done >= 0:
                        samples[name].append(float(await page.get_attribute("#view", "data-render-ms") or 0))
                    await asyncio.sleep(think_s)
                done += 1
        finally:
            await browser.close()
    return {name: _stats(values) for name, values in samples.items()}


class _Traffic:
    """wrk driving the gateway's OpenAI chat route (unary, through the mock) on its own thread."""

    def __init__(self, workdir: Path, port: int, key: str, seconds: float, cpu: int | None) -> None:
        from bench.scenarios import OPENAI_MODEL, openai_call

        self.workdir, self.port, self.seconds, self.cpu = workdir, port, seconds, cpu
        self.call = openai_call(key, OPENAI_MODEL, False)
        self.thread: asyncio.Future[Any] | None = None

    def run(self) -> Any:
        from bench.wrk import run_wrk

        c = self.call
        return run_wrk(
            self.workdir,
            self.port,
            c.path,
            c.body,
            c.headers,
            connections=32,
            duration_s=self.seconds,
            cpu=self.cpu,
        )

    def start(self) -> None:
        self.thread = asyncio.ensure_future(asyncio.to_thread(self.run))

    def busy(self) -> bool:
        return self.thread is not None and not self.thread.done()

    async def result(self) -> Any:
        assert self.thread is not None
        return await self.thread


def _serve(
    workdir: Path, url: str, settings: Settings, mock_port: int, own_port: bool
) -> tuple[Any, Any, str]:
    """Start the mock and `odock serve` on the seeded database (the bench catalogue applied on top)."""
    from bench.procs import Supervisor, cores, free_port
    from bench.scenarios import CATALOGUES, KEY_ENV, UPSTREAM_KEY_ENV, CatalogueSpec

    os.environ.setdefault(KEY_ENV, "odk-bench-" + secrets.token_hex(16))
    os.environ.setdefault(UPSTREAM_KEY_ENV, "sk-bench-upstream")
    avail = cores()
    sut_cpu, load_cpu = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    sup = Supervisor(workdir)
    argv = [sys.executable, "-m", "odock"]
    mock = sup.start("mock", [*argv, "mock-upstream", "--host", "127.0.0.1", "--port", str(mock_port)], mock_port,
                     cpu=load_cpu, cwd=workdir)  # fmt: skip
    mock.wait_ready("/_mock/health", timeout=60)
    cfg = workdir / "catalogue.yaml"
    cfg.write_text(
        yaml.safe_dump(CATALOGUES["base"](CatalogueSpec(f"http://127.0.0.1:{mock_port}")), sort_keys=False)
    )
    port, console_port = free_port(), free_port()
    env = {
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "ODOCK_DATABASE_URL": url,
        "ODOCK_ADMIN_TOKEN": TOKEN,
        "ODOCK_LOG_LEVEL": "warning",
        "ODOCK_REQUEST_LOG": "off",
        "ODOCK_CONSOLE_PORT": str(console_port) if own_port else "0",
    }
    if url.startswith("postgresql"):
        # as a PostgreSQL deployment runs: cluster mode, counters in Redis
        env["ODOCK_SECRET_KEY"] = settings.secret_key
        env["ODOCK_REDIS_URL"] = os.environ.get("ODOCK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    gateway = sup.start(
        "odock", [*argv, "serve", "--config", str(cfg)], port, env=env, cpu=sut_cpu, cwd=workdir
    )
    gateway.wait_ready("/v1/health", timeout=120)
    base = f"http://127.0.0.1:{console_port if own_port else port}"
    return sup, (gateway, load_cpu, os.environ[KEY_ENV]), base


async def run(args: argparse.Namespace) -> int:
    """Seed, serve, time every page with and without traffic, print tables; exit 1 when a page's p95 is over 300 ms
    under traffic."""
    from bench.procs import free_port

    workdir = Path(tempfile.mkdtemp(prefix="odock-console-bench-"))
    async with _database(args.console_database) as (url, settings):
        store = await SqlStore.open(url, settings)
        try:
            dialect = store.dialect
            t0 = time.perf_counter()
            seeded = await _seed_catalogue(store, args.console_keys)
            keys_s = time.perf_counter() - t0
            usage_s = await _seed_usage(store, args.console_records, seeded)
        finally:
            await store.close()
        print(
            f"seeded {args.console_keys:,} keys in {keys_s:.1f} s and {args.console_records:,} usage records "
            f"(with rollups) in {usage_s:.1f} s ({args.console_records / usage_s:,.0f} records/s) on {dialect}",
            flush=True,
        )
        sup, (gateway, load_cpu, key), base = _serve(
            workdir, url, settings, free_port(), args.console_own_port
        )
        try:
            results = await _measure(args, workdir, seeded, gateway, load_cpu, key, base)
        finally:
            sup.close()
    _print(results, dialect, args)
    over = [name for name, r in results["http_traffic"].items() if r["p95_ms"] > PAGE_BUDGET_MS]
    if over:
        print(f"\nover {PAGE_BUDGET_MS:.0f} ms (p95 under traffic): {', '.join(over)}")
        return 1
    return 0


async def _measure(
    args: argparse.Namespace, workdir: Path, seeded: dict[str, Any], gateway: Any, load_cpu: int | None, key: str,
    base: str,
) -> dict[str, Any]:  # fmt: skip
    seconds = args.console_traffic_s
    results: dict[str, Any] = {}
    print(f"traffic alone: wrk, 32 connections, {seconds:.0f} s", flush=True)
    alone = _Traffic(workdir, gateway.port, key, seconds, load_cpu)
    alone.start()
    results["traffic_alone"] = (await alone.result()).as_dict()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        (await client.post("/console/login", json={"token": TOKEN})).raise_for_status()
        first = (await client.get("/console/api/records")).json()
        keys_mid = (
            await client.get(f"/console/api/keys?limit=500&q=key-0{args.console_keys // 20000}")
        ).json()
        usage_key = (await client.get("/console/api/usage?group_by=key")).json()
        cursors = {
            "records": first["next"],
            "tail": first["tail"],
            "record_id": first["data"][0]["id"],
            "keys_deep": keys_mid["next"] or "",
            "usage_key": usage_key["next"] or "",
        }
        pages = _pages(seeded, cursors)
        print("pages, idle gateway", flush=True)
        results["http_idle"] = await _time_pages(client, pages, args.console_repeat)
        print("pages, under traffic", flush=True)
        traffic = _Traffic(workdir, gateway.port, key, seconds, load_cpu)
        traffic.start()
        results["http_traffic"] = await _time_pages(
            client, pages, args.console_repeat, traffic.busy, args.console_think_s
        )
        results["traffic_with_console"] = (await traffic.result()).as_dict()
    if not args.console_no_browser:
        print("pages in Chromium, under traffic", flush=True)
        traffic = _Traffic(workdir, gateway.port, key, seconds, load_cpu)
        traffic.start()
        try:
            results["browser_traffic"] = await _time_browser(
                base, args.console_repeat, traffic.busy, args.console_think_s
            )
        except Exception as exc:  # the HTTP figures are still worth printing
            print(f"! the browser timings failed: {exc}", flush=True)
        results["traffic_with_browser"] = (await traffic.result()).as_dict()
    return results


def _print(results: dict[str, Any], dialect: str, args: argparse.Namespace) -> None:
    idle, busy, browser = results["http_idle"], results["http_traffic"], results.get("browser_traffic") or {}
    print(
        f"\n| page ({dialect}, {args.console_records:,} records, {args.console_keys:,} keys) | calls | idle p50 | "
        "under traffic p50 / p95 / max (n) | Chromium under traffic p50 / p95 / max |\n|---|---:|---:|---:|---:|"
    )
    for name, r in busy.items():
        flag = " ⚠" if r["p95_ms"] > PAGE_BUDGET_MS else ""
        print(
            f"| {name} | {r['calls']} | {idle[name]['p50_ms']:.1f} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f}{flag} / "
            f"{r['max_ms']:.1f} ({r['n']}) | |"
        )
    for name, r in browser.items():
        print(
            f"| {name} (browser) | | | | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['max_ms']:.1f} ({r['n']}) |"
        )
    print("\n| gateway traffic (wrk, 32 conns, unary chat via the mock) | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for label, name in (
        ("alone", "traffic_alone"),
        ("while the console's API is timed", "traffic_with_console"),
        ("while Chromium loads the pages", "traffic_with_browser"),
    ):
        t = results.get(name)
        if t:
            print(
                f"| {label} | {t['rps']:,.0f} | {t['p50_us'] / 1000:.2f} | {t['p99_us'] / 1000:.2f} | {t['errors']} |"
            )
    out = Path(tempfile.gettempdir()) / f"odock-console-bench-{dialect}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\n(all figures in {out})")


def main(args: argparse.Namespace) -> int:
    """Run the console benchmark."""
    return asyncio.run(run(args))
