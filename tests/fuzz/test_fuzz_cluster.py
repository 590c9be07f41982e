"""The route fuzz against a cluster-mode gateway (PostgreSQL + Redis), smaller: PostgreSQL refuses what SQLite keeps
(a NUL character, a name wider than its column), so a value that passes on SQLite can fail a lookup there, or sit
in the usage writer's queue as a record that can never be written, stopping the ledger for every later call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.conftest import REDIS_HOST, REDIS_PORT, require_service
from tests.fuzz import strategies as fz
from tests.fuzz.helpers import (
    LLM_ROUTES,
    Route,
    assert_survived,
    check,
    fuzz_admin,
    fuzz_route,
    fuzz_settings,
    gemini_code,
    post,
)
from tests.harness import GatewayProcess

pytestmark = pytest.mark.cluster

# the routes whose bodies name a model (looked up, and recorded in the ledger) through each dialect
ROUTES = [
    r
    for r in LLM_ROUTES
    if r.path in ("/v1/llm/chat", "/v1/chat/completions", "/v1/messages", "/v1/vllm/tokenize")
]


async def _pg(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fuzz_proc(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str) -> Iterator[GatewayProcess]:
    """A cluster-mode process on a fresh PostgreSQL database (dropped afterwards) and Redis."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    name = f"odock_fuzz_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(postgres_server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield GatewayProcess(
            tmp_path_factory.mktemp("fuzz-cluster"),
            database_url=postgres_server_url.rsplit("/", 1)[0] + f"/{name}",
            redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        )
    finally:
        asyncio.run(_pg(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
@fuzz_settings(10)
@given(data=st.data())
def test_cluster_bodies(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    """Dialect-shaped bodies, one value of any type, or a model name no catalogue can hold: no 5xx."""
    strategy = st.one_of(route.bodies, fz.one_field_wrong(route.bodies), fz.with_model(route.bodies))
    fuzz_route(http, route, data.draw(strategy))


@fuzz_settings(10)
@given(model=fz.ODD_MODEL_NAMES)
@example(model="gemini\x00test")
@example(model="m" * 201)
def test_cluster_gemini_model_in_path(http: httpx.Client, model: str) -> None:
    """Any model name in a Gemini path is a Gemini-shaped answer, no 5xx."""
    path = f"/v1beta/models/{quote(model, safe='')}:generateContent"
    check(post(http, path, b'{"contents": [{"parts": [{"text": "hi"}]}]}'), gemini_code)


@pytest.mark.parametrize("kind", sorted(fz.ADMIN_BODIES))
@fuzz_settings(8)
@given(data=st.data())
def test_cluster_admin_bodies(
    admin: httpx.Client, refs: dict[str, Any], kind: str, data: st.DataObject
) -> None:
    """Admin bodies, whole and broken, against PostgreSQL: JSON errors, no 5xx."""
    fuzz_admin(admin, refs, kind, data)


async def test_cluster_gateway_survived(live: GatewayProcess, http: httpx.Client) -> None:
    """Afterwards the process answers, its usage writer still writes to PostgreSQL, and no traceback was logged."""
    await assert_survived(live, http)
