"""In-process catalogue cache: the hot path reads keys, models, providers and grants from here, never from SQL.

Entries live for a TTL (a key's entry never outlives the key's expiry), unknown keys are cached negatively, and
every entry is dropped at once when the catalogue changes: directly on an admin mutation in this process, and
within `catalogue_poll_interval_s` for mutations made elsewhere (CLI, another process; cluster mode adds Redis
pub/sub). While the store is unreachable, expired entries are served stale rather than failing known keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from odock.errors import DependencyUnavailable, Unauthorized
from odock.state.keys import hash_key
from odock.state.records import ApiKeyRecord, ModelRecord, Organisation, ProviderRecord, Team
from odock.state.store import Store

log = logging.getLogger("odock.catalogue")
T = TypeVar("T")
_MISSING = object()


class TTLCache(Generic[T]):
    """A bounded dict of (value, expires_at); the oldest entries go first when it is full."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int) -> None:
        self._data: dict[Any, tuple[T, float]] = {}
        self._max = max_entries

    def get(self, key: Any, now: float) -> tuple[T, bool] | None:
        """Return (value, fresh) or None when absent."""
        item = self._data.get(key)
        if item is None:
            return None
        return item[0], item[1] > now

    def put(self, key: Any, value: T, expires_at: float) -> None:
        if len(self._data) >= self._max and key not in self._data:
            self._data.pop(next(iter(self._data)))
        self._data[key] = (value, expires_at)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _consume(task: asyncio.Task[Any]) -> None:
    # a read every caller stopped waiting for still has its failure retrieved (no "never retrieved" warning)
    if not task.cancelled():
        task.exception()


