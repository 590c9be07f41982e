"""Both upstream transports against tiny raw asyncio servers: pooling, stale connections, timeouts, body framing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from odock.errors import UpstreamError
from odock.transport.aiohttp_transport import AiohttpTransport
from odock.transport.base import Timeouts, Transport, UpstreamRequest
from odock.transport.http11 import Http11Transport

TRANSPORTS = {"http11": Http11Transport, "aiohttp": AiohttpTransport}


@pytest.fixture(params=sorted(TRANSPORTS))
def make_transport(request: pytest.FixtureRequest) -> Callable[[], Transport]:
    """Each test runs against both transports: the default lean HTTP/1.1 client and aiohttp."""
    factory: Callable[[], Transport] = TRANSPORTS[request.param]
    return factory


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


def request(url: str, first_byte_s: float = 2.0, total_s: float = 5.0) -> UpstreamRequest:
    return UpstreamRequest(
        "POST",
        url,
        {"Content-Type": "application/json"},
        b"{}",
        Timeouts(connect_s=1.0, first_byte_s=first_byte_s, total_s=total_s),
    )


async def test_stale_pooled_connection_is_retried_once(make_transport: Callable[[], Transport]) -> None:
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
        transport = make_transport()
        try:
            first = await transport.send(request(url))
            assert await first.read() == b"ok"
            second = await transport.send(request(url))
            assert await second.read() == b"ok"
        finally:
            await transport.close()
    assert counts == [2, 1]  # the second request went out twice: on the dead connection, then on a new one


async def test_second_disconnect_is_an_unreachable_upstream(make_transport: Callable[[], Transport]) -> None:
    """When the fresh connection also drops without an answer the call fails as a connect-kind upstream error."""

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # read, then hang up without a byte

    async with raw_server(handler) as (url, counts):
        transport = make_transport()
        try:
            with pytest.raises(UpstreamError) as info:
                await transport.send(request(url))
        finally:
            await transport.close()
    assert info.value.kind == "connect" and info.value.code == "upstream_unreachable"
    # never a loop: aiohttp retries a dropped connection once; the lean client retries only a *reused* pooled
    # connection (a fresh one that drops may have delivered the POST, so resending could run it twice)
    assert len(counts) == (1 if isinstance(transport, Http11Transport) else 2)


async def test_first_byte_timeout(make_transport: Callable[[], Transport]) -> None:
    """An upstream that accepts but sends no header within first_byte_s fails as kind timeout, promptly."""
    release = asyncio.Event()

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        started = time.perf_counter()
        try:
            with pytest.raises(UpstreamError) as info:
                await transport.send(request(url, first_byte_s=0.2))
        finally:
            release.set()
            await transport.close()
    elapsed = time.perf_counter() - started
    assert info.value.kind == "timeout" and 0.19 < elapsed < 1.5


async def test_chunked_stream_arrives_in_pieces_and_connection_is_reused(
    make_transport: Callable[[], Transport],
) -> None:
    """A chunked response streams piece by piece as the server sends it; the connection then serves the next call."""
    gate = asyncio.Event()

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")
            await writer.drain()
            gate.clear()

    async with raw_server(handler) as (url, counts):
        transport = make_transport()
        try:
            for _ in range(2):
                resp = await transport.send(request(url))
                chunks = resp.iter_chunks()
                assert await chunks.__anext__() == b"hello"  # before the server sent the rest
                gate.set()
                assert b"".join([c async for c in chunks]) == b" world"
        finally:
            await transport.close()
    assert len(counts) == 1


async def test_close_delimited_body(make_transport: Callable[[], Transport]) -> None:
    """A body without Content-Length or chunking ends when the server closes the connection."""

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        try:
            resp = await transport.send(request(url))
            assert await resp.read() == b"until the end"
        finally:
            await transport.close()


async def test_cut_mid_body_is_a_protocol_error(make_transport: Callable[[], Transport]) -> None:
    """A connection that breaks before the declared body is complete fails as kind protocol, never a clean end."""

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        try:
            resp = await transport.send(request(url))
            with pytest.raises(UpstreamError) as info:
                await resp.read()
        finally:
            await transport.close()
    assert info.value.kind == "protocol"


async def test_total_timeout_mid_body(make_transport: Callable[[], Transport]) -> None:
    """A body that stalls past the total timeout fails as kind timeout, promptly."""
    release = asyncio.Event()

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        started = time.perf_counter()
        try:
            resp = await transport.send(request(url, total_s=0.3))
            with pytest.raises(UpstreamError) as info:
                await resp.read()
        finally:
            release.set()
            await transport.close()
    assert info.value.kind == "timeout" and time.perf_counter() - started < 2.0


async def test_large_body_is_read_whole(make_transport: Callable[[], Transport]) -> None:
    """A body far above the read-pause threshold arrives intact (backpressure pauses and resumes the socket)."""
    body = bytes(range(256)) * 16 * 1024  # 4 MiB

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        try:
            resp = await transport.send(request(url))
            received = b""
            async for chunk in resp.iter_chunks():
                received += chunk
                await asyncio.sleep(0)  # a slow consumer
        finally:
            await transport.close()
    assert received == body


async def test_invalid_http_response_is_a_protocol_error(make_transport: Callable[[], Transport]) -> None:
    """An upstream that answers with something other than HTTP fails as an upstream error, never a hang or a 500."""

    async def handler(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_server(handler) as (url, _counts):
        transport = make_transport()
        try:
            with pytest.raises(UpstreamError) as info:
                resp = await transport.send(request(url, first_byte_s=2.0))
                await resp.read()
        finally:
            await transport.close()
    assert info.value.kind in ("protocol", "connect")
