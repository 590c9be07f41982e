"""Rate-limit counters: one gate call checks every scope's limits at once, then applies them all or none.

Algorithms (identical in both backends):
  W  sliding log (RPS, RPM): timestamps of admitted requests in the last window; admit while count < limit.
     Exact — "100 per minute" means no 60 s interval ever holds more than 100 admissions.
  B  token bucket (burst): capacity = burst, refilled at the scope's RPS (else RPM/60, else burst per second).
  L  concurrency lease: request tokens with an expiry; admit while live leases < max; post-flight removes the
     lease; a crashed process's leases expire after the lease TTL.
  T  token window (TPM): per-second buckets over the last 60 s; admit while sum + reservation <= limit. In Redis
     the sum is kept as a running total (each bucket subtracted once, when it leaves the window).
     Post-flight refunds (reservation − actual) into the bucket it was charged to, so unused tokens come back
     at once and the limit trips at exactly the configured value (no lockout from over-estimates).

`RedisLimiter` runs the check-and-apply as ONE Lua script (one round trip per gate, clock from Redis `TIME`, so
every process agrees on time). `LocalLimiter` does the same in process memory without awaiting, which makes it
atomic under asyncio (embedded mode: one process, exact).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from odock.governance.resp import LuaScript, ScriptRunner

Kind = Literal["W", "B", "L", "T"]


@dataclass(slots=True, eq=False)
class Check:
    """One limit of one scope instance. Never changed once built (cached lists share them); not frozen because
    a frozen dataclass's constructor costs a `object.__setattr__` per field, and the final gate builds some per
    call."""

    kind: Kind
    key: str  # "<scope>:<id>:<limit>", prefixed by the backend
    limit: int
    param: float  # W: window ms; B: refill tokens per second; L: lease TTL ms; T: tokens to reserve
    code: str  # deny code, e.g. "rpm_exceeded"
    scope: str  # "global" | "organisation" | "team" | "api_key" | "model"
    limit_name: str  # "requests_per_minute" | …


@dataclass(slots=True)
class GateResult:
    """Outcome of one gate: admitted, or the index of the first refusing check and when to retry."""

    ok: bool
    now_ms: int
    denied: int = -1
    retry_ms: int = 0
    # per check when admitted: what is left after this request, and ms until the window frees a slot (for request
    # windows exact only for the tightest one, the one the X-RateLimit headers report; the others say "≤ window")
    remaining: list[int] = field(default_factory=list)
    reset_ms: list[int] = field(default_factory=list)


class Limiter(Protocol):
    async def gate(self, checks: list[Check], token: str) -> GateResult: ...

    async def release(self, leases: list[str], refunds: list[tuple[str, int, int]], token: str) -> None:
        """Remove lease `token` from each lease key; refund (key, second, tokens) into TPM buckets."""
        ...


# --- Redis -------------------------------------------------------------------------------------------------------

GATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = math.floor(now / 1000)
local token = ARGV[1]
local n = #KEYS
local rem, reset, tpm_oldest, levels = {}, {}, {}, {}
local tightest = nil  -- the request window with the least left: the only one whose reset the headers show
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local kind, limit, param = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local key = KEYS[i]
  if kind == 'W' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - param)
    local count = redis.call('ZCARD', key)
    if count >= limit then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return {1, i, oldest[2] and (tonumber(oldest[2]) + param - now) or param}
    end
    rem[i], reset[i] = limit - count - 1, param
    if tightest == nil or rem[i] < rem[tightest] then tightest = i end
  elseif kind == 'L' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local count = redis.call('ZCARD', key)
    if count >= limit then return {1, i, 1000} end
    rem[i], reset[i] = limit - count - 1, 0
  elseif kind == 'B' then
    local h = redis.call('HMGET', key, 't', 'ts')
    local tokens = limit
    if h[1] then tokens = math.min(limit, tonumber(h[1]) + (now - tonumber(h[2])) * param / 1000) end
    if tokens < 1 then return {1, i, math.ceil((1 - tokens) * 1000 / param)} end
    levels[i] = tokens
    rem[i], reset[i] = math.floor(tokens - 1), math.ceil((limit - tokens + 1) * 1000 / param)
  elseif kind == 'T' then
    -- buckets '<second>' plus a running total 't' and the oldest second 'o' not yet expired: expiring is
    -- amortized (a bucket is subtracted once, when its second leaves the window), so no scan per call
    local h = redis.call('HMGET', key, 't', 'o')
    local sum, oldest = tonumber(h[1]) or 0, tonumber(h[2]) or sec
    if oldest < sec - 59 then
      for s = oldest, sec - 60 do
        local v = redis.call('HGET', key, s)
        if v then sum = sum - tonumber(v) redis.call('HDEL', key, s) end
      end
      oldest = sec - 59
      redis.call('HSET', key, 't', sum, 'o', oldest)
    end
    if sum + param > limit then
      local retry = 60000
      if param <= limit then
        local freed = 0
        for s = oldest, sec do
          freed = freed + (tonumber(redis.call('HGET', key, s)) or 0)
          if sum - freed + param <= limit then retry = (s + 60) * 1000 - now break end
        end
      end
      return {1, i, retry}
    end
    if h[2] == false then tpm_oldest[i] = oldest end  -- a new window: record where it starts
    rem[i], reset[i] = limit - sum - param, 60000
  end
end
local out = {0, now}
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local kind, limit, param = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local key = KEYS[i]
  if kind == 'W' then
    redis.call('ZADD', key, now, token)
    redis.call('PEXPIRE', key, math.ceil(param) + 1000)
  elseif kind == 'L' then
    redis.call('ZADD', key, now + param, token)
    redis.call('PEXPIRE', key, math.ceil(param) + 1000)
  elseif kind == 'B' then
    redis.call('HSET', key, 't', tostring(levels[i] - 1), 'ts', now)
    redis.call('PEXPIRE', key, math.ceil(limit * 1000 / param) + 1000)
  elseif kind == 'T' then
    if param > 0 then
      redis.call('HINCRBY', key, sec, param)
      redis.call('HINCRBY', key, 't', param)
    end
    if tpm_oldest[i] then redis.call('HSET', key, 'o', tpm_oldest[i]) end
    redis.call('PEXPIRE', key, 61000)
  end
  out[#out + 1] = rem[i]
  out[#out + 1] = reset[i]
end
if tightest then
  local oldest = redis.call('ZRANGE', KEYS[tightest], 0, 0, 'WITHSCORES')
  local param = tonumber(ARGV[2 + (tightest - 1) * 3 + 2])
  out[2 + tightest * 2] = tonumber(oldest[2]) + param - now
end
return out
"""

