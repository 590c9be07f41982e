"""The whole gateway in this process: its ASGI app driven by httpx's ASGI transport (so the official SDKs are the
clients), upstream calls sent in memory to the project's mock provider, a SQLite catalogue in a temp dir.

No socket and no second process: for what is not process behaviour (signals, crashes, two processes), this is
the fast way to test a stage, the router or a whole route end to end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from odock.app import admin_app_for, create_app
from odock.edge.app import Edge
from odock.gateway import Gateway
from odock.mock.server import MockApp
from odock.mock.server import create_app as create_mock
from odock.pipeline.stage import Stage
from odock.settings import Settings
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore
from odock.transport.asgi import ASGITransport
from tests.harness import seed_basic

MOCK_URL = "http://mock.invalid"  # never resolved: the in-memory transport answers every upstream URL


@dataclass
class InProcessGateway:
    app: Edge
    gateway: Gateway
    mock: MockApp
    transport: ASGITransport
    service: CatalogueService
    seeded: dict[str, Any]

    def client(self) -> httpx.AsyncClient:
        """An HTTP client whose requests go straight into the gateway's ASGI app."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gateway.test")

    def sdk_client(self) -> Any:
        """The same, for the official SDKs (they are built on httpx2 and refuse httpx objects)."""
        import httpx2

        return httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app), base_url="http://gateway.test"
        )


@asynccontextmanager
async def in_process_gateway(
    tmp_path: Path,
    *,
    pre_route: Sequence[Stage] = (),
    pre_reserve: Sequence[Stage] = (),
    pre_upstream: Sequence[Stage] = (),
    **settings: Any,
) -> AsyncIterator[InProcessGateway]:
    """A seeded gateway (tests.harness.seed_basic) with optional extra stages, started and stopped around the block."""
    settings.setdefault("database_url", f"sqlite:///{tmp_path / 'odock.db'}")  # or a cluster's PostgreSQL
    # usage written on this loop: these tests are about the pipeline, and a writer process per test would cost the
    # suite a Python start each; the writer process is tested on its own and by every live gateway (harness.py)
    settings.setdefault("usage_writer", "inline")
    config = Settings(usage_flush_interval_s=0.05, **settings)
    store = await SqlStore.open(config.database_url, config)
    service = CatalogueService(store)
    seeded = await seed_basic(service, MOCK_URL)
    mock = create_mock()
    transport = ASGITransport(mock)
    gateway = await Gateway.open(config, transport=transport)
    if pre_route or pre_reserve or pre_upstream:
        gateway.pipelines = gateway.build_pipelines(
            pre_route=pre_route, pre_reserve=pre_reserve, pre_upstream=pre_upstream
        )
    app = create_app(config, gateway)
    await gateway.start()
    app.gw = gateway
    app.admin = admin_app_for(gateway)  # what the lifespan would mount (the admin API and console)
    try:
        yield InProcessGateway(app, gateway, mock, transport, service, seeded)
    finally:
        await gateway.stop()
        await store.close()
