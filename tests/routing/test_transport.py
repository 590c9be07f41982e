"""The aiohttp transport against tiny raw asyncio servers: stale pooled connections and first-byte timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from odock.errors import UpstreamError
from odock.transport.aiohttp_transport import AiohttpTransport
from odock.transport.base import Timeouts, UpstreamRequest

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"

Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request head (+ Content-Length body); False at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return True


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve `handler(connection_number, reader, writer)` on loopback; yield (url, per-connection request counts)."""
    counts: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.append(0)
        try:
            await handler(len(counts) - 1, reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/", counts
    finally:
        server.close()
        await server.wait_closed()


def request(url: str, first_byte_s: float = 2.0) -> UpstreamRequest:
    return UpstreamRequest("POST", url, {"Content-Type": "application/json"}, b"{}",
                           Timeouts(connect_s=1.0, first_byte_s=first_byte_s, total_s=5.0))


async def test_stale_pooled_connection_is_retried_once() -> None:
    """A kept-alive connection the server dropped while idle is retried on a fresh connection, invisibly."""
    counts_ref: list[list[int]] = []

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            counts_ref[0][conn] += 1
            if conn == 0 and counts_ref[0][conn] == 2:
                return  # the pooled connection dies under the second request, before any response byte
            writer.write(OK)
            await writer.drain()

    async with raw_server(handler) as (url, counts):
        counts_ref.append(counts)
        transport = AiohttpTransport()
        try:
            first = await transport.send(request(url))
            assert await first.read() == b"ok"
            second = await transport.send(request(url))
            assert await second.read() == b"ok"
        finally:
            await transport.close()
    assert counts == [2, 1]  # the second request went out twice: on the dead connection, then on a new one


async def test_second_disconnect_is_an_unreachable_upstream() -> None:
    """When the fresh connection also drops without an answer the call fails as a connect-kind upstream error."""

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # read, then hang up without a byte

    async with raw_server(handler) as (url, counts):
        transport = AiohttpTransport()
        try:
            with pytest.raises(UpstreamError) as info:
                await transport.send(request(url))
        finally:
            await transport.close()
    assert info.value.kind == "connect" and info.value.code == "upstream_unreachable"
    assert len(counts) == 2  # exactly one retry, never a loop


async def test_first_byte_timeout() -> None:
    """An upstream that accepts but sends no header within first_byte_s fails as kind timeout, promptly."""
    release = asyncio.Event()

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            await asyncio.wait_for(release.wait(), 5)
        except TimeoutError:
            pass

    async with raw_server(handler) as (url, _counts):
        transport = AiohttpTransport()
        started = time.perf_counter()
        try:
            with pytest.raises(UpstreamError) as info:
                await transport.send(request(url, first_byte_s=0.2))
        finally:
            release.set()
            await transport.close()
    elapsed = time.perf_counter() - started
    assert info.value.kind == "timeout" and 0.19 < elapsed < 1.5
