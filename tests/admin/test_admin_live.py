"""The admin API of a live gateway over real HTTP: database failures map to the most specific error — a
duplicate is 409, a value its column cannot hold is 400, and only an unreachable store is 503."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.harness import GatewayProcess

PROVIDER = {"organisation": "acme", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway process on a fresh SQLite file or PostgreSQL database, started empty."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    proc = GatewayProcess(tmp_path, database_url=url)
    proc.start()
    yield proc
    proc.stop()


async def test_duplicates_are_conflicts_even_when_racing(live: GatewayProcess) -> None:
    """Concurrent creations under one name: exactly one 201, every other answer 409 conflict (never 5xx)."""
    async with httpx.AsyncClient(base_url=live.base_url, headers=live.admin_headers(), timeout=20) as http:
        answers = await asyncio.gather(
            *(http.post("/admin/organisations", json={"name": "acme"}) for _ in range(8))
        )
        assert sorted(r.status_code for r in answers) == [201] + [409] * 7
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"conflict"}
        answers = await asyncio.gather(
            *(http.post("/admin/providers", json={**PROVIDER, "name": "oa"}) for _ in range(6))
        )
        assert sorted(r.status_code for r in answers) == [201] + [409] * 5


async def test_values_a_column_cannot_hold_are_400(live: GatewayProcess) -> None:
    """An integer past its column's range and a budget owner id past its column's width are 400, not 500/503."""
    async with httpx.AsyncClient(base_url=live.base_url, headers=live.admin_headers(), timeout=20) as http:
        assert (await http.post("/admin/organisations", json={"name": "acme"})).status_code == 201
        provider = await http.post("/admin/providers", json={**PROVIDER, "name": "oa", "timeout_ms": 2**40})
        assert provider.status_code == 400, provider.text
        assert provider.json()["error"]["code"] == "invalid_request"
        assert "timeout_ms" in provider.json()["error"]["message"]
        budget = await http.post(
            "/admin/budgets",
            json={
                "name": "b",
                "owner_type": "ORG",
                "owner_id": "o" * 100,
                "amount_nanos": 1,
                "currency": "DOLLARS-US",
            },
        )
        # refused before the store on both backends (SQLite would store any length; PostgreSQL refuses: a 400)
        assert budget.status_code == 400, budget.text
        assert budget.json()["error"]["code"] == "invalid_request"


async def set_connections(server_url: str, database: str, allowed: bool) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
    finally:
        await conn.close()


async def test_store_down_is_503(tmp_path: Path, postgres_url: str, postgres_server_url: str) -> None:
    """While PostgreSQL refuses connections, catalogue and budget routes are 503 store_unavailable and readiness
    names the store; once it is back, the same routes answer again."""
    proc = GatewayProcess(tmp_path, database_url=postgres_url)
    proc.start()
    database = postgres_url.rsplit("/", 1)[1]
    try:
        async with httpx.AsyncClient(
            base_url=proc.base_url, headers=proc.admin_headers(), timeout=20
        ) as http:
            assert (await http.get("/admin/budgets")).status_code == 200
            await set_connections(postgres_server_url, database, False)
            try:
                answers = [await http.get(path) for path in ("/admin/organisations", "/admin/budgets")]
                created = await http.post("/admin/organisations", json={"name": "acme"})
                ready = await http.get("/v1/healthz")
            finally:
                await set_connections(postgres_server_url, database, True)
            for answer in [*answers, created]:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "store_unavailable"
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "checks": {"store": "unavailable"}}
            assert (await http.get("/admin/organisations")).status_code == 200
            assert (await http.get("/v1/healthz")).status_code == 200
    finally:
        proc.stop()