RELEASE_LUA = """
local token = ARGV[1]
local nl = tonumber(ARGV[2])
for i = 1, nl do redis.call('ZREM', KEYS[i], token) end
for i = nl + 1, #KEYS do
  local base = 3 + (i - nl - 1) * 2
  local field, amount = ARGV[base], tonumber(ARGV[base + 1])
  local v = redis.call('HGET', KEYS[i], field)
  if v then  -- the bucket is still in the window: refund it and the running total alike
    -- `0 - back`: Lua's -0 reaches Redis as "-0", which HINCRBY refuses (a refund of 0 failed the rest)
    local back = 0 - math.min(tonumber(v), amount)
    redis.call('HINCRBY', KEYS[i], field, back)
    redis.call('HINCRBY', KEYS[i], 't', back)
  end
end
return 1
"""


class RedisLimiter:
    """Cluster-wide counters in Redis; one EVALSHA per gate."""

    def __init__(self, redis: Any, prefix: str, runner: ScriptRunner | None = None) -> None:
        # the gates sit on the request path: they go through the lean pipelined runner, not redis-py
        self._runner = runner or ScriptRunner.like(redis)
        self._owns_runner = runner is None
        self._prefix = prefix + ":rl:"
        self._gate = LuaScript(GATE_LUA)
        self._release = LuaScript(RELEASE_LUA)

    async def gate(self, checks: list[Check], token: str) -> GateResult:
        """Check and apply every limit atomically in Redis."""
        return self.gate_result(await self._runner.run(*self.gate_call(checks, token)))

    def gate_call(self, checks: list[Check], token: str) -> tuple[LuaScript, list[str], list[Any]]:
        """The gate as a script call, for a caller sending it together with others (`ScriptRunner.run_many`)."""
        keys = [self._prefix + c.key for c in checks]
        args: list[Any] = [token]
        for c in checks:
            args += [c.kind, c.limit, _num(c.param)]
        return self._gate, keys, args

    @staticmethod
    def gate_result(reply: Any) -> GateResult:
        """Read the gate script's reply."""
        if int(reply[0]) != 0:
            return GateResult(False, 0, int(reply[1]) - 1, max(0, int(reply[2])))
        now_ms = int(reply[1])
        values = [int(v) for v in reply[2:]]
        return GateResult(True, now_ms, remaining=values[0::2], reset_ms=values[1::2])

    async def release(self, leases: list[str], refunds: list[tuple[str, int, int]], token: str) -> None:
        """Drop leases and refund unused tokens in one round trip."""
        if not leases and not refunds:
            return
        keys = [self._prefix + k for k in leases] + [self._prefix + r[0] for r in refunds]
        args: list[Any] = [token, len(leases)]
        for _, second, amount in refunds:
            args += [second, amount]
        await self._runner.run(self._release, keys, args)

    async def close(self) -> None:
        if self._owns_runner:
            await self._runner.close()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- in process --------------------------------------------------------------------------------------------------


