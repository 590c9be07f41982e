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

import msgspec

from odock.cache.store import Coalescer, MemoryStore, RedisStore
from odock.mcp.directory import McpDirectory
from odock.mcp.runtime import McpRuntime
from odock.mcp.session import SessionSigner, derive_secret
from odock.pipeline.runner import BodyLimits, Pipeline
from odock.pipeline.stages import Pricer, key_check_stages, listing_stages, llm_stages, mcp_stages
from odock.pipeline.stages.cache import ResponseCache
from odock.pipeline.stages.plugins import plugin_stages
from odock.pipeline.stages.request_log import RequestLog
from odock.plugins import PluginConfigError, Plugins, StorageBackends, read_plugins_file
from odock.routing.counters import RedisTurns
from odock.routing.policy import Routing
from odock.services import Services
from odock.settings import Settings
from odock.state.catalogue import Catalogue
from odock.state.redis import redis_errors
from odock.transport.base import Transport
from odock.usage import UsageRecorder, UsageSpool, shared_database, spool_path
from odock.usage_writer import WriterProcess

if TYPE_CHECKING:
    from odock.governance import Governance
    from odock.pipeline.exchange import Exchange
    from odock.pipeline.stage import Stage
    from odock.pipeline.tracing import Tracing
    from odock.routing.router import AttemptObserver
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