class Catalogue:
    def __init__(
        self,
        store: Store,
        *,
        key_ttl_s: float = 300.0,
        negative_ttl_s: float = 30.0,
        model_ttl_s: float = 300.0,
        max_entries: int = 100_000,
    ) -> None:
        self.store = store
        self.key_ttl_s = key_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.model_ttl_s = model_ttl_s
        # key hash -> (record or None, expiry epoch or inf)
        self._keys: TTLCache[tuple[ApiKeyRecord | None, float]] = TTLCache(max_entries)
        self._models: TTLCache[ModelRecord | None] = TTLCache(max_entries)
        self._providers: TTLCache[ProviderRecord | None] = TTLCache(max_entries)
        self._grants: TTLCache[frozenset[str]] = TTLCache(max_entries)
        self._orgs: TTLCache[Organisation | None] = TTLCache(max_entries)
        self._teams: TTLCache[Team | None] = TTLCache(max_entries)
        self._version: int | None = None
        self._poller: asyncio.Task[None] | None = None
        # one store read per missing entry however many calls miss it at once (a cold start or a TTL expiry
        # under load would otherwise send one query per waiting call); the generation keeps a read that an
        # invalidation overtook from caching what it read
        self._loading: dict[Any, asyncio.Task[Any]] = {}
        self._generation = 0
        self.on_invalidate: list[Callable[[], Awaitable[None] | None]] = []

    # --- lookups -------------------------------------------------------------------------------------------

    async def _once(self, flight: Any, load: Callable[[], Awaitable[T]], keep: Callable[[T], None]) -> T:
        """Run `load` once for every concurrent caller asking for `flight`, and `keep` its value (unless the
        catalogue changed meanwhile). The read is a task of its own: a caller that goes away (a client
        disconnecting) cancels its wait, never the read the others wait for."""
        task = self._loading.get(flight)
        if task is None:
            generation = self._generation

            async def read() -> T:
                try:
                    value = await load()
                finally:
                    self._loading.pop(flight, None)
                if generation == self._generation:
                    keep(value)
                return value

            task = asyncio.ensure_future(read())
            task.add_done_callback(_consume)
            self._loading[flight] = task
        return await asyncio.shield(task)

    async def _cached(
        self, cache: TTLCache[Any], key: Any, load: Callable[[], Awaitable[Any]], ttl: float
    ) -> Any:
        now = time.monotonic()
        hit = cache.get(key, now)
        if hit is not None and hit[1]:
            return hit[0]
        try:
            return await self._once((id(cache), key), load, lambda value: cache.put(key, value, now + ttl))
        except DependencyUnavailable:
            if hit is not None:
                return hit[0]  # stale-if-error: a store outage must not fail what we already knew
            raise

    def _keep_key(self, digest: str, record: ApiKeyRecord | None, now: float) -> None:
        expires_epoch = record.expires_at.timestamp() if record and record.expires_at else float("inf")
        ttl = self.key_ttl_s if record else self.negative_ttl_s
        if record is not None and expires_epoch != float("inf"):
            # never cache a key past its expiry
            ttl = max(0.0, min(ttl, expires_epoch - time.time()))
        self._keys.put(digest, (record, expires_epoch), now + ttl)

    async def authenticate(self, secret: str | None) -> ApiKeyRecord:
        """Resolve a presented secret to its key, or raise 401 with the documented code."""
        if not secret:
            raise Unauthorized("missing API key", "unauthorized")
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._keys.get(digest, now)
        if hit is not None and hit[1]:
            record, expires_epoch = hit[0]
        else:
            try:
                record = await self._once(
                    ("key", digest),
                    lambda: self.store.find_key(digest),
                    lambda found: self._keep_key(digest, found, now),
                )
            except DependencyUnavailable:
                if hit is None:
                    # an unknown key during an outage is 503, never 401 (peer lesson)
                    raise DependencyUnavailable("the key store is unreachable", "store_unavailable") from None
                record, expires_epoch = hit[0]
            else:
                expires_epoch = (
                    record.expires_at.timestamp() if record and record.expires_at else float("inf")
                )
        if record is None:
            raise Unauthorized("invalid API key", "unauthorized")
        if record.revoked:
            raise Unauthorized("API key has been revoked", "api_key_revoked")
        if expires_epoch <= time.time():
            raise Unauthorized("API key has expired", "api_key_expired")
        return record

    async def model(self, organisation_id: str, name: str) -> ModelRecord | None:
        return await self._cached(  # type: ignore[no-any-return]
            self._models,
            (organisation_id, name),
            lambda: self.store.find_model(organisation_id, name),
            self.model_ttl_s,
        )

    async def model_by_id(self, model_id: str) -> ModelRecord | None:
        return await self._cached(  # type: ignore[no-any-return]
            self._models, ("id", model_id), lambda: self.store.get_model(model_id), self.model_ttl_s
        )

    async def provider(self, provider_id: str) -> ProviderRecord | None:
        return await self._cached(  # type: ignore[no-any-return]
            self._providers, provider_id, lambda: self.store.get_provider(provider_id), self.model_ttl_s
        )

    async def grants(self, api_key_id: str) -> frozenset[str]:
        return await self._cached(  # type: ignore[no-any-return]
            self._grants, api_key_id, lambda: self.store.granted_model_ids(api_key_id), self.key_ttl_s
        )

    async def organisation(self, organisation_id: str) -> Organisation | None:
        hit = self._orgs.get(organisation_id, time.monotonic())
        if hit is not None and hit[1]:  # the common case, without a load closure and a second coroutine
            return hit[0]
        return await self._cached(  # type: ignore[no-any-return]
            self._orgs,
            organisation_id,
            lambda: self.store.get_organisation(organisation_id),
            self.model_ttl_s,
        )

    async def team(self, team_id: str) -> Team | None:
        hit = self._teams.get(team_id, time.monotonic())
        if hit is not None and hit[1]:  # as `organisation`
            return hit[0]
        return await self._cached(  # type: ignore[no-any-return]
            self._teams, team_id, lambda: self.store.get_team(team_id), self.model_ttl_s
        )

    # --- invalidation --------------------------------------------------------------------------------------

    async def invalidate(self) -> None:
        """Drop every cached entry (catalogue mutations are rare; the next requests reload)."""
        self._generation += 1
        for cache in (self._keys, self._models, self._providers, self._grants, self._orgs, self._teams):
            cache.clear()
        for callback in self.on_invalidate:
            result = callback()
            if result is not None:
                await result

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                version = await self.store.catalogue_version()
            except DependencyUnavailable:
                continue
            except Exception:  # keep polling whatever a transient store error looks like
                log.exception("catalogue version poll failed")
                continue
            if self._version is not None and version != self._version:
                await self.invalidate()
            self._version = version

    async def start(self, poll_interval_s: float) -> None:
        try:
            self._version = await self.store.catalogue_version()
        except DependencyUnavailable:
            self._version = None
        self._poller = asyncio.create_task(self._poll(poll_interval_s), name="catalogue-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
