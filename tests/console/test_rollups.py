"""The usage rollups the console's charts read: kept exactly by the ledger writer (on SQLite and PostgreSQL),
never double counted by a retried batch, backfilled by the migration; and the console's keyset pages."""

from __future__ import annotations

import bisect
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from odock.console import data
from odock.state import schema
from odock.state.records import UsageRecord
from odock.state.rollups import (
    HISTOGRAMS,
    LATENCY_COLUMNS,
    SUMS,
    TTFT_BOUNDS_MS,
    TTFT_COLUMNS,
    latency_bucket,
    percentile_ms,
)
from odock.state.service import CatalogueService
from odock.state.sql import MIGRATIONS_DIR, SqlStore

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


def _records(count: int, seed: int = 7) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        out.append(
            UsageRecord(
                request_id=f"req-{seed}-{i}",
                created_at=NOW - timedelta(hours=rng.randrange(0, 60), minutes=rng.randrange(0, 59)),
                organisation_id=rng.choice(["org-a", "org-b"]),
                team_id=rng.choice([None, "team-1"]),
                user_id=rng.choice([None, None, "user-9"]),
                api_key_id=f"key-{rng.randrange(0, 7)}",
                route="/v1/chat/completions",
                status=200 if i % 5 else 502,
                outcome="success" if i % 5 else "failed",
                model=rng.choice(["gpt", "claude", None]),
                provider=rng.choice(["openai", "anthropic", None]),
                input_tokens=rng.randrange(0, 1000),
                output_tokens=rng.randrange(0, 500),
                cached_input_tokens=rng.randrange(0, 50),
                reasoning_tokens=rng.randrange(0, 20),
                latency_ms=rng.choice([10, 60, 150, 999, 1000, 4000, 70000]),
                cost_nanos=rng.choice([None, rng.randrange(0, 10**7)]),
                # streamed calls have a time to first token; others none (or other metadata only)
                metadata=rng.choice(
                    [None, {"cache_hit": True}, {"ttft_ms": rng.choice([3, 25, 26, 180, 900, 40000])}]
                ),
            )
        )
    return out


def _expected(
    records: list[UsageRecord],
) -> tuple[dict[tuple[str, ...], list[int]], dict[tuple[str, ...], list[int]]]:
    hourly: dict[tuple[str, ...], list[int]] = {}
    daily: dict[tuple[str, ...], list[int]] = {}
    for r in records:
        sums = [1, int(r.outcome != "success"), r.input_tokens, r.output_tokens, r.cached_input_tokens]
        ttft = (r.metadata or {}).get("ttft_ms")
        sums += [r.reasoning_tokens, r.cost_nanos or 0, r.latency_ms, int(ttft is not None), ttft or 0]
        hist = [0] * len(HISTOGRAMS)
        hist[latency_bucket(r.latency_ms)] = 1
        if ttft is not None:
            hist[len(LATENCY_COLUMNS) + bisect.bisect_left(TTFT_BOUNDS_MS, ttft)] = 1
        hk = (r.created_at.strftime("%Y-%m-%dT%H"), r.organisation_id)
        hourly[hk] = [
            a + b for a, b in zip(hourly.get(hk, [0] * (len(sums) + len(hist))), sums + hist, strict=True)
        ]
        for dimension, value in (
            ("organisation", r.organisation_id),
            ("team", r.team_id),
            ("user", r.user_id),
            ("key", r.api_key_id),
            ("model", r.model),
        ):
            if value:
                dk = (dimension, value, r.created_at.strftime("%Y-%m-%d"), r.organisation_id)
                daily[dk] = [a + b for a, b in zip(daily.get(dk, [0] * len(sums)), sums, strict=True)]
    return hourly, daily


async def _stored(
    store: SqlStore,
) -> tuple[dict[tuple[str, ...], list[int]], dict[tuple[str, ...], list[int]]]:
    h, d = schema.usage_rollup_hourly, schema.usage_rollup_daily
    async with store.read() as conn:
        hourly = {
            tuple(row[:2]): [int(v) for v in row[2:]]
            for row in await conn.execute(
                sa.select(
                    *[h.c[c] for c in ("bucket", "organisation_id")],
                    *[h.c[c] for c in SUMS + HISTOGRAMS],
                )
            )
        }
        daily = {
            tuple(row[:4]): [int(v) for v in row[4:]]
            for row in await conn.execute(
                sa.select(
                    *[d.c[c] for c in ("dimension", "value", "day", "organisation_id")],
                    *[d.c[c] for c in SUMS],
                )
            )
        }
    return hourly, daily


