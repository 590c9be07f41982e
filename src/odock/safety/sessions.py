"""SafetySec sessions (reference §7.5): a score per client fingerprint, raised by injection and jailbreak
signals, kept for `SAFETY_SESSION_TTL`; a session at `SAFETY_BLOCK_THRESHOLD` or above is blocked.

Cluster mode keeps it in Redis (`safety:session:{fingerprint}`, a hash: score, signals, requests, last_seen),
read and raised atomically by one script; the SafetySec stage hands that script to the final gate, which sends
it in its own round trip (`governance.Rider`), so a screened call pays no round trip of its own for its session.
Embedded mode keeps the scores in this process."""

from __future__ import annotations

import time
from typing import Any, Protocol

SCORE_CEILING = 1.0

# KEYS[1] the session; ARGV: increment, ttl seconds, now (epoch seconds). Returns the score after the increment.
SCRIPT = """
local inc = tonumber(ARGV[1])
local score = tonumber(redis.call('HGET', KEYS[1], 'score') or '0')
if inc > 0 then
  score = math.min(score + inc, 1.0)
  redis.call('HSET', KEYS[1], 'score', tostring(score))
  redis.call('HINCRBY', KEYS[1], 'signals', 1)
end
redis.call('HINCRBY', KEYS[1], 'requests', 1)
redis.call('HSET', KEYS[1], 'last_seen', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tostring(score)
"""


class Sessions(Protocol):
    async def bump(self, fingerprint: str, increment: float, ttl_s: float) -> float:
        """Add `increment` to the session's score (clamped to 1.0) and return the new score."""
        ...


class MemorySessions:
    """Embedded mode: scores in this process, expired lazily (and swept when the table grows)."""

    MAX_SESSIONS = 100_000

    def __init__(self) -> None:
        self._scores: dict[str, tuple[float, float]] = {}  # fingerprint -> (score, expires at, monotonic)

    async def bump(self, fingerprint: str, increment: float, ttl_s: float) -> float:
        return self.bump_now(fingerprint, increment, ttl_s)

    def bump_now(self, fingerprint: str, increment: float, ttl_s: float) -> float:
        """`bump` without a coroutine (the stage calls it directly in embedded mode)."""
        now = time.monotonic()
        score, expires = self._scores.get(fingerprint, (0.0, 0.0))
        if expires <= now:
            score = 0.0
        score = min(score + increment, SCORE_CEILING)
        if score > 0.0:
            if len(self._scores) >= self.MAX_SESSIONS:
                self._sweep(now)
            self._scores[fingerprint] = (score, now + ttl_s)
        return score

    def _sweep(self, now: float) -> None:
        self._scores = {k: v for k, v in self._scores.items() if v[1] > now}
        while len(self._scores) >= self.MAX_SESSIONS:  # still full of live sessions: forget the oldest
            self._scores.pop(next(iter(self._scores)))


class RedisSessions:
    """Cluster mode: one script call per screened request (read, raise, refresh the TTL atomically)."""

    def __init__(self, redis: Any) -> None:
        self._script = redis.register_script(SCRIPT)

    @staticmethod
    def call(fingerprint: str, increment: float, ttl_s: float) -> tuple[list[str], list[Any]]:
        """The script's keys and arguments for one request (to send it in another round trip)."""
        return [f"safety:session:{fingerprint}"], [
            repr(float(increment)),
            max(1, int(ttl_s)),
            int(time.time()),
        ]

    @staticmethod
    def score(reply: Any) -> float:
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    async def bump(self, fingerprint: str, increment: float, ttl_s: float) -> float:
        keys, args = self.call(fingerprint, increment, ttl_s)
        return self.score(await self._script(keys=keys, args=args))
