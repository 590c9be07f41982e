"""The catalogue cache: concurrent misses share one store read, a caller going away never cancels the read the
others wait for, and an invalidation overtaking a read keeps what it read out of the cache."""

from __future__ import annotations

import asyncio

import pytest

from odock.errors import Unauthorized
from odock.state.catalogue import Catalogue
from odock.state.keys import hash_key
from odock.state.records import ApiKeyRecord

SECRET = "sk-odock-test-0123456789"


class SlowStore:
    """Just the reads the cache makes, each counted and held until released."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.release = asyncio.Event()

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        self.reads.append("key")
        await self.release.wait()
        if key_hash != hash_key(SECRET):
            return None
        return ApiKeyRecord(
            id="k1",
            name="app",
            key_hash=key_hash,
            key_preview="sk-…789",
            type="standard",
            organisation_id="o1",
        )

    async def granted_model_ids(self, api_key_id: str) -> frozenset[str]:
        self.reads.append("grants")
        await self.release.wait()
        return frozenset({"m1"})


def catalogue() -> tuple[Catalogue, SlowStore]:
    store = SlowStore()
    return Catalogue(store), store  # type: ignore[arg-type]


async def test_fifty_concurrent_misses_read_the_store_once() -> None:
    cat, store = catalogue()
    keys = [asyncio.ensure_future(cat.authenticate(SECRET)) for _ in range(50)]
    grants = [asyncio.ensure_future(cat.grants("k1")) for _ in range(50)]
    await asyncio.sleep(0)
    store.release.set()
    assert {k.id for k in await asyncio.gather(*keys)} == {"k1"}
    assert set(await asyncio.gather(*grants)) == {frozenset({"m1"})}
    assert sorted(store.reads) == ["grants", "key"]
    await cat.authenticate(SECRET)  # cached now
    assert len(store.reads) == 2


async def test_unknown_keys_are_shared_misses_too() -> None:
    cat, store = catalogue()
    calls = [asyncio.ensure_future(cat.authenticate("sk-wrong")) for _ in range(20)]
    await asyncio.sleep(0)
    store.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, Unauthorized) for r in results) and store.reads == ["key"]


async def test_a_caller_going_away_does_not_cancel_the_shared_read() -> None:
    cat, store = catalogue()
    first = asyncio.ensure_future(cat.authenticate(SECRET))
    second = asyncio.ensure_future(cat.authenticate(SECRET))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    store.release.set()
    assert (await second).id == "k1" and store.reads == ["key"]


async def test_a_read_overtaken_by_an_invalidation_is_not_cached() -> None:
    cat, store = catalogue()
    pending = asyncio.ensure_future(cat.grants("k1"))
    await asyncio.sleep(0)
    await cat.invalidate()  # the catalogue changed while the read was on its way
    store.release.set()
    await pending
    await cat.grants("k1")
    assert store.reads == ["grants", "grants"]
