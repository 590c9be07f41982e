"""A lean Redis script runner for the rate-limit gates: one pipelined connection, RESP encoded here, replies
parsed by hiredis.

Each gate is one EVALSHA on the request path. Through redis-py's asyncio client a round trip costs about 120 µs
of client overhead here (pool checkout, command packing, retry wrapper); writing the command bytes directly and
matching replies in order on one connection costs a fraction of that, so the gates use this runner while
everything off the hot path (ledger upkeep, pub/sub, scripts loading) stays on redis-py. Errors are redis-py's
own exception classes, so callers handle one hierarchy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class LuaScript:
    """A script and its SHA1, as EVALSHA names it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest().encode()


class _Connection(asyncio.Protocol):
    """One connection; commands are pipelined and replies resolve waiting futures in order.

    Commands issued during one turn of the event loop leave in one write at its end: under load the gates of
    many calls share a system call (each costs the loop's core the whole loopback send path), and a lone command
    waits only for the callbacks already queued."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.alive = True
        self._out: list[bytes] = []

    def _send(self, data: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.alive and self.transport is not None and out:  # after fail(), its futures have failed already
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.pending.popleft()
            if future.done():
                continue  # its caller timed out; the reply is still consumed to keep the order
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("connection to Redis lost"))

    def fail(self, error: Exception) -> None:
        self.alive = False
        self._out.clear()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def call(self, parts: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self.transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self._send(hiredis.pack_command(parts))
        return future

    def call_many(self, commands: list[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        """Send several commands in one write; their replies come back in order."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in commands]
        self.pending.extend(futures)
        self._send(b"".join([hiredis.pack_command(parts) for parts in commands]))
        return futures

    def time_out(self) -> None:
        """Timer callback: the server did not answer in time."""
        self.fail(RedisTimeoutError("Redis did not answer in time"))


class ScriptRunner:
    """Run Lua scripts by SHA over one pipelined connection, reconnecting after a failure."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def like(cls, client: Any) -> ScriptRunner:
        """A runner for the same server and database as a redis-py client."""
        kwargs = client.connection_pool.connection_kwargs
        return cls(
            host=kwargs.get("host", "127.0.0.1"),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
        )

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and self._conn.alive:
                return self._conn
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, conn = await loop.create_connection(_Connection, self.host, self.port)
                    if self.password:
                        auth = (self.username, self.password) if self.username else (self.password,)
                        await conn.call((b"AUTH", *auth))
                    if self.db:
                        await conn.call((b"SELECT", self.db))
            except TimeoutError:
                raise RedisTimeoutError("timed out connecting to Redis") from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis ({type(exc).__name__})") from None
            self._conn = conn
            return conn

    async def _call(self, parts: tuple[Any, ...]) -> Any:
        conn = await self._connection()
        future = conn.call(parts)
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + self.timeout_s, conn.time_out)
        try:
            return await future
        finally:
            timer.cancel()

    async def run_many(self, calls: list[tuple[LuaScript, list[str], list[Any]]]) -> list[Any]:
        """Run several scripts in one write (one round trip); return their replies in order.

        Not atomic together (each script is); a script the server does not know is loaded and run again on its
        own. The first other error is raised once every reply is in, so no reply is left unread.
        """
        conn = await self._connection()
        commands = [(b"EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        futures = conn.call_many(commands)
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + self.timeout_s, conn.time_out)
        try:
            replies = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            timer.cancel()
        for index, reply in enumerate(replies):
            if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                script, keys, args = calls[index]
                replies[index] = await self.run(script, keys, args)
            elif isinstance(reply, BaseException):
                raise reply
        return replies

    async def run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA the script, loading it first when the server does not know it (after a restart or flush)."""
        parts = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._call(parts)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._call((b"SCRIPT", b"LOAD", script.text))
        return await self._call(parts)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.fail(RedisConnectionError("runner closed"))
            self._conn = None
