"""Redis at its boundary: which exceptions mean "Redis cannot serve this call", and their one mapping to ours.

redis-py raises `RedisError` subclasses (connection, timeout, a server refusing work), and a socket may still
leak `OSError` or `TimeoutError`; the pipelined script runner (`governance.resp`) raises redis-py's classes too.
Callers with a fallback (fail-open limits, local rotation) catch `REDIS_ERRORS`; everything else lets
`redis_errors(...)` turn them into `DependencyUnavailable` with the caller's code.
"""

from __future__ import annotations

from redis.exceptions import RedisError

from odock.errors import DependencyUnavailable

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class redis_errors:
    """Map a Redis failure raised inside it to `DependencyUnavailable(message, code)`; usable with and without async."""

    __slots__ = ("code", "message")

    def __init__(self, message: str = "Redis is unavailable", code: str = "redis_unavailable") -> None:
        self.message = message
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if isinstance(error, REDIS_ERRORS):
            # the class only: a Redis error message may carry the server's address
            raise DependencyUnavailable(f"{self.message} ({type(error).__name__})", self.code) from error

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        self.__exit__(kind, error, tb)
