"""Turn counters for `round_robin`: per process in embedded mode, one Redis INCR shared by every process in
cluster mode (falling back to the local counter while Redis does not answer)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from odock.state.redis import REDIS_ERRORS

log = logging.getLogger("odock.routing")

MAX_LOCAL_COUNTERS = 100_000
RR_KEY_TTL_S = 7 * 86400  # round-robin counters of deleted keys fade away
REDIS_TIMEOUT_S = 0.25  # a slow Redis must not stall routing: the local counter takes over
REDIS_RETRY_AFTER_S = 5.0


class TurnCounter(Protocol):
    async def turn(self, name: str) -> int:
        """Return 0, 1, 2, … on successive calls for the same name."""
        ...


class LocalTurns:
    """In-process counters, bounded (the oldest name is forgotten first)."""

    def __init__(self, max_names: int = MAX_LOCAL_COUNTERS) -> None:
        self._counters: dict[str, int] = {}
        self._max = max_names

    async def turn(self, name: str) -> int:
        turn = self._counters.pop(name, 0)
        if len(self._counters) >= self._max:
            self._counters.pop(next(iter(self._counters)))
        self._counters[name] = turn + 1
        return turn


class RedisTurns:
    """A counter per name in Redis; while Redis fails, turns come from a local counter for a few seconds."""

    def __init__(self, redis: Any, fallback: LocalTurns | None = None) -> None:
        self._redis = redis
        self._fallback = fallback or LocalTurns()
        self._down_until = 0.0

    async def turn(self, name: str) -> int:
        now = time.monotonic()
        if now >= self._down_until:
            key = f"odock:routing:rr:{name}"
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.incr(key)
                        pipe.expire(key, RR_KEY_TTL_S)
                        value, _ = await pipe.execute()
                return int(value) - 1
            except REDIS_ERRORS as exc:  # rotate locally rather than fail the call
                self._down_until = now + REDIS_RETRY_AFTER_S
                log.warning(
                    "round-robin counter unavailable in Redis (%s); rotating per process", type(exc).__name__
                )
        return await self._fallback.turn(name)
