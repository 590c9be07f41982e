"""The gateway's resources and pipelines, owned by the ASGI lifespan: created once at start, closed on shutdown.

This is the composition root of the hot path: it opens the services and builds each kind of call's stage list
(`odock.pipeline.stages`) once, from configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from odock.pipeline.runner import BodyLimits, Pipeline
from odock.pipeline.stages import Pricer, listing_stages, llm_stages
from odock.routing.counters import RedisTurns
from odock.routing.policy import Routing
from odock.services import Services
from odock.settings import Settings
from odock.state.catalogue import Catalogue
from odock.state.redis import redis_errors
from odock.transport.base import Transport
from odock.usage import UsageRecorder, UsageSpool, spool_path

if TYPE_CHECKING:
    from odock.governance import Governance
    from odock.pipeline.exchange import Exchange
    from odock.pipeline.stage import Stage
    from odock.state.sql import SqlStore

log = logging.getLogger("odock.gateway")


def new_transport(kind: str) -> Transport:
    """The upstream HTTP client: the lean HTTP/1.1 client by default, aiohttp on request."""
    if kind == "aiohttp":
        from odock.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport()
    from odock.transport.http11 import Http11Transport

    return Http11Transport()


def _redis_ping(client: Any) -> Callable[[], Awaitable[None]]:
    async def ping() -> None:
        with redis_errors():
            await client.ping()

    return ping


INVALIDATION_CHANNEL = os.environ.get("CACHE_INVALIDATION_CHANNEL", "odock:cache-invalidation")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        store: SqlStore,
        *,
        transport: Transport | None = None,
        governance: Governance | None = None,
        redis: Any = None,
        services: Services | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        # what `open` registered (store, Redis, governance); closed all, in reverse, by `stop`
        self.services = services or Services()
        self.catalogue = Catalogue(
            store,
            key_ttl_s=settings.auth_cache_ttl_s,
            negative_ttl_s=settings.auth_negative_cache_ttl_s,
            model_ttl_s=settings.model_cache_ttl_s,
        )
        self.transport: Transport = transport or new_transport(settings.upstream_client)
        self.services.register("transport", self.transport, close=self.transport.close)
        spool = spool_path(settings.database_url) if settings.spool_usage else None
        self.recorder = UsageRecorder(
            store,
            flush_interval_s=settings.usage_flush_interval_s,
            batch_size=settings.usage_batch_size,
            buffer_max=settings.usage_buffer_max,
            spool=UsageSpool(spool, settings.usage_spool_max_bytes) if spool is not None else None,
        )
        self.governance = governance
        self.routing = Routing(
            self.catalogue,
            counter=RedisTurns(redis) if redis is not None else None,
            cooldown_failures=settings.routing_cooldown_failures,
            cooldown_s=settings.routing_cooldown_s,
        )
        self._safety_stage: Stage | None = None
        # SafetySec's stage: always with SAFETY_ENGINE_MODE=security; with noop, only while some scope's
        # policies.safety switches it on (checked at start and on every catalogue change); never with off
        self.safety: tuple[Stage, ...] = (
            self.safety_stages() if settings.safety_engine_mode == "security" else ()
        )
        self._extra_stages: dict[str, Sequence[Stage]] = {}
        self.pipelines = self.build_pipelines()
        self._subscriber: asyncio.Task[None] | None = None
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxy_cidrs]

    def safety_stages(self) -> tuple[Stage, ...]:
        """SafetySec's stage (built once: its sessions live as long as the gateway). A call whose resolved
        policy is off stands down at once (`call.skip`)."""
        if self._safety_stage is None:
            self._safety_stage = self._new_safety_stage()
        return (self._safety_stage,)

    async def refresh_safety(self) -> None:
        """With SAFETY_ENGINE_MODE=noop: add SafetySec's stage when a scope switches it on, drop it when none
        does any more (the hot path of a gateway nobody configured for SafetySec has no such stage)."""
        from odock.safety.policy import any_enabled, safety_section

        try:
            policies = await self.store.safety_policies()
        except Exception:  # keep the current pipelines; the next catalogue change retries
            log.exception("reading SafetySec policies failed")
            return
        wanted = any_enabled(safety_section(p) for p in policies)
        if wanted != bool(self.safety):
            self.safety = self.safety_stages() if wanted else ()
            self.pipelines = self.build_pipelines(**self._extra_stages)

    def _new_safety_stage(self) -> Stage:
        settings = self.settings
        from odock.pipeline.stages.safety import SafetySec
        from odock.safety.engine import SafetyConfig, SafetyEngine
        from odock.safety.guard import GuardConfig, WebhookGuard
        from odock.safety.sessions import MemorySessions, RedisSessions, Sessions
        from odock.state.redis import REDIS_ERRORS

        engine = SafetyEngine(
            SafetyConfig(
                enabled=settings.safety_engine_mode == "security",
                allow_disable=settings.safety_allow_disable,
                block_threshold=settings.safety_block_threshold,
                session_ttl_s=settings.safety_session_ttl_s,
                fail_status=settings.safety_fail_status,
                hold_chars=settings.safety_stream_holdback,
            )
        )
        sessions: Sessions = RedisSessions(self.redis) if self.redis is not None else MemorySessions()
        guard = None
        if settings.safety_guard_url:
            guard = WebhookGuard(
                GuardConfig(
                    settings.safety_guard_url,
                    settings.safety_guard_secret,
                    settings.safety_guard_timeout_s,
                    fail_open=settings.safety_guard_fail == "open",
                ),
                self.transport,
            )
        return SafetySec(engine, sessions, guard, REDIS_ERRORS)

    def build_pipelines(
        self,
        *,
        pre_route: Sequence[Stage] = (),
        pre_reserve: Sequence[Stage] = (),
        pre_upstream: Sequence[Stage] = (),
    ) -> dict[str, Pipeline]:
        """Each kind of call's stage list, in the reference order, built once (extra stages at the documented
        insertion points: see `odock.pipeline.stages`)."""
        self._extra_stages = {
            "pre_route": pre_route,
            "pre_reserve": pre_reserve,
            "pre_upstream": pre_upstream,
        }
        pricer = Pricer(self.settings.usage_max_tokens)
        limits = BodyLimits(self.settings.max_body_bytes, self.settings.read_timeout_s)
        llm = llm_stages(
            catalogue=self.catalogue,
            recorder=self.recorder,
            routing=self.routing,
            governance=self.governance,
            pricer=pricer,
            pre_route=pre_route,
            pre_reserve=(*self.safety, *pre_reserve),  # SafetySec's request phase first, then the cache
            pre_upstream=pre_upstream,
        )
        listing = listing_stages(catalogue=self.catalogue, governance=self.governance, pricer=pricer)
        return {
            "llm": Pipeline(
                llm,
                transport=self.transport,
                limits=limits,
                client_ip=self.client_ip,
                observe=self.routing.observe,
                upstream_errors=self.settings.upstream_errors,
            ),
            "listing": Pipeline(
                listing,
                transport=self.transport,
                limits=limits,
                client_ip=self.client_ip,
                catalogue=self.catalogue,
            ),
        }

    @classmethod
    async def open(cls, settings: Settings, *, transport: Transport | None = None) -> Gateway:
        """Open the store (running migrations), Redis in cluster mode, and governance on the store's engine."""
        from odock.governance import Governance
        from odock.state.sql import SqlStore

        services = Services()
        try:
            store = await SqlStore.open(settings.database_url, settings)
            await store.open_pool()
            services.register("store", store, close=store.close, ping=store.ping)
            redis = None
            if settings.cluster:
                import redis.asyncio as aioredis

                redis = aioredis.from_url(settings.redis_url)
                services.register("redis", redis, close=redis.aclose, ping=_redis_ping(redis))
            governance = await Governance.open(settings, store=store, redis=redis)
            services.register("governance", governance, close=governance.close)
            return cls(
                settings, store, transport=transport, governance=governance, redis=redis, services=services
            )
        except BaseException:
            await services.aclose()  # what opened before the failure
            raise

    async def start(self) -> None:
        if self.settings.safety_engine_mode == "noop":
            await self.refresh_safety()
            self.catalogue.on_invalidate.append(self.refresh_safety)
        self.store.add_change_listener(self.catalogue.invalidate)
        await self.catalogue.start(self.settings.catalogue_poll_interval_s)
        self.services.register("catalogue poller", self.catalogue, close=self.catalogue.stop)
        if self.redis is not None:
            # cluster mode: a mutation made through any process's admin API reaches every process at once;
            # the store's version poll stays as the safety net (and covers CLI changes)
            self.store.add_change_listener(self._publish_invalidation)
            self._subscriber = asyncio.create_task(self._subscribe_invalidations(), name="invalidation-sub")
            self.services.register("invalidation subscriber", self._subscriber, close=self._stop_subscriber)
        # the records a killed predecessor left in the spool are written before this process serves
        await self.recorder.recover()
        self.recorder.start()
        # registered last, closed first: the usage flush on shutdown still has the store
        self.services.register("usage recorder", self.recorder, close=self.recorder.stop)
        # everything loaded so far lives as long as the process: keep it out of every future GC pass, and let
        # the young generation grow larger so that per-request garbage is collected in fewer, cheaper passes
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)

    async def _publish_invalidation(self) -> None:
        try:
            await self.redis.publish(INVALIDATION_CHANNEL, b"catalogue")
        except Exception:
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
            except Exception:
                await asyncio.sleep(1.0)

    async def _stop_subscriber(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber

    async def stop(self) -> None:
        """Close every registered resource, in reverse order, even when one of them fails to close."""
        await self.services.aclose()

    def client_ip(self, req: Exchange) -> str:
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
