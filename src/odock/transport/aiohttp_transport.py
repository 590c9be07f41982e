"""aiohttp implementation of the transport seam (about 10x httpx as a proxy client under concurrency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp

from odock.errors import UpstreamError
from odock.transport.base import UpstreamRequest

# errors that mean "the pooled connection was already dead": safe to retry once on a fresh connection when
# no response byte was received
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class _AiohttpErrors:
    """aiohttp's one error mapper: every aiohttp (or timeout) failure inside it becomes the matching UpstreamError.

    Before the response head (`send`) a failure means the upstream could not be reached or did not answer in
    time; while reading the body it means the upstream broke the response or ran past the total timeout.
    """

    __slots__ = ("_body",)

    def __init__(self, *, body: bool) -> None:
        self._body = body

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if isinstance(error, TimeoutError):
            message = (
                "upstream exceeded its total timeout" if self._body else "upstream did not answer in time"
            )
            raise UpstreamError(message, "upstream_timeout", kind="timeout") from None
        if isinstance(error, aiohttp.ClientError):
            if self._body:
                raise UpstreamError(
                    f"upstream connection broke mid-response ({type(error).__name__})",
                    "upstream_error",
                    kind="protocol",
                ) from None
            raise UpstreamError(
                f"upstream unreachable ({type(error).__name__})", "upstream_unreachable", kind="connect"
            ) from None


_HEAD_ERRORS = _AiohttpErrors(body=False)
_BODY_ERRORS = _AiohttpErrors(body=True)


class AiohttpResponse:
    __slots__ = ("_deadline", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, deadline: float) -> None:
        self._resp = resp
        self._deadline = deadline
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            with _BODY_ERRORS:
                while True:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        chunk = await content.readany()
                    if not chunk:
                        return
                    yield chunk
        finally:
            self._resp.release()

    async def read(self) -> bytes:
        try:
            with _BODY_ERRORS:
                async with asyncio.timeout(max(0.001, self._deadline - time.monotonic())):
                    return await self._resp.read()
        finally:
            self._resp.release()

    def close(self) -> None:
        self._resp.close()


class AiohttpTransport:
    """One pooled ClientSession for all upstreams, owned by the gateway's lifespan."""

    def __init__(self, *, limit: int = 0, keepalive_s: float = 30.0) -> None:
        connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=keepalive_s, ttl_dns_cache=300)
        # no session-wide timeout: each request brings its own (per provider)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        t = request.timeouts
        deadline = time.monotonic() + t.total_s
        timeout = aiohttp.ClientTimeout(total=None, connect=t.connect_s, sock_connect=t.connect_s)
        with _HEAD_ERRORS:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(min(t.first_byte_s, t.total_s)):
                        resp = await self._session.request(
                            request.method,
                            request.url,
                            headers=request.headers,
                            data=request.body,
                            timeout=timeout,
                        )
                    return AiohttpResponse(resp, deadline)
                except _STALE as exc:
                    if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._session.close()
