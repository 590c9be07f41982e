"""A live gateway process (embedded SQLite) in front of the mock provider, shared by the native-route tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from odock.mock.testing import MockServer, mock_server
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, seed_basic, usage_record


@pytest.fixture(scope="session")
def mock() -> Iterator[MockServer]:
    """The mock provider, on its own thread."""
    with mock_server() as server:
        yield server


@pytest.fixture(scope="session")
def gateway_proc(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    return GatewayProcess(tmp_path_factory.mktemp("native-gateway"))


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


@pytest.fixture(scope="session")
def key(seeded: dict[str, Any]) -> str:
    """The granted Odock key."""
    return str(seeded["secret"])


async def wait_usage(service: CatalogueService, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """Poll the ledger until the gateway's batch writer stored the call's usage record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await usage_record(service.store, request_id)
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def last_request(mock: MockServer, path: str) -> dict[str, Any]:
    """The newest journal entry of the mock for one upstream path."""
    entries = [r for r in mock.requests if r["path"] == path]
    assert entries, f"the mock saw no request on {path}"
    return entries[-1]


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """What the in-process mock received on its multipart routes: per request, the `x-mock-files` summary
    (`name=size:sha256[:12]` of every file part) and the form fields, as the mock echoes in its response header."""
    from odock.mock import multipart, server
    from odock.mock.wire import Call, MockRequest, Reply

    seen: list[dict[str, str]] = []
    for route, (provider, handler) in list(server.ROUTES.items()):
        if route[1] not in ("/v1/images/edits", "/v1/images/variations", "/v1/audio/transcriptions",
                            "/v1/audio/translations"):
            continue

        def spy(req: MockRequest, handler: Any = handler) -> Call | Reply:
            parts = multipart.parse(req.headers.get("content-type", ""), req.body)
            seen.append({"path": req.path, "files": multipart.describe(parts), **multipart.fields(parts)})
            return handler(req)  # type: ignore[no-any-return]

        monkeypatch.setitem(server.ROUTES, route, (provider, spy))
    return seen