async def test_writer_keeps_rollups_exact_and_a_retried_batch_counts_once(store: SqlStore) -> None:
    records = _records(400)
    await store.insert_usage(records[:150])
    await store.insert_usage(records[100:])  # overlaps: 50 rows already stored (a retried batch)
    await store.insert_usage(records[390:])
    assert await _stored(store) == _expected(records)


async def test_migration_backfills_rollups_from_the_existing_ledger(store: SqlStore) -> None:
    records = _records(300, seed=11)
    await store.insert_usage(records)
    expected = await _stored(store)

    def migrate(connection: Any, target: str, up: bool) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        (command.upgrade if up else command.downgrade)(config, target)

    # from before the rollups, and from rollups without time to first token (0008's own backfill)
    for base in ("0006_mcp_servers", "0007_usage_rollups"):
        async with store.write() as conn:
            await conn.run_sync(migrate, base, False)
        async with store.write() as conn:
            await conn.run_sync(migrate, "head", True)
        assert await _stored(store) == expected


async def test_overview_and_explorer_read_the_rollups(store: SqlStore) -> None:
    records = _records(300, seed=3)
    await store.insert_usage(records)
    view = await data.overview(store, "24", None)
    # the hours the overview covers (from its own start, so that an hour turning during the test cannot matter)
    recent = [r for r in records if r.created_at.strftime("%Y-%m-%dT%H") >= view["since"]]
    assert view["totals"]["requests"] == len(recent)
    assert view["totals"]["cost_nanos"] == sum(r.cost_nanos or 0 for r in recent)
    assert sum(p["errors"] for p in view["series"]) == sum(r.outcome != "success" for r in recent)
    assert view["totals"]["p50_ms"] is not None and view["totals"]["p95_ms"] >= view["totals"]["p50_ms"]
    assert view["totals"]["ttft_count"] == sum(bool(r.metadata and "ttft_ms" in r.metadata) for r in recent)
    ttft_hist = [0] * len(TTFT_COLUMNS)
    for r in recent:
        if r.metadata and "ttft_ms" in r.metadata:
            ttft_hist[bisect.bisect_left(TTFT_BOUNDS_MS, r.metadata["ttft_ms"])] += 1
    assert view["totals"]["ttft_p50_ms"] == percentile_ms(ttft_hist, 0.5, TTFT_BOUNDS_MS)
    assert view["totals"]["ttft_p95_ms"] == percentile_ms(ttft_hist, 0.95, TTFT_BOUNDS_MS)
    assert all(
        p["ttft_p50_ms"] is None or p["ttft_p95_ms"] >= p["ttft_p50_ms"] for p in view["series"]
    ) and any(p["ttft_p50_ms"] for p in view["series"])
    org_a = await data.overview(store, "24", "org-a")
    assert org_a["totals"]["requests"] == sum(r.organisation_id == "org-a" for r in recent)

    # by key, two groups a page: the pages cover every key once, with the right totals
    since = (NOW - timedelta(days=5)).strftime("%Y-%m-%d")
    seen: dict[str, int] = {}
    after = ""
    while True:
        page = await data.explorer(store, {"group_by": "key", "since": since, "limit": "2", "after": after})
        seen.update({row["group"]: row["requests"] for row in page["data"]})
        if not page["next"]:
            break
        after = page["next"]
    by_key: dict[str, int] = {}
    for r in records:
        by_key[r.api_key_id] = by_key.get(r.api_key_id, 0) + 1
    assert seen == by_key
    assert sum(p["requests"] for p in page["series"]) == len(records)
    for group, attribute in (("model", "model"), ("team", "team_id"), ("organisation", "organisation_id")):
        totals = (await data.explorer(store, {"group_by": group, "since": since}))["data"]
        expected: dict[str, int] = {}
        for r in records:
            if getattr(r, attribute):
                expected[getattr(r, attribute)] = expected.get(getattr(r, attribute), 0) + (r.cost_nanos or 0)
        assert {row["group"]: row["cost_nanos"] for row in totals} == expected
    one_key = await data.explorer(store, {"group_by": "day", "key": "key-3", "since": since})
    assert sum(row["requests"] for row in one_key["data"]) == sum(r.api_key_id == "key-3" for r in records)
    in_org = await data.explorer(store, {"group_by": "key", "organisation": "org-b", "since": since})
    assert sum(row["requests"] for row in in_org["data"]) == sum(
        r.organisation_id == "org-b" for r in records
    )
    assert sum(p["requests"] for p in in_org["series"]) == sum(r.organisation_id == "org-b" for r in records)
    csv = "".join([chunk async for chunk in data.explorer_csv(store, {"group_by": "model", "since": since})])
    lines = csv.strip().splitlines()
    assert lines[0].startswith("group,name,requests,errors")
    assert sum(int(line.split(",")[2]) for line in lines[1:]) == sum(r.model is not None for r in records)