def _on(flag: bool) -> str:
    return "on" if flag else "off"


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
        writer = None
        if settings.usage_writer == "process" and shared_database(settings.database_url):
            writer = WriterProcess(
                settings.database_url, secret_key=settings.secret_key, cpus=settings.usage_writer_cpus
            )
        self.recorder = UsageRecorder(
            store,
            flush_interval_s=settings.usage_flush_interval_s,
            batch_size=settings.usage_batch_size,
            buffer_max=settings.usage_buffer_max,
            spool=UsageSpool(spool, settings.usage_spool_max_bytes) if spool is not None else None,
            writer=writer,
        )
        self.governance = governance
        self.routing = Routing(
            self.catalogue,
            counter=RedisTurns(redis) if redis is not None else None,
            cooldown_failures=settings.routing_cooldown_failures,
            cooldown_s=settings.routing_cooldown_s,
        )
        self.tracing: Tracing | None = None
        if settings.tracing:
            # only imported when on: the OpenTelemetry extra is optional and the hot path stays untouched without it
            from odock.pipeline.tracing import Tracing

            self.tracing = Tracing.from_settings(settings)
            self.services.register("tracing", self.tracing, close=self.tracing.close)
        self.mcp = self._mcp_runtime()
        # the response cache's entries and fill coalescing; its stage is wired only while some policy enables it
        self.cache: Coalescer | None = None
        if settings.cache != "off":
            entries = RedisStore(redis) if redis is not None else MemoryStore(settings.cache_max_bytes)
            wait = settings.cache_coalesce_wait_s
            self.cache = Coalescer(entries, wait_s=wait, lock_ttl_s=wait + 5.0)
        self.cache_wired = False
        self.plugins = self._load_plugins()
        self._safety_stage: Stage | None = None
        self._mcp_screening_stage: Stage | None = None
        # SafetySec's stage: always with SAFETY_ENGINE_MODE=security; with noop, only while some scope's
        # policies.safety switches it on (checked at start and on every catalogue change); never with off
        self.safety: tuple[Stage, ...] = (
            self.safety_stages() if settings.safety_engine_mode == "security" else ()
        )
        # SafetySec and plugins on MCP calls: wired only while some MCP server opts in (checked like `safety`)
        self.mcp_screening: tuple[Stage, ...] = ()
        self._extra_stages: dict[str, Sequence[Stage]] = {}
        self.pipelines = self.build_pipelines()
        self._subscriber: asyncio.Task[None] | None = None
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxy_cidrs]

    def _mcp_runtime(self) -> McpRuntime:
        """The MCP proxy's resources: its directory cache, session signer, upstream auth and stdio pools."""
        from odock.mcp.stdio import StdioPools

        secret = derive_secret(
            self.settings.mcp_session_secret, self.store.box.derive(b"odock mcp session v1")
        )
        runtime = McpRuntime(self.transport, SessionSigner(secret), self.settings.mcp_timeout_s)
        runtime.stdio = StdioPools()
        self.mcp_directory = McpDirectory(self.store, self.catalogue, ttl_s=self.settings.mcp_cache_ttl_s)
        self.services.register("mcp", runtime, close=runtime.close)
        return runtime

    def _load_plugins(self) -> Plugins | None:
        """The plugins named in PLUGINS_CONFIG_PATH (none: no plugin stage at all)."""
        settings = self.settings
        if not settings.plugins_config_path:
            return None
        try:
            config = read_plugins_file(settings.plugins_config_path)
            if config.empty():
                return None
            governance = self.governance

            def budgets(owner_type: str, owner_id: str) -> list[dict[str, Any]]:
                found = governance.definitions.budgets.get((owner_type, owner_id), []) if governance else []
                return [msgspec.to_builtins(b) for b in found]

            plugins = Plugins.build(
                config,
                backends=StorageBackends(self.catalogue, self.store, budgets),
                max_parallel=settings.plugins_max_parallel,
                async_post_response=settings.plugins_async_post_response,
                queue_size=settings.plugins_async_queue_size,
                workers=settings.plugins_async_workers,
            )
        except PluginConfigError as err:
            raise SystemExit(f"invalid plugin configuration: {err.message}") from None
        log.info("plugins: %s", ", ".join(sorted(plugins.plugins)))
        self.services.register("plugins", plugins, close=plugins.close)
        return plugins

    def safety_stages(self) -> tuple[Stage, ...]:
        """SafetySec's stage (built once: its sessions live as long as the gateway). A call whose resolved
        policy is off stands down at once (`call.step_aside`)."""
        if self._safety_stage is None:
            self._safety_stage = self._new_safety_stage()
        return (self._safety_stage,)

    def mcp_screening_stages(self) -> tuple[Stage, ...]:
        """The MCP screening stage (built once): SafetySec's stage, for its engine, sessions and external guard (none
        with SAFETY_ENGINE_MODE=off), and the plugins, for the servers that opt in."""
        if self._mcp_screening_stage is None:
            from odock.pipeline.stages.mcp_screen import McpScreening
            from odock.pipeline.stages.safety import SafetySec

            safety: SafetySec | None = None
            if self.settings.safety_engine_mode != "off":
                stage = self.safety_stages()[0]
                assert isinstance(stage, SafetySec)
                safety = stage
            self._mcp_screening_stage = McpScreening(safety, self.plugins)
        return (self._mcp_screening_stage,)

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
        mcp_pre_upstream: Sequence[Stage] = (),
    ) -> dict[str, Pipeline]:
        """Each kind of call's stage list, in the reference order, built once (extra stages at the documented
        insertion points: see `odock.pipeline.stages`); the response cache goes last in `pre_reserve` (after
        SafetySec's request phase) while some policy enables it."""
        self._extra_stages = {
            "pre_route": pre_route,
            "pre_reserve": pre_reserve,
            "pre_upstream": pre_upstream,
            "mcp_pre_upstream": mcp_pre_upstream,
        }
        pricer = Pricer(self.settings.usage_max_tokens)
        if self.cache is not None and self.cache_wired:
            stage = ResponseCache(
                self.cache,
                pricer,
                max_entry_bytes=self.settings.cache_max_entry_bytes,
                governance=self.governance,
            )
            pre_reserve = [*pre_reserve, stage]
        if self.plugins is not None:
            route_slot, upstream_slot = plugin_stages(self.plugins)
            pre_route, pre_upstream = [*route_slot, *pre_route], [*upstream_slot, *pre_upstream]
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
        key_check = key_check_stages(catalogue=self.catalogue, governance=self.governance)
        llm, listing, key_check = self.observed(llm), self.observed(listing), self.observed(key_check)
        transport: Transport = self.transport
        observe: AttemptObserver | None = self.routing.observe
        if self.tracing is not None:
            # upstream attempts get their span (and send its traceparent) only when tracing is on
            transport, observe = self.tracing.transport(transport), self.tracing.observer(observe)
        mcp = self.observed(
            mcp_stages(
                catalogue=self.catalogue,
                recorder=self.recorder,
                directory=self.mcp_directory,
                runtime=self.mcp,
                governance=self.governance,
                pricer=pricer,
                pre_upstream=(*self.mcp_screening, *mcp_pre_upstream),
            )
        )
        return {
            "llm": Pipeline(
                llm,
                transport=transport,
                limits=limits,
                client_ip=self.client_ip,
                observe=observe,
                upstream_errors=self.settings.upstream_errors,
            ),
            "listing": Pipeline(
                listing,
                transport=self.transport,
                limits=limits,
                client_ip=self.client_ip,
                catalogue=self.catalogue,
            ),
            "key_check": Pipeline(
                key_check,
                transport=self.transport,
                limits=limits,
                client_ip=self.client_ip,
                catalogue=self.catalogue,
            ),
            "mcp": Pipeline(
                mcp,
                transport=self.transport,
                limits=limits,
                client_ip=self.client_ip,
                upstream_errors=self.settings.upstream_errors,
            ),
        }

    def observed(self, stages: list[Stage]) -> list[Stage]:
        """Put the observation stages in front, only those configured (off: the list is unchanged)."""
        front: list[Stage] = []
        if self.tracing is not None:
            # the root span first (it also ends last), then every stage behind a span proxy
            front.append(self.tracing.root())
            stages = self.tracing.stages(stages)
        if self.settings.request_log != "off":
            front.append(RequestLog(self.settings.request_log, self.settings.request_log_sample_rate))
        return front + stages

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

    async def rewire(self) -> None:
        """Add or remove the policy-driven stages (the response cache; SafetySec with SAFETY_ENGINE_MODE=noop) as
        the catalogue's policies ask, at start and after every catalogue change: with no such policy the hot path
        carries no such stage and native routes stay byte relays. One read of the policies, one rebuild at most."""
        from odock.mcp.service import screening_wanted_anywhere
        from odock.safety.policy import any_enabled, safety_section
        from odock.state.cache_policy import enables_cache

        watch_safety = self.settings.safety_engine_mode == "noop"
        try:
            policies = (
                await self.store.policies_mentioning("cache", "safety")
                if self.cache is not None or watch_safety
                else []
            )
            mcp_wanted = await screening_wanted_anywhere(self.store)
        except Exception:  # keep the current pipelines; the next catalogue change retries
            log.warning("could not read the cache and SafetySec policies; the pipelines are unchanged")
            return
        cache = self.cache is not None and any(enables_cache(p) for p in policies)
        safety = self.safety
        if watch_safety:
            safety = self.safety_stages() if any_enabled(safety_section(p) for p in policies) else ()
        mcp_screening = self.mcp_screening_stages() if mcp_wanted else ()
        if cache != self.cache_wired or safety != self.safety or mcp_screening != self.mcp_screening:
            self.cache_wired, self.safety, self.mcp_screening = cache, safety, mcp_screening
            self.pipelines = self.build_pipelines(**self._extra_stages)
            log.info(
                "pipelines rebuilt: response cache %s, SafetySec %s, MCP screening %s",
                _on(cache),
                _on(bool(safety)),
                _on(bool(mcp_screening)),
            )

    async def start(self) -> None:
        await self.rewire()
        self.catalogue.on_invalidate.append(self.rewire)
        self.store.add_change_listener(self.catalogue.invalidate)
        await self.catalogue.start(self.settings.catalogue_poll_interval_s)
        self.services.register("catalogue poller", self.catalogue, close=self.catalogue.stop)
        if self.redis is not None:
            # cluster mode: a mutation made through any process's admin API reaches every process at once;
            # the store's version poll stays as the safety net (and covers CLI changes)
            self.store.add_change_listener(self._publish_invalidation)
            self._subscriber = asyncio.create_task(self._subscribe_invalidations(), name="invalidation-sub")
            self.services.register("invalidation subscriber", self._subscriber, close=self._stop_subscriber)
        await self._hint_when_empty()
        # the records a killed predecessor left in the spool are written before this process serves
        await self.recorder.recover()
        await self.recorder.start()
        # registered last, closed first: the usage flush on shutdown still has the store
        self.services.register("usage recorder", self.recorder, close=self.recorder.stop)
        # everything loaded so far lives as long as the process: keep it out of every future GC pass, and let
        # the young generation grow larger so that per-request garbage is collected in fewer, cheaper passes
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)

    async def _hint_when_empty(self) -> None:
        """On an empty catalogue, say what to do next (the first thing a new operator sees)."""
        try:
            empty = not await self.store.has_keys()
        except Exception:
            return  # readiness reports a store that does not answer
        if empty:
            console = f"http://{self.settings.http_host}:{self.settings.http_port}/console"
            log.info(
                "the catalogue is empty: no API key can call a model yet. Apply the quick start "
                "(`odock apply examples/quickstart.yaml`, see the README), create one step by step with "
                "`odock orgs create`, `odock providers create`, `odock models create`, `odock keys create`, "
                "or open the console at %s (with ODOCK_ADMIN_TOKEN set)",
                console.replace("0.0.0.0", "127.0.0.1"),
            )

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
