"""The hot path's view of MCP servers and grants: an in-process cache in front of the store, dropped with the
catalogue's (same invalidation: admin changes here, the version poll and Redis pub/sub elsewhere)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from odock.errors import DependencyUnavailable
from odock.mcp.records import McpServer
from odock.mcp.service import McpCatalogueService
from odock.state.catalogue import Catalogue, TTLCache
from odock.state.sql import SqlStore


class McpDirectory:
    def __init__(self, store: SqlStore, catalogue: Catalogue, *, ttl_s: float = 300.0) -> None:
        self.service = McpCatalogueService(store)
        self.ttl_s = ttl_s
        self._servers: TTLCache[McpServer | None] = TTLCache(10_000)
        self._grants: TTLCache[frozenset[str]] = TTLCache(100_000)
        catalogue.on_invalidate.append(self.invalidate)

    def invalidate(self) -> None:
        self._servers.clear()
        self._grants.clear()

    async def _cached(self, cache: TTLCache[Any], key: Any, load: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        hit = cache.get(key, now)
        if hit is not None and hit[1]:
            return hit[0]
        try:
            value = await load()
        except DependencyUnavailable:
            if hit is not None:
                return hit[0]  # stale-if-error, as the catalogue does
            raise
        cache.put(key, value, now + self.ttl_s)
        return value

    async def server(self, organisation_id: str, ref: str) -> McpServer | None:
        """The server by id, else by slug, within the key's organisation."""
        key = (organisation_id, ref)
        hit = self._servers.get(key, time.monotonic())
        if hit is not None and hit[1]:  # the common case, without a load closure and a coroutine
            return hit[0]
        return await self._cached(  # type: ignore[no-any-return]
            self._servers, key, lambda: self.service.find_server(organisation_id, ref)
        )

    async def grants(self, api_key_id: str) -> frozenset[str]:
        hit = self._grants.get(api_key_id, time.monotonic())
        if hit is not None and hit[1]:
            return hit[0]
        return await self._cached(  # type: ignore[no-any-return]
            self._grants, api_key_id, lambda: self.service.granted_server_ids(api_key_id)
        )