def test_percentiles_from_the_histogram() -> None:
    hist = [0] * len(LATENCY_COLUMNS)
    hist[latency_bucket(40)] = 50  # ≤ 50 ms
    hist[latency_bucket(900)] = 50  # 750–1000 ms
    assert percentile_ms(hist, 0.5) == 50
    assert 750 < (percentile_ms(hist, 0.95) or 0) <= 1000
    assert percentile_ms([0] * len(LATENCY_COLUMNS), 0.5) is None
    ttft = [0] * len(TTFT_COLUMNS)
    ttft[bisect.bisect_left(TTFT_BOUNDS_MS, 120)] = 10  # 100–150 ms
    assert 100 < (percentile_ms(ttft, 0.5, TTFT_BOUNDS_MS) or 0) <= 150


async def test_request_log_pages_newest_first_without_gaps_or_repeats(store: SqlStore) -> None:
    records = _records(130, seed=5)
    for r in records[:40]:
        r.created_at = NOW  # many records in one instant: the id breaks the tie
    await store.insert_usage(records)
    ids: list[str] = []
    before = ""
    while True:
        page = await data.records(store, {"limit": "17", "before": before})
        ids += [row["id"] for row in page["data"]]
        if not page["next"]:
            break
        before = page["next"]
    expected = [r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]
    assert ids == expected
    # the live tail: only what came after its cursor, oldest first
    head = await data.records(store, {"limit": "5"})
    newer = _records(3, seed=99)
    for i, r in enumerate(newer):
        r.created_at = NOW + timedelta(seconds=i + 1)
    await store.insert_usage(newer)
    tail = await data.records(store, {"after": head["tail"]})
    assert [row["id"] for row in tail["data"]] == [r.id for r in newer]
    filtered = await data.records(store, {"organisation": "org-a", "outcome": "failed", "limit": "500"})
    assert {(row["organisation_id"], row["outcome"]) for row in filtered["data"]} == {("org-a", "failed")}
    detail = await data.record_detail(store, records[0].id)
    assert detail is not None and detail["input_tokens"] == records[0].input_tokens and "routing" in detail


async def test_keys_pages_cover_every_key_once(service: CatalogueService, store: SqlStore) -> None:
    for org in ("acme", "beta"):
        await service.create_organisation({"name": org})
        for i in range(7):
            await service.create_key({"organisation": org, "name": f"k{i:02d}"})
    names: list[str] = []
    after = ""
    while True:
        page = await data.keys_page(store, {"limit": "3", "after": after})
        names += [row["name"] for row in page["data"]]
        assert all("secret" not in row and "key_hash" not in row for row in page["data"])
        if not page["next"]:
            break
        after = page["next"]
    assert sorted(names) == sorted([f"k{i:02d}" for i in range(7)] * 2)
    prefixed = await data.keys_page(store, {"q": "k0"})
    assert len(prefixed["data"]) == 14


async def test_unindexed_filters_read_a_bounded_stretch_and_carry_on(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "SCAN_ROWS", 25)
    records = _records(130, seed=21)
    for i, r in enumerate(records):
        r.model = "rare" if i % 40 == 0 else "common"
    await store.insert_usage(records)
    found: list[str] = []
    before = ""
    pages = 0
    while True:
        page = await data.records(store, {"model": "rare", "limit": "10", "before": before})
        found += [row["id"] for row in page["data"]]
        pages += 1
        if not page["next"]:
            break
        before = page["next"]
    expected = [
        r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True) if r.model == "rare"
    ]
    assert found == expected
    assert pages >= 130 // 25  # each page looked at 25 records at most


async def test_migration_matches_the_schema_the_code_queries(store: SqlStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    mine = ("usage_rollup_hourly", "usage_rollup_daily", "ix_usage_records_failed_created_at")

    def inspect(conn: Any) -> list[object]:
        return compare_metadata(MigrationContext.configure(conn), schema.metadata)

    async with store.engine.connect() as conn:
        diff = await conn.run_sync(inspect)
    assert [d for d in diff if any(name in str(d) for name in mine)] == []


async def test_sqlite_pages_read_in_one_thread_hop_on_a_read_only_connection(store: SqlStore) -> None:
    engine = data._sync_engine(store)
    if store.dialect != "sqlite":
        assert engine is None  # PostgreSQL keeps the async pool
        return
    assert engine is not None and data._sync_engine(store) is engine
    await store.insert_usage(_records(3))
    assert (await data.records(store, {}))["data"]  # read through the thread
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
        conn.execute(sa.text("DELETE FROM usage_records"))
