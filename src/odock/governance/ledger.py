"""Budget and quota windows: atomic check-and-reserve across every matching window, settle, release.

A window holds `used` (settled) and `reserved` (in flight). Reserve admits only if, for EVERY window,
`used + reserved + amount <= limit` (an amount of 0 — ERRORS/LATENCY quotas, unpriced models — needs
`used + reserved < limit`), then adds all amounts or none. Settle replaces each reserved amount by the actual one;
release is a settle to zero. All three are idempotent per reservation id (`<request id>/<nonce>`: a client that
reuses an X-Request-Id can never ride on another call's reservation).

`LocalLedger` (embedded mode; also the cluster fail-open fallback): windows in memory, loaded once from SQL per
window, checked and updated without awaiting (atomic under asyncio); settled amounts summed per window and written
behind to SQL by `flush()` (one charge row per window per flush, not per call). Crash semantics: in-flight
reservations die with the process (so do their calls); charges settled in the last flush interval are lost (the
window under-counts by at most that much after restart).

`RedisLedger` (cluster mode): windows `used`/`reserved` in Redis hashes, one Lua script per reserve and per
settle, run through the lean pipelined runner of `resp` (they sit on the request path); PostgreSQL is the durable
ledger. Settle writes the charges to PostgreSQL FIRST (idempotent rows per reservation and window), then settles in
Redis. Settles are batched: those arriving within a few ms of each other (or while a batch is in flight) share one
PostgreSQL statement and then one Redis write, and each caller returns once its own batch is durable and settled.
Windows missing in Redis (all of them at once: the reserve script reports every one) are rebuilt from PostgreSQL's
`used`. Reconciliation settles a stale reservation from its PostgreSQL charges when they exist (the process died
between the two writes), otherwise releases it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from odock.governance.resp import LuaScript, ScriptRunner
from odock.governance.store import GovernanceStore

log = logging.getLogger("odock.governance")


@dataclass(frozen=True, slots=True)
class WindowRef:
    """One budget or quota window (the definition's current period)."""

    key: str  # "<b|q>:<definition id>:<start epoch s>"
    kind: str  # "budget" | "quota"
    definition_id: str
    start: datetime
    end: datetime
    limit: int


@dataclass(slots=True)
class Item:
    """One window to reserve `amount` in."""

    ref: WindowRef
    amount: int


def _window_row(ref: WindowRef) -> tuple[str, str, str, datetime, datetime, int]:
    return ref.key, ref.kind, ref.definition_id, ref.start, ref.end, ref.limit


def _fits(used: int, reserved: int, amount: int, limit: int) -> bool:
    if amount > 0:
        return used + reserved + amount <= limit
    return used + reserved < limit


# --- embedded ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    used: int
    reserved: int
    end: float  # epoch seconds


class LocalLedger:
    """Windows in process memory with SQL write-behind."""

    def __init__(self, store: GovernanceStore, *, reservation_ttl_s: float) -> None:
        self._store = store
        self._ttl = reservation_ttl_s
        self._windows: dict[str, _Window] = {}
        self._reservations: dict[str, tuple[dict[str, int], float]] = {}
        # settled amounts not yet in SQL, summed per window; a failed flush is retried under its own ids
        self._pending: dict[str, int] = {}
        self._retry: list[tuple[str, str, int]] = []
        self._load_lock = asyncio.Lock()

    async def _load(self, refs: list[WindowRef]) -> None:
        async with self._load_lock:
            refs = [ref for ref in refs if ref.key not in self._windows]
            used = await self._store.windows_used([_window_row(ref) for ref in refs])
            for ref, value in zip(refs, used, strict=True):
                self._windows.setdefault(ref.key, _Window(value, 0, ref.end.timestamp()))

    async def reserve(self, reservation_id: str, items: Sequence[Item]) -> int:
        """Reserve every item or none; return -1 when admitted, else the index of the first full window."""
        missing = [i.ref for i in items if i.ref.key not in self._windows]
        if missing:
            await self._load(missing)
        # from here on nothing awaits: the check and the apply are one atomic step for the event loop
        if reservation_id in self._reservations:
            return -1
        for index, item in enumerate(items):
            w = self._windows[item.ref.key]
            if not _fits(w.used, w.reserved, item.amount, item.ref.limit):
                return index
        for item in items:
            self._windows[item.ref.key].reserved += item.amount
        self._reservations[reservation_id] = (
            {item.ref.key: item.amount for item in items},
            time.monotonic() + self._ttl,
        )
        return -1

    async def settle(self, reservation_id: str, actual: dict[str, int]) -> dict[str, int] | None:
        """Replace the reservation by `actual` per window; return each window's new `used` (None: nothing held)."""
        held = self._reservations.pop(reservation_id, None)
        if held is None:
            return None
        result: dict[str, int] = {}
        for key, estimate in held[0].items():
            w = self._windows.get(key)
            amount = actual.get(key, 0)
            if w is not None:
                left = w.reserved - estimate
                w.reserved = left if left > 0 else 0
                w.used += amount
                result[key] = w.used
            if amount:
                self._pending[key] = self._pending.get(key, 0) + amount
        return result

    async def release(self, reservation_id: str) -> None:
        """Free a reservation without charging it."""
        await self.settle(reservation_id, {})

    def snapshot(self, key: str) -> tuple[int, int] | None:
        """Return (used, reserved) of a loaded window (tests, admin)."""
        w = self._windows.get(key)
        return None if w is None else (w.used, w.reserved)

    async def flush(self) -> None:
        """Write what was settled since the last flush to SQL: one charge per window, named by this flush.

        In one process the reservations are already exactly-once in memory, so SQL only needs each window's
        total; a row per window per flush keeps the table small (not a row per call). A failed or interrupted
        flush is retried under the same ids, which `record_charges` writes at most once.
        """
        if self._pending:
            flush_id = f"flush/{uuid.uuid4().hex}"
            self._retry += [(flush_id, key, amount) for key, amount in self._pending.items()]
            self._pending = {}
        if not self._retry:
            return
        await self._store.record_charges(self._retry)
        self._retry = []

    async def reconcile(self) -> int:
        """Release reservations older than the TTL and forget ended windows; return how many were released."""
        now = time.monotonic()
        stale = [rid for rid, (_, expiry) in self._reservations.items() if expiry <= now]
        for rid in stale:
            await self.release(rid)
        wall = time.time()
        for key in [k for k, w in self._windows.items() if w.end < wall - 86400 and not w.reserved]:
            del self._windows[key]
        return len(stale)


# --- cluster -----------------------------------------------------------------------------------------------------

# {3}: already held; {2, i...}: windows i... are missing (every one, so one rebuild round fixes a cold start);
# {1, i}: window i is full; {0}: reserved
RESERVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {3} end
local n = #KEYS - 2
local used, reserved, missing = {}, {}, {2}
for i = 1, n do
  local h = redis.call('HMGET', KEYS[2 + i], 'used', 'reserved')
  if h[1] then
    used[i], reserved[i] = tonumber(h[1]), tonumber(h[2]) or 0
  else
    missing[#missing + 1] = i
  end
end
if #missing > 1 then return missing end
for i = 1, n do
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  if amount > 0 then
    if used[i] + reserved[i] + amount > limit then return {1, i} end
  elseif used[i] + reserved[i] >= limit then return {1, i} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n do
  local w, amount = KEYS[2 + i], tonumber(ARGV[2 + 2 * i])
  redis.call('HINCRBY', w, 'reserved', amount)
  redis.call('HSET', KEYS[1], w, amount)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return {0}
"""

SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local actual = {}
for i = 2, #ARGV, 2 do actual[ARGV[i]] = tonumber(ARGV[i + 1]) end
local held = redis.call('HGETALL', KEYS[1])
local out = {1}
for j = 1, #held, 2 do
  local w, estimate = held[j], tonumber(held[j + 1])
  local amount = actual[w] or 0
  if redis.call('EXISTS', w) == 1 then
    -- `0 - estimate`, not `-estimate`: Lua's -0 reaches Redis as "-0", which HINCRBY refuses (an item reserved at 0
    -- would fail the whole settle, leaving the reservation held for ever)
    local left = redis.call('HINCRBY', w, 'reserved', 0 - estimate)
    if left < 0 then redis.call('HSET', w, 'reserved', 0) end
    out[#out + 1] = w
    out[#out + 1] = redis.call('HINCRBY', w, 'used', amount)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return out
"""

# KEYS: windows; ARGV: `used` and expiry (epoch ms) per window. A window already there keeps its counters.
INIT_LUA = """
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'used') == 0 then
    redis.call('HSET', KEYS[i], 'used', ARGV[2 * i - 1])
    redis.call('HSETNX', KEYS[i], 'reserved', 0)
    redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
  end
end
return 1
"""

ADD_USED_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'used', ARGV[i]) end
end
return 1
"""

STALE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""

_RESERVE = LuaScript(RESERVE_LUA)
_SETTLE = LuaScript(SETTLE_LUA)
_INIT = LuaScript(INIT_LUA)
_ADD_USED = LuaScript(ADD_USED_LUA)
_STALE = LuaScript(STALE_LUA)

# windows stay in Redis a day past their end, so late settles still find them
_WINDOW_GRACE_MS = 86_400_000
# the first attempt finds every missing window, the second runs after rebuilding them all; a third only matters
# when a window vanished again in between
_RESERVE_ATTEMPTS = 3
# settles per batch (one PostgreSQL statement, one Redis write), and how long a batch waits for company: a few
# ms of a reservation held longer, against a statement and a write per call
MAX_BATCH = 500
SETTLE_LINGER_S = 0.005

_Call = tuple[LuaScript, list[str], list[Any]]


@dataclass(slots=True)
class _Settle:
    """One caller's settle, waiting for its batch."""

    reservation_id: str
    actual: dict[str, int]
    charges: list[tuple[str, str, int]]
    future: asyncio.Future[dict[str, int] | None]


class RedisLedger:
    """Windows in Redis (Lua, atomic across processes), settled amounts written through to PostgreSQL."""

    def __init__(
        self,
        redis: Any,
        store: GovernanceStore,
        prefix: str,
        *,
        reservation_ttl_s: float,
        runner: ScriptRunner | None = None,
    ) -> None:
        self._redis = redis
        self._store = store
        self._prefix = prefix
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._expiry_key = f"{prefix}:rexp"
        # reserve and settle run per request: the lean pipelined runner, not redis-py (~120 µs per call)
        self._runner = runner or ScriptRunner.like(redis)
        self._owns_runner = runner is None
        # settles waiting for the next batch, and the task writing them
        self._queue: list[_Settle] = []
        self._writer: asyncio.Task[None] | None = None
        # charges PostgreSQL refused; retried by reconcile() so the durable ledger catches up
        self._unwritten: list[tuple[str, str, int]] = []

    def window_key(self, key: str) -> str:
        """Return the Redis key of a window."""
        return f"{self._prefix}:w:{key}"

    def _reservation_key(self, reservation_id: str) -> str:
        return f"{self._prefix}:r:{reservation_id}"

    async def _rebuild(self, refs: list[WindowRef]) -> None:
        used = await self._store.windows_used([_window_row(ref) for ref in refs])
        args: list[Any] = []
        for ref, value in zip(refs, used, strict=True):
            args += [value, int(ref.end.timestamp() * 1000) + _WINDOW_GRACE_MS]
        await self._runner.run(_INIT, [self.window_key(ref.key) for ref in refs], args)

    def reserve_call(
        self, reservation_id: str, items: Sequence[Item]
    ) -> tuple[LuaScript, list[str], list[Any]]:
        """The reserve as a script call, for a caller sending it together with others (`run_many`)."""
        keys = [self._reservation_key(reservation_id), self._expiry_key]
        keys += [self.window_key(i.ref.key) for i in items]
        args: list[Any] = [reservation_id, self._ttl_ms]
        for item in items:
            args += [item.ref.limit, item.amount]
        return _RESERVE, keys, args

    @staticmethod
    def reserve_outcome(reply: Any) -> int | None:
        """-1 admitted, the index of the first full window, or None when windows are missing in Redis."""
        status = reply[0]
        if status == 0 or status == 3:
            return -1
        if status == 1:
            return int(reply[1]) - 1
        return None

    async def reserve(self, reservation_id: str, items: Sequence[Item], reply: Any = None) -> int:
        """Reserve every item or none in one script; return -1 when admitted, else the first full window.

        `reply`: the reply of a `reserve_call` already sent (only its missing windows are left to handle)."""
        call = self.reserve_call(reservation_id, items)
        for _ in range(_RESERVE_ATTEMPTS):
            if reply is None:
                reply = await self._runner.run(*call)
            outcome = self.reserve_outcome(reply)
            if outcome is not None:
                return outcome
            await self._rebuild([items[int(i) - 1].ref for i in reply[1:]])
            reply = None
        # windows evicted as fast as they are rebuilt: a Redis fault, handled like Redis being unavailable
        raise RedisError("budget windows could not be rebuilt in Redis")

    async def settle(self, reservation_id: str, actual: dict[str, int]) -> dict[str, int] | None:
        """Write charges to PostgreSQL, then settle in Redis; return each window's new `used` (None: not held).

        Settles are batched: the first one starts a batch that collects the others arriving within
        `SETTLE_LINGER_S` (and while a batch is being written), so one PostgreSQL statement and one Redis write
        serve many calls; each caller still returns only once its own charges are durable and settled."""
        charges = [(reservation_id, key, amount) for key, amount in actual.items() if amount]
        future: asyncio.Future[dict[str, int] | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Settle(reservation_id, actual, charges, future))
        if self._writer is None:
            # a task rather than the first caller: cancelling one caller must not cancel the others' write
            self._writer = asyncio.create_task(self._settle_batches(), name="odock-ledger-settle")
        return await future

    async def _settle_batches(self) -> None:
        batch: list[_Settle] = []
        try:
            while self._queue:
                if SETTLE_LINGER_S > 0:
                    await asyncio.sleep(SETTLE_LINGER_S)
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._settle_batch(batch)
                except Exception as exc:
                    _fail(batch, exc)
                batch = []
        except BaseException:
            # cancelled (shutdown): nobody may wait for ever; reconciliation settles what is left
            _fail(batch + self._queue, RuntimeError("governance ledger settle cancelled"))
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _settle_batch(self, batch: list[_Settle]) -> None:
        charges = [c for entry in batch for c in entry.charges]
        fresh = [True] * len(charges)
        if charges:
            try:
                fresh = await self._store.record_charges(charges)
            except Exception:
                log.warning("governance ledger write failed; will retry", exc_info=True)
                self._unwritten.extend(charges)
        calls: list[_Call] = []
        for entry in batch:
            args: list[Any] = [entry.reservation_id]
            for key, amount in entry.actual.items():
                args += [self.window_key(key), amount]
            calls.append((_SETTLE, [self._reservation_key(entry.reservation_id), self._expiry_key], args))
        replies = await self._runner.run_many(calls)
        results: list[dict[str, int] | None] = []
        lost: list[tuple[str, int]] = []
        start, strip = 0, len(self._prefix) + 3
        for entry, reply in zip(batch, replies, strict=False):
            flags = fresh[start : start + len(entry.charges)]
            start += len(entry.charges)
            if reply[0] == 1:
                results.append({_text(reply[i])[strip:]: int(reply[i + 1]) for i in range(1, len(reply), 2)})
                continue
            # Not held in Redis: already settled (repeat call, or reconciliation) — or Redis lost it / a
            # reconciler released it as stale. Only the latter leave charges PostgreSQL had not seen: add those.
            lost += [(key, amount) for (_, key, amount), new in zip(entry.charges, flags, strict=True) if new]
            results.append(None)
        if lost:
            await self._runner.run(_ADD_USED, [self.window_key(k) for k, _ in lost], [a for _, a in lost])
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():  # done: its caller was cancelled
                entry.future.set_result(result)

    async def release(self, reservation_id: str) -> None:
        """Free a reservation without charging it."""
        await self.settle(reservation_id, {})

    async def snapshot(self, key: str) -> tuple[int, int] | None:
        """Return (used, reserved) of a window in Redis (tests, admin)."""
        values = await self._redis.hmget(self.window_key(key), "used", "reserved")
        if values[0] is None:
            return None
        return int(values[0]), int(values[1] or 0)

    async def reconcile(self, batch: int = 100) -> int:
        """Settle (from PostgreSQL charges) or release reservations past their TTL; return how many."""
        if self._unwritten:
            pending, self._unwritten = self._unwritten, []
            try:
                await self._store.record_charges(pending)
            except Exception:
                self._unwritten = pending + self._unwritten
                log.warning("governance ledger retry failed", exc_info=True)
        stale = await self._runner.run(_STALE, [self._expiry_key], [batch])
        for raw in stale:
            rid = _text(raw)
            charges = await self._store.charges_for(rid)
            args: list[Any] = [rid]
            for key, amount in charges.items():
                args += [self.window_key(key), amount]
            await self._runner.run(_SETTLE, [self._reservation_key(rid), self._expiry_key], args)
        return len(stale)

    async def close(self) -> None:
        """Let the group commit in flight finish, then close the script runner's connection (idempotent)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer])
        if self._owns_runner:
            await self._runner.close()


def _fail(waiters: list[_Settle], error: BaseException) -> None:
    for entry in waiters:
        if not entry.future.done():
            entry.future.set_exception(error)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
