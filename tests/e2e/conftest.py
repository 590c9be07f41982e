"""End-to-end governance fixtures: live `odock serve` processes (embedded SQLite, or a PostgreSQL + Redis cluster)
in front of the in-thread mock provider, tenants created through the admin API, and journal helpers.

Each tenant gets its own organisation and a model whose upstream slug is unique, so the mock journal shows exactly
which requests of that tenant reached the upstream (a refused request must never appear there).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from odock.mock.testing import MockServer
from tests.conftest import REDIS_HOST, REDIS_PORT, require_service
from tests.harness import GatewayProcess

# a Redis database of its own, flushed around every cluster test (the gateway's keys are not prefixable per test)
# Redis databases of their own, flushed around each test: one pair per xdist worker (gw0 -> 4/5, gw1 -> 6/7, …;
# databases 0-3 are for tests that namespace their keys instead)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
E2E_REDIS_DB = 4 + 2 * (_WORKER % 6)
E2E_SHARED_REDIS_DB = E2E_REDIS_DB + 1  # the module-shared pair's
# USD per million tokens; input 0 makes a call's worst case exactly max_tokens × output rate, so when the mock
# answers exactly max_tokens words the settled cost equals the reservation (deterministic budget arithmetic)
EXACT_PRICING = {"input": 0, "output": 2.0}
NANOS_PER_OUTPUT_TOKEN = 2000  # 2 USD / 1e6 tokens = 2000 nanos USD per token


@dataclass(frozen=True, slots=True)
class Tenant:
    """One organisation with one granted key and one chat model on the mock."""

    org: str
    org_id: str
    key_id: str
    secret: str
    model: str
    slug: str


def unique(prefix: str) -> str:
    """A short unique name for organisations, keys and slugs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def admin(gw: GatewayProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One admin API call; a non-2xx answer fails the test with its body."""
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.admin_headers(), timeout=10) as http:
        resp = await http.request(method, path, **kwargs)
    assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp


async def make_tenant(
    gw: GatewayProcess,
    mock_url: str,
    *,
    org_policies: dict[str, Any] | None = None,
    key_policies: dict[str, Any] | None = None,
    model_policies: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    provider_type: str = "openai",
) -> Tenant:
    """Create organisation, provider (of `provider_type`, on the mock), model and key through the admin API."""
    org, slug = unique("e2e-org"), unique("e2e-slug")
    created_org = await admin(
        gw, "POST", "/admin/organisations", json={"name": org, "policies": org_policies or {}}
    )
    base_url = f"{mock_url}/v1" if provider_type in ("openai", "vllm") else mock_url
    await admin(
        gw,
        "POST",
        "/admin/providers",
        json={
            "organisation": org,
            "name": "mock",
            "type": provider_type,
            "base_url": base_url,
            "api_key": "sk-upstream-test",
        },
    )
    await admin(
        gw,
        "POST",
        "/admin/models",
        json={
            "organisation": org,
            "name": "chat",
            "provider": "mock",
            "slug": slug,
            "type": "chat",
            "pricing": pricing or EXACT_PRICING,
            "policies": model_policies or {},
            "config": model_config or {},
        },
    )
    key = (
        await admin(
            gw,
            "POST",
            "/admin/keys",
            json={
                "organisation": org,
                "name": "app",
                "type": "ORGANISATION",
                "models": ["chat"],
                "policies": key_policies or {},
            },
        )
    ).json()
    return Tenant(
        org=org,
        org_id=created_org.json()["id"],
        key_id=key["id"],
        secret=key["secret"],
        model="chat",
        slug=slug,
    )


def limits(*, rpm: int = 0, tpm: int = 0, concurrency: int = 0, max_tokens: int = 0) -> dict[str, Any]:
    """A §5.1 policy envelope with the given limits (0 = not set)."""
    rl: dict[str, Any] = {}
    if rpm:
        rl["requests"] = {"per_minute": rpm}
    if tpm:
        rl["tokens"] = {"per_minute": tpm}
    if concurrency:
        rl["concurrency"] = {"max": concurrency}
    if max_tokens:
        rl["payload"] = {"max_tokens": max_tokens}
    return {"ratelimit": rl}


def seen(mock: MockServer, tenant: Tenant) -> list[dict[str, Any]]:
    """The mock journal entries of this tenant's model (requests that reached the upstream)."""
    return [e for e in mock.requests if e.get("model") == tenant.slug]


def chat_body(*, max_tokens: int, words: int | None = None, latency_ms: int = 0, pad: int = 0) -> bytes:
    """A fixed chat body (its size sets the gateway's input estimate: len // 4) with mock directives."""
    directives = []
    if words is not None:
        directives.append(f"words={words}")
    if latency_ms:
        directives.append(f"latency_ms={latency_ms}")
    marker = f"[[mock {' '.join(directives)}]] " if directives else ""
    text = marker + "hi" + "." * pad
    return b'{"model":"chat","max_tokens":%d,"messages":[{"role":"user","content":"%s"}]}' % (
        max_tokens,
        text.encode(),
    )


async def post_chat(
    http: httpx.AsyncClient, gw: GatewayProcess, tenant: Tenant, body: bytes, request_id: str | None = None
) -> httpx.Response:
    """POST a raw chat body to one gateway's /v1/chat/completions."""
    headers = {"Authorization": f"Bearer {tenant.secret}", "Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = request_id
    return await http.post(gw.base_url + "/v1/chat/completions", content=body, headers=headers)


async def eventually(probe: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Await `probe()` until it returns a truthy value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory, mock: MockServer) -> Iterator[GatewayProcess]:
    """One live embedded gateway (SQLite, in-process limits) shared by the e2e tests; tenants isolate them."""
    gw = GatewayProcess(tmp_path_factory.mktemp("e2e-embedded"))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture()
async def e2e_redis(redis_url: str) -> AsyncIterator[str]:
    """A Redis database of the e2e tests only, empty before and after each test."""
    base = redis_url.rsplit("/", 1)[0]
    url = f"{base}/{E2E_REDIS_DB}"
    client = aioredis.from_url(url)
    try:
        await client.flushdb()
        yield url
        await client.flushdb()
    finally:
        await client.aclose()


ClusterFactory = Callable[..., GatewayProcess]


def _flush_redis(url: str) -> None:
    async def flush() -> None:
        client = aioredis.from_url(url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    asyncio.run(flush())


def _pg_admin(server_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def shared_pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str, mock: MockServer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two live processes (A, B) on one fresh PostgreSQL database and one flushed Redis database, shared by a
    module's tests (each test brings its own tenant); starting a pair costs ~4 s on this machine."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{E2E_SHARED_REDIS_DB}"
    name = f"odock_e2e_{uuid.uuid4().hex[:12]}"
    database_url = postgres_server_url.rsplit("/", 1)[0] + f"/{name}"
    _pg_admin(postgres_server_url, f'CREATE DATABASE "{name}"')
    _flush_redis(redis_url)
    secret_key = base64.b64encode(os.urandom(32)).decode()
    root = tmp_path_factory.mktemp("e2e-pair")
    procs = []
    try:
        for index in range(2):
            workdir = root / f"gw{index}"
            workdir.mkdir()
            proc = GatewayProcess(
                workdir, database_url=database_url, redis_url=redis_url, secret_key=secret_key
            )
            procs.append(proc)
            proc.start()  # one after the other: the first runs the migrations
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            proc.stop()
        _flush_redis(redis_url)
        _pg_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def cluster(tmp_path: Path, postgres_url: str, e2e_redis: str) -> Iterator[ClusterFactory]:
    """Build gateway processes on one fresh PostgreSQL database and one Redis, sharing ODOCK_SECRET_KEY."""
    secret_key = base64.b64encode(os.urandom(32)).decode()
    procs: list[GatewayProcess] = []

    def build(env: dict[str, str] | None = None, redis_url: str | None = None) -> GatewayProcess:
        workdir = tmp_path / f"gw{len(procs)}"
        workdir.mkdir()
        proc = GatewayProcess(
            workdir,
            database_url=postgres_url,
            redis_url=redis_url or e2e_redis,
            secret_key=secret_key,
            env=env,
        )
        procs.append(proc)
        return proc

    try:
        yield build
    finally:
        for proc in procs:
            proc.stop()


async def org_usage_rows(gw: GatewayProcess, org_id: str) -> list[dict[str, Any]]:
    """Every stored usage record of one organisation (read straight from the gateway's database)."""
    import sqlalchemy as sa

    from odock.state import schema

    service = await gw.open_service()
    try:
        table = schema.usage_records
        async with service.store.read() as conn:
            rows = (
                (await conn.execute(sa.select(table).where(table.c.organisation_id == org_id)))
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]
    finally:
        await service.store.close()


async def budget_used(gw: GatewayProcess, budget_id: str) -> int:
    """The settled `used` of a budget's current window, from the admin windows route (the durable ledger)."""
    windows = (await admin(gw, "GET", f"/admin/budgets/{budget_id}/windows")).json()
    return int(windows[0]["used"]) if windows else 0
