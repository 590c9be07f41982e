"""Governance test helpers: call contexts with catalogue records, and embedded / cluster Governance instances."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from odock.context import CallContext
from odock.governance import Governance
from odock.governance.store import Quota
from odock.settings import Settings
from odock.state.crypto import generate_key_text
from odock.state.records import ApiKeyRecord, ModelRecord, Organisation, Team
from odock.state.sql import SqlStore

ORG_ID, TEAM_ID, KEY_ID, USER_ID, MODEL_ID = "org-1", "team-1", "key-1", "user-1", "model-1"
SECRET_KEY = generate_key_text()  # cluster mode requires one (provider credentials are encrypted with it)
# USD per 1M tokens
PRICING = {"input": 1.0, "output": 2.0}


def make_ctx(
    *,
    org: dict[str, Any] | None = None,
    team: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    max_tokens: int | None = 100,
    input_tokens: int = 100,
    body_bytes: int = 200,
    client_ip: str = "127.0.0.1",
    key_id: str = KEY_ID,
    org_id: str = ORG_ID,
    with_team: bool = True,
    with_user: bool = False,
    org_timezone: str = "UTC",
    request_id: str | None = None,
) -> CallContext:
    """Build a call context as the pipeline would have it after model resolution."""
    ctx = CallContext(request_id=request_id or uuid.uuid4().hex, route="openai.chat", client_ip=client_ip)
    ctx.body_bytes = body_bytes
    ctx.organisation = Organisation(id=org_id, name="acme", timezone=org_timezone, policies=org or {})
    if with_team:
        ctx.team = Team(id=TEAM_ID, organisation_id=org_id, name="ml", policies=team or {})
    ctx.key = ApiKeyRecord(
        id=key_id,
        name="k",
        key_hash="h",
        key_preview="sk-…",
        type="TEAM" if with_team else "ORGANISATION",
        organisation_id=org_id,
        team_id=TEAM_ID if with_team else None,
        user_id=USER_ID if with_user else None,
        policies=key or {},
    )
    ctx.model = ModelRecord(
        id=MODEL_ID,
        organisation_id=org_id,
        name="gpt",
        slug="gpt-x",
        provider_id="p1",
        pricing=PRICING if pricing is None else pricing,
        policies=model or {},
    )
    ctx.max_tokens = max_tokens
    ctx.estimated_input_tokens = input_tokens
    return ctx


def rl(**fields: Any) -> dict[str, Any]:
    """Build a §5.1 policy envelope from short names (rps, rpm, burst, tpm, conc, ttl, bytes, max_tokens)."""
    requests = {
        k2: fields[k]
        for k, k2 in (("rps", "per_second"), ("rpm", "per_minute"), ("burst", "burst"))
        if k in fields
    }
    ratelimit: dict[str, Any] = {}
    if requests:
        ratelimit["requests"] = requests
    if "tpm" in fields:
        ratelimit["tokens"] = {"per_minute": fields["tpm"]}
    if "conc" in fields:
        ratelimit["concurrency"] = {
            "max": fields["conc"],
            **({"lease_ttl_seconds": fields["ttl"]} if "ttl" in fields else {}),
        }
    payload = {
        k2: fields[k]
        for k, k2 in (("bytes", "max_request_bytes"), ("max_tokens", "max_tokens"))
        if k in fields
    }
    if payload:
        ratelimit["payload"] = payload
    policies: dict[str, Any] = {"ratelimit": ratelimit}
    if "allow" in fields or "block" in fields:
        policies["ip"] = {"allowlist": fields.get("allow", []), "blocklist": fields.get("block", [])}
    return {"policies": policies}


def sqlite_url(path: Path) -> str:
    """Return a SQLite URL for a file under `path`."""
    return f"sqlite:///{path / 'gov.db'}"


class StoreOwningGovernance(Governance):
    """A Governance that also closes its SqlStore (in the gateway, the service registry closes the store)."""

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.store.sql.close()


async def open_embedded(path: Path, **settings: Any) -> Governance:
    """Open an embedded Governance on a fresh SQLite file (migrated by its SqlStore)."""
    url = sqlite_url(path)
    config = Settings(database_url=url, **settings)
    store = await SqlStore.open(url, config)
    return await StoreOwningGovernance.open(config, store=store, redis=None)


@pytest.fixture()
async def embedded(tmp_path: Path) -> AsyncIterator[Governance]:
    """An embedded Governance with no global policy."""
    gov = await open_embedded(tmp_path)
    yield gov
    await gov.close()


@pytest.fixture()
def prefix() -> str:
    """A random Redis key prefix for one test."""
    return f"odock-test:{uuid.uuid4().hex[:10]}"


async def open_cluster(
    postgres_url: str, redis_url: str, prefix: str, *, create: bool = True, **kwargs: Any
) -> Governance:
    """Open a cluster-mode Governance with its own Redis client on the shared prefix."""
    import redis.asyncio as aioredis

    settings_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in Settings.__struct_fields__}
    settings = Settings(
        database_url=postgres_url, redis_url=redis_url, secret_key=SECRET_KEY, **settings_fields
    )
    store = await SqlStore.open(postgres_url, settings, migrate=create)
    client = aioredis.from_url(redis_url)
    gov = await StoreOwningGovernance.open(settings, store=store, redis=client, key_prefix=prefix, **kwargs)
    gov._owns_redis = True  # the test hands the client over: close() closes it
    return gov


async def clean_redis(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix`."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + ":*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def add_quota(
    gov: Governance, metric: str, limit: int, owner: str = "APIKEY", owner_id: str = KEY_ID
) -> Quota:
    """Create a daily quota in the governance store and make it visible to the hot path."""
    quota = await gov.store.insert_quota(
        Quota(
            id="",
            name=f"{metric}-quota",
            owner_type=owner,
            owner_id=owner_id,  # type: ignore[arg-type]
            period="DAILY",
            metric=metric,
            limit=limit,
        )  # type: ignore[arg-type]
    )
    await gov.refresh_definitions()
    return quota
