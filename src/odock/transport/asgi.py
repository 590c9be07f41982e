"""An in-memory transport: upstream requests go to an ASGI app in the same process (httpx `ASGITransport` habit).

Tests point the gateway at the project's mock provider this way, so a stage, the router or the whole app is
exercised without a socket or a second process. The response streams as the app sends it: a stream's first
event is readable before the app has finished, and closing the response cancels the app, like a dropped socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from odock.errors import UpstreamError
from odock.transport.base import UpstreamRequest

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
_END = object()


class ASGIResponse:
    """The app's answer: status and headers at once, the body as the app sends it."""

    def __init__(self, status: int, headers: dict[str, str], body: asyncio.Queue[Any], task: asyncio.Task[None],
                 disconnected: asyncio.Event) -> None:
        self.status = status
        self.headers = headers
        self._body = body
        self._task = task
        self._disconnected = disconnected

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._body.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise UpstreamError("upstream connection broke mid-response", kind="protocol") from item
                if item:
                    yield item
        finally:
            self.close()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def close(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            self._task.cancel()


class ASGITransport:
    """Send every upstream request to `app` in-process, whatever the URL's host."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = 0

    async def send(self, request: UpstreamRequest) -> ASGIResponse:
        self.requests += 1
        url = urlsplit(request.url)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": url.scheme or "http", "path": url.path or "/", "raw_path": (url.path or "/").encode(),
                 "query_string": url.query.encode("latin-1"), "headers": headers,
                 "client": ("127.0.0.1", 0), "server": (url.hostname or "127.0.0.1", url.port or 80)}
        body_sent = False
        disconnected = asyncio.Event()
        head: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue[Any] = asyncio.Queue()

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body or b"", "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                head.set_result((int(message["status"]), names))
            elif message["type"] == "http.response.body":
                chunks.put_nowait(message.get("body", b""))
                if not message.get("more_body", False):
                    chunks.put_nowait(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not head.done():
                    head.set_exception(UpstreamError("upstream failed before answering", "upstream_unreachable",
                                                     kind="connect"))
                chunks.put_nowait(exc)
                return
            if not head.done():
                head.set_exception(UpstreamError("upstream closed without answering", "upstream_unreachable",
                                                 kind="connect"))
            chunks.put_nowait(_END)

        task = asyncio.get_running_loop().create_task(run())
        try:
            async with asyncio.timeout(request.timeouts.first_byte_s):
                status, names = await head
        except TimeoutError:
            task.cancel()
            raise UpstreamError("upstream did not answer in time", "upstream_timeout", kind="timeout") from None
        except BaseException:
            task.cancel()
            raise
        return ASGIResponse(status, names, chunks, task, disconnected)

    async def close(self) -> None:
        """Nothing to release: there is no connection."""
