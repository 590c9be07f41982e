"""The lean Redis script runner used by the rate-limit gates, against the real Redis."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from odock.governance.resp import LuaScript, ScriptRunner

ECHO = LuaScript("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")


async def test_runs_scripts_loading_them_on_first_use(redis_url: str) -> None:
    """A script unknown to the server is loaded on NOSCRIPT and run; replies keep their order under concurrency."""
    runner = ScriptRunner(port=int(redis_url.rsplit(":", 1)[1].split("/")[0]), db=7)
    script = LuaScript(f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) * 2")  # never loaded before
    try:
        assert await runner.run(ECHO, ["k"], ["v", 41]) == [b"k", b"v", 42]
        results = await asyncio.gather(*(runner.run(script, [], [i]) for i in range(200)))
        assert results == [i * 2 for i in range(200)]
    finally:
        await runner.close()


async def test_script_errors_and_unreachable_server_raise_redis_errors(redis_url: str) -> None:
    """A failing script raises ResponseError; a closed port raises redis-py's ConnectionError (fail-closed path)."""
    runner = ScriptRunner(port=int(redis_url.rsplit(":", 1)[1].split("/")[0]), db=7)
    try:
        with pytest.raises(ResponseError):
            await runner.run(LuaScript("return redis.call('NOPE')"), [], [])
        assert await runner.run(ECHO, ["k"], ["v", 1]) == [
            b"k",
            b"v",
            2,
        ]  # the connection survives an error reply
    finally:
        await runner.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    with pytest.raises(RedisConnectionError):
        await ScriptRunner(port=dead).run(ECHO, ["k"], ["v", 1])


async def test_commands_of_one_loop_turn_leave_in_one_write(redis_url: str) -> None:
    """Gates issued by concurrent calls in one turn of the event loop share one write; replies keep their order."""
    runner = ScriptRunner(port=int(redis_url.rsplit(":", 1)[1].split("/")[0]), db=7)
    try:
        assert await runner.run(ECHO, ["k"], ["v", 0]) == [b"k", b"v", 1]  # connected, script loaded
        conn = runner._conn
        assert conn is not None and conn.transport is not None
        writes: list[bytes] = []

        class Spy:
            def __init__(self, transport: asyncio.Transport) -> None:
                self.transport = transport

            def write(self, data: bytes) -> None:
                writes.append(data)
                self.transport.write(data)

            def close(self) -> None:
                self.transport.close()

        conn.transport = Spy(conn.transport)  # type: ignore[assignment]
        results = await asyncio.gather(*(runner.run(ECHO, [f"k{i}"], ["v", i]) for i in range(50)))
        assert results == [[f"k{i}".encode(), b"v", i + 1] for i in range(50)]
        assert len(writes) == 1
    finally:
        await runner.close()
