"""Where cached answers live: process memory (embedded mode: bounded by bytes, least recently used evicted) or
Redis (cluster mode: every entry expires with its TTL), and how identical concurrent misses coalesce.

An entry's address names what it belongs to, so purges need no index:

    {organisation id}:{namespace}:{model id}:{key id, or "-" when shared by the organisation}:{sha256}
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from odock import metrics
from odock.model import StreamEvent

SHARED = "-"


class Entry(msgspec.Struct, array_like=True):
    """One cached answer: when it was stored (unix seconds), what the original cost, and its events."""

    created: float
    cost_nanos: int | None
    events: list[StreamEvent]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


def encode_entry(entry: Entry) -> bytes:
    return _encode(entry)


def decode_entry(data: bytes) -> Entry:
    return _decode(data)


def address(organisation: str, namespace: str, model_id: str, key_id: str | None, digest: str) -> str:
    return f"{organisation}:{namespace}:{model_id}:{key_id or SHARED}:{digest}"


@dataclass(frozen=True, slots=True)
class PurgeFilter:
    """Which entries of one organisation a purge removes (None: any); `key` matches entries scoped to that key."""

    organisation: str
    namespace: str | None = None
    model_id: str | None = None
    key_id: str | None = None

    def matches(self, addr: str) -> bool:
        org, namespace, model_id, key_id, _ = addr.split(":", 4)
        return (
            org == self.organisation
            and self.namespace in (None, namespace)
            and self.model_id in (None, model_id)
            and self.key_id in (None, key_id)
        )

    def pattern(self) -> str:
        """The Redis SCAN pattern of the matching addresses (ids and namespaces hold no glob characters)."""
        parts = [self.organisation, self.namespace, self.model_id, self.key_id]
        return ":".join(part or "*" for part in parts) + ":*"


class CacheStore(Protocol):
    async def get(self, addr: str) -> bytes | None: ...

    async def put(self, addr: str, data: bytes, ttl_s: float) -> None: ...

    async def purge(self, which: PurgeFilter) -> int: ...

    async def lock(self, addr: str, ttl_s: float) -> str | None:
        """Take the address's cross-process fill lock: a token, or None when another process holds it."""
        ...

    async def unlock(self, addr: str, token: str) -> None: ...

    async def locked(self, addr: str) -> bool: ...


