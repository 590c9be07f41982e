"""A live gateway process (embedded SQLite) in front of the mock provider, shared by the gateway tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from odock.mock.testing import MockServer, mock_server
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, seed_basic


@pytest.fixture(scope="session")
def mock() -> Iterator[MockServer]:
    """The mock provider, on its own thread."""
    with mock_server() as server:
        yield server


@pytest.fixture(scope="session")
def gateway_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def gateway_proc(gateway_dir: Path) -> GatewayProcess:
    return GatewayProcess(gateway_dir)


@pytest.fixture(scope="session")
async def service(gateway_proc: GatewayProcess) -> AsyncIterator[CatalogueService]:
    """The catalogue service over the live gateway's database."""
    svc = await gateway_proc.open_service()
    yield svc
    await svc.store.close()


@pytest.fixture(scope="session")
async def seeded(service: CatalogueService, mock: MockServer) -> dict[str, Any]:
    return await seed_basic(service, mock.base_url)


@pytest.fixture(scope="session")
def gateway(gateway_proc: GatewayProcess, seeded: dict[str, Any]) -> Iterator[GatewayProcess]:
    """The live gateway process, started after the catalogue was seeded."""
    gateway_proc.start()
    yield gateway_proc
    gateway_proc.stop()
