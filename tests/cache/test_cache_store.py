"""The embedded store's bounds (total bytes, least recently used first; TTL) and the coalescer's bounded wait."""

from __future__ import annotations

import asyncio

from odock import metrics
from odock.cache.store import Coalescer, MemoryStore, PurgeFilter, address


def addr(digest: str, namespace: str = "ns") -> str:
    return address("org", namespace, "model", None, digest)


async def test_total_bytes_are_bounded_least_recently_used_first() -> None:
    store = MemoryStore(max_bytes=300)
    evicted = metrics.child(metrics.CACHE_EVICTIONS, "lru")
    before = evicted._value.get()
    for name in "abc":
        await store.put(addr(name), name.encode() * 100, ttl_s=60)
    assert await store.get(addr("a")) is not None  # a is now the most recently used
    await store.put(addr("d"), b"d" * 100, ttl_s=60)
    assert await store.get(addr("b")) is None and await store.get(addr("a")) is not None
    assert store.bytes == 300 and evicted._value.get() == before + 1
    await store.put(addr("huge"), b"x" * 301, ttl_s=60)  # larger than the whole store: not kept
    assert await store.get(addr("huge")) is None and store.bytes == 300


async def test_entries_expire_with_their_ttl() -> None:
    store = MemoryStore(max_bytes=1000)
    await store.put(addr("a"), b"a", ttl_s=0.01)
    await asyncio.sleep(0.02)
    assert await store.get(addr("a")) is None and store.bytes == 0


async def test_purge_matches_the_address_parts() -> None:
    store = MemoryStore(max_bytes=1000)
    await store.put(addr("a", "one"), b"a", ttl_s=60)
    await store.put(addr("b", "two"), b"b", ttl_s=60)
    await store.put(address("other-org", "one", "model", None, "c"), b"c", ttl_s=60)
    assert await store.purge(PurgeFilter("org", namespace="one")) == 1
    assert await store.purge(PurgeFilter("org")) == 1
    assert await store.get(address("other-org", "one", "model", None, "c")) == b"c"
    assert PurgeFilter("org", model_id="m").pattern() == "org:*:m:*:*"


async def test_a_waiter_goes_upstream_itself_when_the_first_call_takes_too_long() -> None:
    coalescer = Coalescer(MemoryStore(1000), wait_s=0.05, lock_ttl_s=1)
    data, fill = await coalescer.lookup(addr("a"))
    assert data is None and fill is not None and fill.done is not None  # the first: it fills
    data, waiter = await coalescer.lookup(addr("a"))  # the second waits 50 ms, then fills without the lock
    assert data is None and waiter is not None and waiter.done is None
    await coalescer.store.put(addr("a"), b"answer", ttl_s=60)
    await coalescer.finish(fill)
    assert await coalescer.lookup(addr("a")) == (b"answer", None)
