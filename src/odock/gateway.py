"""The gateway's resources, owned by the ASGI lifespan: created once at start, closed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
from typing import TYPE_CHECKING, Any

from odock.governance.pricing import cost_nanos
from odock.pipeline.context import CallContext
from odock.routing.policy import Routing
from odock.settings import Settings
from odock.state.catalogue import Catalogue
from odock.transport.base import Transport
from odock.usage import UsageRecorder, UsageSpool, spool_path

if TYPE_CHECKING:
    from odock.edge.http import Request
    from odock.governance import Governance
    from odock.state.sql import SqlStore

log = logging.getLogger("odock.gateway")


def new_transport(kind: str) -> Transport:
    """The upstream HTTP client: the lean HTTP/1.1 client by default, aiohttp on request."""
    if kind == "aiohttp":
        from odock.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport()
    from odock.transport.http11 import Http11Transport

    return Http11Transport()
INVALIDATION_CHANNEL = os.environ.get("CACHE_INVALIDATION_CHANNEL", "odock:cache-invalidation")


class Gateway:
    def __init__(self, settings: Settings, store: SqlStore, *, transport: Transport | None = None,
                 governance: Governance | None = None, redis: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self.catalogue = Catalogue(
            store,
            key_ttl_s=settings.auth_cache_ttl_s,
            negative_ttl_s=settings.auth_negative_cache_ttl_s,
            model_ttl_s=settings.model_cache_ttl_s,
        )
        self.transport: Transport = transport or new_transport(settings.upstream_client)
        spool = spool_path(settings.database_url) if settings.spool_usage else None
        self.recorder = UsageRecorder(
            store,
            flush_interval_s=settings.usage_flush_interval_s,
            batch_size=settings.usage_batch_size,
            buffer_max=settings.usage_buffer_max,
            spool=UsageSpool(spool, settings.usage_spool_max_bytes) if spool is not None else None,
        )
        self.governance = governance
        self.routing = Routing(cooldown_failures=settings.routing_cooldown_failures,
                               cooldown_s=settings.routing_cooldown_s)
        self._subscriber: asyncio.Task[None] | None = None
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxy_cidrs]

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        """Open the store (running migrations), Redis in cluster mode, and governance."""
        from odock.governance import Governance
        from odock.state.sql import SqlStore

        store = await SqlStore.open(settings.database_url, settings)
        await store.open_pool()
        redis = None
        if settings.cluster:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url)
        governance = await Governance.open(settings, database_url=settings.database_url, redis=redis)
        return cls(settings, store, governance=governance, redis=redis)

    async def start(self) -> None:
        self.store.add_change_listener(self.catalogue.invalidate)
        await self.catalogue.start(self.settings.catalogue_poll_interval_s)
        if self.redis is not None:
            # cluster mode: a mutation made through any process's admin API reaches every process at once;
            # the store's version poll stays as the safety net (and covers CLI changes)
            self.store.add_change_listener(self._publish_invalidation)
            self._subscriber = asyncio.create_task(self._subscribe_invalidations(), name="invalidation-sub")
        # the records a killed predecessor left in the spool are written before this process serves
        await self.recorder.recover()
        self.recorder.start()
        # everything loaded so far lives as long as the process: keep it out of every future GC pass, and let
        # the young generation grow larger so that per-request garbage is collected in fewer, cheaper passes
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)

    async def _publish_invalidation(self) -> None:
        try:
            await self.redis.publish(INVALIDATION_CHANNEL, b"catalogue")
        except Exception:  # noqa: BLE001 - the version poll still propagates the change within a second
            log.warning("could not publish a cache invalidation")

    async def _subscribe_invalidations(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self.catalogue.invalidate()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis blips: resubscribe; the version poll covers the gap
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
        await self.catalogue.stop()
        await self.recorder.stop()
        if self.governance is not None:
            await self.governance.close()
        await self.transport.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.close()

    def client_ip(self, req: Request) -> str:
        """The socket peer, or the first untrusted hop of X-Forwarded-For behind a trusted proxy (§5.6)."""
        peer = req.client_host()
        if not self.settings.trust_proxy_headers or not self._is_trusted(peer):
            return peer
        forwarded = req.headers.get("x-forwarded-for")
        if forwarded:
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                if not self._is_trusted(hop):
                    return hop
        return req.headers.get("x-real-ip") or peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def cost_of(self, ctx: CallContext) -> int | None:
        model = ctx.answered_by or ctx.model
        if ctx.usage is None or model is None or not model.pricing:
            return None
        return cost_nanos(model.pricing, ctx.usage)
