"""Shared fixtures: the real PostgreSQL and Redis services of this machine.

Locally a test that needs a service skips when it is unreachable; under CI=true it fails instead, so a
missing service can never turn a red run green.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hypothesis  # noqa: F401  # imported early: its plugin's lazy import at session end trips a CPython 3.11 AST bug
import pytest

# Machines that set PYTHONDONTWRITEBYTECODE make every process compile from source: each xdist worker its test
# modules (assertion rewriting), each gateway subprocess the whole package. Caching bytecode (in gitignored
# __pycache__ folders) halves a gateway's start; site-packages are compiled once by uv (`compile-bytecode`).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

PG_HOST = os.environ.get("ODOCK_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ODOCK_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("ODOCK_TEST_PG_USER", "postgres")
REDIS_HOST = os.environ.get("ODOCK_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("ODOCK_TEST_REDIS_PORT", "6379"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip locally, fail under CI, when a service the test needs is unreachable."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of the PostgreSQL server's maintenance database."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


@pytest.fixture()
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import asyncio

    import asyncpg

    name = f"odock_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture()
def redis_url() -> str:
    """A Redis database URL; tests namespace their keys by a random prefix or flush DB 15 themselves."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


# --- one live gateway (embedded SQLite) in front of the mock provider, shared by the tests of every folder that
# does not bring its own (routing seeds a catalogue of its own) -------------------------------------------------


@pytest.fixture(scope="session")
def mock() -> Iterator[Any]:
    """The mock provider, on its own thread."""
    from odock.mock.testing import mock_server

    with mock_server() as server:
        yield server


@pytest.fixture(scope="session")
def gateway_proc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.harness import GatewayProcess

    return GatewayProcess(tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="session")
async def service(gateway_proc: Any) -> AsyncIterator[Any]:
    """The catalogue service over the live gateway's database."""
    svc = await gateway_proc.open_service()
    yield svc
    await svc.store.close()


@pytest.fixture(scope="session")
async def seeded(service: Any, mock: Any) -> dict[str, Any]:
    """Providers of every type on the mock, models, and one granted key (see tests.harness.seed_basic)."""
    from tests.harness import seed_basic

    return await seed_basic(service, mock.base_url)


@pytest.fixture(scope="session")
def gateway(gateway_proc: Any, seeded: dict[str, Any]) -> Iterator[Any]:
    """The live gateway process, started after the catalogue was seeded."""
    gateway_proc.start()
    yield gateway_proc
    gateway_proc.stop()


@pytest.fixture(scope="session")
def key(seeded: dict[str, Any]) -> str:
    """The granted Odock key's secret."""
    return str(seeded["secret"])
