"""`python -m bench --console`: every console page timed against 1,000,000 usage records and 100,000 keys.

Seeds a fresh database (SQLite file, or a new PostgreSQL database on the server `--console-database` names,
dropped afterwards): 100,000 keys in bulk, then the usage records through the store's own batch insert (so the
rollups are kept exactly as in production), traffic skewed as real traffic is (most from a few keys). Then it
logs in to the console in process (ASGI, no network) and times each page as the browser loads it: the API calls
its script makes, one after another. Figures: median and worst of `--console-repeat` loads after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from odock.admin.app import create_admin_app
from odock.admin.governance import admin_for, admin_routes
from odock.console.app import ConsoleApp, with_console
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
    p.add_argument("--console-repeat", type=int, default=5, help="timed loads of each page")


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
            )
        )
    return out


async def _seed_usage(store: SqlStore, count: int, seeded: dict[str, Any]) -> float:
    rng = random.Random(1)
    started = time.perf_counter()
    chunk = 50_000
    now = datetime.now(UTC)
    step = timedelta(days=30) * chunk / count
    for start in range(0, count, chunk):
        # written in time order, as the gateway writes its ledger
        first = now - timedelta(days=30) + step * (start // chunk)
        records = _records(min(chunk, count - start), seeded, rng, (first, min(first + step, now)))
        for offset in range(0, len(records), 5000):
            await store.insert_usage(records[offset : offset + 5000])
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


async def _time_pages(client: httpx.AsyncClient, pages: dict[str, list[str]], repeat: int) -> dict[str, Any]:
    results = {}
    for name, calls in pages.items():
        samples = []
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            for call in calls:
                response = await client.get(call)
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {call} answered {response.status_code}: {response.text[:200]}")
            if attempt:  # the first load warms the caches
                samples.append((time.perf_counter() - started) * 1000)
        results[name] = {
            "median_ms": statistics.median(samples),
            "max_ms": max(samples),
            "queries": len(calls),
        }
    return results


async def run(args: argparse.Namespace) -> int:
    """Seed, time every page, print a table; exit status 1 when a page's median is over the budget."""
    async with _database(args.console_database) as (url, settings):
        store = await SqlStore.open(url, settings)
        try:
            t0 = time.perf_counter()
            seeded = await _seed_catalogue(store, args.console_keys)
            keys_s = time.perf_counter() - t0
            usage_s = await _seed_usage(store, args.console_records, seeded)
            print(
                f"seeded {args.console_keys:,} keys in {keys_s:.1f} s and {args.console_records:,} usage records "
                f"(with rollups) in {usage_s:.1f} s ({args.console_records / usage_s:,.0f} records/s) on {store.dialect}"
            )
            governance = admin_for(store)
            admin = create_admin_app(CatalogueService(store), TOKEN, admin_routes(governance))
            app = with_console(admin, ConsoleApp(store, governance, admin, TOKEN))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console.bench") as client:
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
                results = await _time_pages(client, _pages(seeded, cursors), args.console_repeat)
        finally:
            await store.close()
    print(f"\n| page ({store.dialect}) | calls | median ms | worst ms |\n|---|---:|---:|---:|")
    over = []
    for name, r in results.items():
        flag = " ⚠" if r["median_ms"] > PAGE_BUDGET_MS else ""
        print(f"| {name} | {r['queries']} | {r['median_ms']:.1f}{flag} | {r['max_ms']:.1f} |")
        if r["median_ms"] > PAGE_BUDGET_MS:
            over.append(name)
    if over:
        print(f"\nover {PAGE_BUDGET_MS:.0f} ms: {', '.join(over)}")
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the console benchmark."""
    return asyncio.run(run(args))