class MemoryStore:
    """Embedded mode: entries in this process, at most `max_bytes` in total, the least recently used evicted."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, addr: str) -> bytes | None:
        hit = self._entries.get(addr)
        if hit is None:
            return None
        expires, data = hit
        if expires <= time.monotonic():
            self._drop(addr, "expired")
            return None
        self._entries.move_to_end(addr)
        return data

    async def put(self, addr: str, data: bytes, ttl_s: float) -> None:
        if len(data) > self.max_bytes:
            return
        if addr in self._entries:
            self._drop(addr, None)
        self._entries[addr] = (time.monotonic() + ttl_s, data)
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)), "lru")
        metrics.CACHE_BYTES.set(self.bytes)

    def _drop(self, addr: str, reason: str | None) -> None:
        _, data = self._entries.pop(addr)
        self.bytes -= len(data)
        metrics.CACHE_BYTES.set(self.bytes)
        if reason is not None:
            metrics.child(metrics.CACHE_EVICTIONS, reason).inc()

    async def purge(self, which: PurgeFilter) -> int:
        doomed = [addr for addr in self._entries if which.matches(addr)]
        for addr in doomed:
            self._drop(addr, "purge")
        return len(doomed)

    async def lock(self, addr: str, ttl_s: float) -> str | None:
        return "local"  # one process: the coalescer's in-flight table is the lock

    async def unlock(self, addr: str, token: str) -> None:
        return None

    async def locked(self, addr: str) -> bool:
        return False


# delete the lock only if it is still ours (it may have expired and been taken by another process)
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisStore:
    """Cluster mode: entries in Redis with their TTL (Redis bounds the memory: give it a maxmemory policy), and
    a fill lock per address so that one process of the cluster calls the upstream for a stampede."""

    ENTRY = "odock:cache:e:"
    LOCK = "odock:cache:l:"

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._unlock = redis.register_script(_UNLOCK)

    async def get(self, addr: str) -> bytes | None:
        data: bytes | None = await self.redis.get(self.ENTRY + addr)
        return data

    async def put(self, addr: str, data: bytes, ttl_s: float) -> None:
        await self.redis.set(self.ENTRY + addr, data, px=max(1, int(ttl_s * 1000)))

    async def purge(self, which: PurgeFilter) -> int:
        removed = 0
        batch: list[bytes] = []
        async for name in self.redis.scan_iter(match=self.ENTRY + which.pattern(), count=1000):
            batch.append(name)
            if len(batch) >= 500:
                removed += await self.redis.unlink(*batch)
                batch = []
        if batch:
            removed += await self.redis.unlink(*batch)
        metrics.child(metrics.CACHE_EVICTIONS, "purge").inc(removed)
        return removed

    async def lock(self, addr: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        taken = await self.redis.set(self.LOCK + addr, token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if taken else None

    async def unlock(self, addr: str, token: str) -> None:
        await self._unlock(keys=[self.LOCK + addr], args=[token])

    async def locked(self, addr: str) -> bool:
        return bool(await self.redis.exists(self.LOCK + addr))


@dataclass(slots=True)
class Fill:
    """A miss this call answers from the upstream: others wait on `done` (this process) or the lock (others)."""

    addr: str
    done: asyncio.Future[None] | None
    token: str | None


class Coalescer:
    """Identical concurrent misses wait for the first one's answer (bounded), so a stampede calls the upstream
    once: an in-process future per address, and in cluster mode the store's lock across processes."""

    POLL_S = (0.005, 0.01, 0.02, 0.05)

    def __init__(self, store: CacheStore, *, wait_s: float, lock_ttl_s: float) -> None:
        self.store = store
        self.wait_s = wait_s
        self.lock_ttl_s = lock_ttl_s
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def lookup(self, addr: str) -> tuple[bytes | None, Fill | None]:
        """The cached answer, or the fill this call must make (a waiter whose wait ran out fills without the
        lock); a call that waited for another's fill is counted once in gateway_cache_coalesced_waits_total."""
        deadline = time.monotonic() + self.wait_s
        waited = False
        while True:
            data = await self.store.get(addr)
            if data is not None:
                return data, None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, Fill(addr, None, None)
            leader = self._inflight.get(addr)
            if leader is not None:
                waited = self._count(waited)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(leader), remaining)
                continue
            done = asyncio.get_running_loop().create_future()
            self._inflight[addr] = done
            token = await self._lock(addr, done)
            if token is not None:
                return None, Fill(addr, done, token)
            # another process fills it: wait there, this process's other callers waiting on `done`
            waited = self._count(waited)
            try:
                data = await self._poll(addr, deadline)
            finally:
                self._release(addr, done)
            if data is not None:
                return data, None

    async def _lock(self, addr: str, done: asyncio.Future[None]) -> str | None:
        try:
            return await self.store.lock(addr, self.lock_ttl_s)
        except BaseException:
            self._release(addr, done)
            raise

    @staticmethod
    def _count(waited: bool) -> bool:
        if not waited:
            metrics.CACHE_COALESCED.inc()
        return True

    async def _poll(self, addr: str, deadline: float) -> bytes | None:
        """Wait for another process's fill: its entry, or its lock gone (it failed: try to lead), or the end."""
        for attempt in range(1_000_000):
            await asyncio.sleep(self.POLL_S[min(attempt, len(self.POLL_S) - 1)])
            data = await self.store.get(addr)
            if data is not None or time.monotonic() >= deadline or not await self.store.locked(addr):
                return data
        return None

    def _release(self, addr: str, done: asyncio.Future[None]) -> None:
        if self._inflight.get(addr) is done:
            del self._inflight[addr]
        if not done.done():
            done.set_result(None)

    async def finish(self, fill: Fill) -> None:
        """End a fill, stored or not: wake this process's waiters, free the cluster lock."""
        if fill.done is not None:
            self._release(fill.addr, fill.done)
        if fill.token is not None:
            await self.store.unlock(fill.addr, fill.token)