class LocalLimiter:
    """Exact counters in this process's memory (embedded mode, and the Redis fail-open fallback)."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[int]] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._buckets: dict[str, list[float]] = {}
        # per TPM window: tokens by second (insertion order is time order) and their running total, so a call
        # neither scans nor sums the minute's buckets
        self._tokens: dict[str, dict[int, int]] = {}
        self._token_totals: dict[str, int] = {}
        self._expired_at: dict[
            str, int
        ] = {}  # per TPM window: the second its old buckets were last dropped at

    async def gate(self, checks: list[Check], token: str) -> GateResult:
        """Check and apply every limit; no await inside, so concurrent calls cannot interleave."""
        return self.gate_now(checks, token, int(time.time() * 1000))

    def gate_now(self, checks: list[Check], token: str, now: int) -> GateResult:  # noqa: C901 - older than the complexity rule; to split
        """`gate` at an explicit clock (ms since the epoch)."""
        sec = now // 1000
        remaining: list[int] = []
        reset: list[int] = []
        # what the check pass found, per check, for the apply pass (no second lookup, no allocation on a hit)
        found: list[Any] = []
        logs, all_leases, buckets_of, tokens_of = self._logs, self._leases, self._buckets, self._tokens
        expired_at = self._expired_at
        for i, c in enumerate(checks):
            kind, limit, param = c.kind, c.limit, c.param
            if kind == "W":
                log = logs.get(c.key)
                if log is None:
                    log = logs[c.key] = deque()
                edge = now - param
                while log and log[0] <= edge:
                    log.popleft()
                n = len(log)
                free_at = int(log[0] + param - now) if n else int(param)
                if n >= limit:
                    return GateResult(False, now, i, free_at)
                remaining.append(limit - n - 1)
                reset.append(free_at)
                found.append(log)
            elif kind == "L":
                leases = all_leases.get(c.key)
                if leases is None:
                    leases = all_leases[c.key] = {}
                if len(leases) >= limit:
                    # leases of calls that died without a post-flight expire; looked for only when they matter
                    for held, expiry in list(leases.items()):
                        if expiry <= now:
                            del leases[held]
                    if len(leases) >= limit:
                        return GateResult(False, now, i, 1000)
                remaining.append(limit - len(leases) - 1)
                reset.append(0)
                found.append(leases)
            elif kind == "B":
                state = buckets_of.get(c.key)
                level = float(limit)
                if state is not None:
                    level = min(level, state[0] + (now - state[1]) * param / 1000)
                if level < 1:
                    return GateResult(False, now, i, math.ceil((1 - level) * 1000 / param))
                remaining.append(math.floor(level - 1))
                reset.append(math.ceil((limit - level + 1) * 1000 / param))
                found.append(level)
            else:  # "T"
                buckets = tokens_of.get(c.key)
                if buckets is None:
                    buckets = tokens_of[c.key] = {}
                # seconds leave the minute only when the second changes: expired once per second and key
                if expired_at.get(c.key) == sec:
                    total = self._token_totals.get(c.key, 0)
                else:
                    total = self._expire_tokens(c.key, buckets, sec)
                    expired_at[c.key] = sec
                amount = int(param)
                if total + amount > limit:
                    retry = 60000
                    if amount <= limit:
                        freed = 0
                        for s in sorted(buckets):
                            freed += buckets[s]
                            if total - freed + amount <= limit:
                                retry = (s + 60) * 1000 - now
                                break
                    return GateResult(False, now, i, retry)
                remaining.append(limit - total - amount)
                reset.append(60000)
                found.append(buckets)
        totals = self._token_totals
        for c, state in zip(checks, found, strict=True):
            kind = c.kind
            if kind == "W":
                state.append(now)
            elif kind == "L":
                state[token] = now + int(c.param)
            elif kind == "B":
                buckets_of[c.key] = [state - 1, float(now)]
            elif c.param > 0:
                amount = int(c.param)
                state[sec] = state.get(sec, 0) + amount
                totals[c.key] = totals.get(c.key, 0) + amount
        return GateResult(True, now, remaining=remaining, reset_ms=reset)

    def _expire_tokens(self, key: str, buckets: dict[int, int], sec: int) -> int:
        """Drop the seconds that left the minute, oldest first; return the minute's running total. (After a clock
        step back, a second older than the first one stays until the first one goes: counted a little longer,
        never less.)"""
        total = self._token_totals.get(key, 0)
        while buckets:
            first = next(iter(buckets))
            if first > sec - 60:
                break
            total -= buckets.pop(first)
        self._token_totals[key] = total
        return total

    async def release(self, leases: list[str], refunds: list[tuple[str, int, int]], token: str) -> None:
        """Drop leases and refund unused tokens."""
        for key in leases:
            held = self._leases.get(key)
            if held is not None:
                held.pop(token, None)
        for key, second, amount in refunds:
            buckets = self._tokens.get(key)
            if buckets is not None and second in buckets:
                kept = buckets[second] - amount
                if kept < 0:
                    kept = 0
                self._token_totals[key] = self._token_totals.get(key, 0) + kept - buckets[second]
                buckets[second] = kept

    def prune(self) -> None:
        """Forget empty counters (called by the reconciliation task) so memory stays bounded."""
        now = int(time.time() * 1000)
        for key, log in list(self._logs.items()):
            if not log or log[-1] <= now - 3_600_000:
                del self._logs[key]
        for key, leases in list(self._leases.items()):
            for held, expiry in list(leases.items()):
                if expiry <= now:
                    del leases[held]
            if not leases:
                del self._leases[key]
        for key, tokens in list(self._tokens.items()):
            if not tokens or max(tokens) <= now // 1000 - 60:
                del self._tokens[key]
                self._token_totals.pop(key, None)
                self._expired_at.pop(key, None)
        for key, state in list(self._buckets.items()):
            if state[1] <= now - 3_600_000:
                del self._buckets[key]
