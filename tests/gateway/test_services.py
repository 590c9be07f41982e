"""The service registry: resources are closed all, in reverse, even when one fails; readiness comes from their
pings (in process, through the edge's /v1/healthz), and the store, governance and admin share one engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from odock import services as services_module
from odock.admin.governance import admin_for
from odock.app import create_app
from odock.errors import DependencyUnavailable
from odock.gateway import Gateway
from odock.services import Services
from odock.settings import Settings
from odock.state.crypto import generate_key_text
from odock.state.redis import redis_errors
from tests.harness import free_port


async def test_aclose_closes_all_in_reverse_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    """A close that raises is logged by name; every other resource is still closed, last registered first."""
    closed: list[str] = []

    def closer(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            closed.append(name)
            if fail:
                raise RuntimeError(f"{name} refused to close")

        return close

    registry = Services()
    for name, fail in (("store", False), ("redis", True), ("governance", False), ("transport", True)):
        assert registry.register(name, object(), close=closer(name, fail)) is not None
    registry.register("no-close", object())
    with caplog.at_level(logging.ERROR, logger="odock.services"):
        await registry.aclose()
    assert closed == ["transport", "governance", "redis", "store"]
    assert [r.getMessage() for r in caplog.records] == ["closing transport failed", "closing redis failed"]
    await registry.aclose()  # closing twice closes nothing twice
    assert len(closed) == 4


async def test_register_refuses_a_name_twice() -> None:
    """Each resource is registered once: a second registration under the same name is refused."""
    registry = Services()
    registry.register("store", object())
    with pytest.raises(ValueError, match="already registered"):
        registry.register("store", object())


async def test_ready_reports_each_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ping answers for its resource: ok, failing, or hanging past the ping timeout; all pinged at once."""
    monkeypatch.setattr(services_module, "PING_TIMEOUT_S", 0.3)

    async def ok() -> None:
        return None

    async def down() -> None:
        raise DependencyUnavailable("gone", "store_unavailable")

    async def hangs() -> None:
        await asyncio.sleep(30)

    registry = Services()
    registry.register("store", object(), ping=ok)
    registry.register("redis", object(), ping=down)
    registry.register("slow", object(), ping=hangs)
    registry.register("slow-too", object(), ping=hangs)
    registry.register("transport", object())  # no ping: not part of readiness
    started = time.monotonic()
    assert await registry.ready() == {"store": True, "redis": False, "slow": False, "slow-too": False}
    assert time.monotonic() - started < 2.0


async def test_redis_ping_maps_to_unavailable() -> None:
    """A Redis that cannot be reached fails its readiness ping as DependencyUnavailable with the caller's code."""
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(DependencyUnavailable) as info:
            async with redis_errors("rate limiter unavailable", "rate_limit_unavailable"):
                await client.ping()
        assert (info.value.status, info.value.code) == (503, "rate_limit_unavailable")
    finally:
        await client.aclose()


@pytest.fixture()
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """An opened (not started) embedded gateway on a fresh SQLite file."""
    gw = await Gateway.open(Settings(database_url=f"sqlite:///{tmp_path / 'odock.db'}"))
    yield gw
    await gw.stop()


async def test_store_governance_and_admin_share_one_engine(gateway: Gateway) -> None:
    """Governance and the admin's budget service run on the catalogue store's engine, not engines of their own."""
    assert gateway.governance is not None
    assert gateway.governance.store.engine is gateway.store.engine
    assert gateway.governance.store.sql is gateway.store
    assert admin_for(gateway.store).store.engine is gateway.store.engine
    assert gateway.services.names == ["store", "governance", "transport", "mcp"]


async def test_shared_charge_writer_on_postgresql(postgres_url: str) -> None:
    """On PostgreSQL the one asyncpg charge connection belongs to the store and governance uses it."""
    gw = await Gateway.open(Settings(database_url=postgres_url, secret_key=generate_key_text()))
    try:
        assert gw.governance is not None
        assert gw.governance.store.engine is gw.store.engine
        assert gw.store.charge_writer is not None and gw.governance.store._charges is gw.store.charge_writer
        assert await gw.governance.store.record_charges([("r1", "w", 5)]) == [True]
    finally:
        await gw.stop()
    assert (
        gw.store.charge_writer is not None and gw.store.charge_writer._conn is None
    )  # closed with the store


async def test_readiness_answers_from_the_registered_pings(gateway: Gateway) -> None:
    """/v1/healthz pings every registered resource: 200 with each check ok, 503 naming the one that fails."""
    app = create_app(gateway.settings, gateway)
    app.gw = gateway
    failing = {"now": False}

    async def probe() -> None:
        if failing["now"]:
            raise DependencyUnavailable("probe down", "probe_unavailable")

    gateway.services.register("probe", object(), ping=probe)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        ready = await http.get("/v1/healthz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "checks": {"store": "ok", "probe": "ok"}}
        failing["now"] = True
        ready = await http.get("/v1/healthz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "checks": {"store": "ok", "probe": "unavailable"}}


async def test_stop_closes_the_rest_when_one_close_fails(gateway: Gateway) -> None:
    """A resource failing to close does not keep the gateway from closing governance and the store after it."""
    calls: list[str] = []

    async def broken_close() -> None:
        calls.append("broken")
        raise OSError("socket already gone")

    gateway.services.register("broken", object(), close=broken_close)
    await gateway.store.ping()
    assert gateway.store.engine.pool.checkedin() >= 1  # the SQLite pool is opened whole at start
    assert gateway.governance is not None and gateway.governance._task is not None
    await gateway.stop()
    assert calls == ["broken"]
    assert gateway.governance._task is None  # governance closed: its background task is gone
    assert gateway.store.engine.pool.checkedin() == 0  # the store disposed its pool


async def test_a_failed_start_closes_what_was_opened(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Startup failing after the store, governance and pollers opened: the lifespan closes them all."""

    async def broken_recover() -> None:
        raise OSError("spool unreadable")

    monkeypatch.setattr(gateway.recorder, "recover", broken_recover)
    app = create_app(gateway.settings, gateway)
    sent: list[dict[str, object]] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert gateway.store.engine.pool.checkedin() == 0  # the store disposed its pool
    assert gateway.governance is not None and gateway.governance._task is None
