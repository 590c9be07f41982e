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
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
_END = object()


class ASGIResponse:
    """The app's answer: status and headers at once, the body as the app sends it."""

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: asyncio.Queue[Any],
        task: asyncio.Task[None],
        disconnected: asyncio.Event,
    ) -> None:
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
        call = _AppCall(request)
        task = asyncio.get_running_loop().create_task(call.run(self.app))
        try:
            async with asyncio.timeout(request.timeouts.first_byte_s):
                status, names = await call.head
        except TimeoutError:
            task.cancel()
            raise UpstreamError(
                "upstream did not answer in time", "upstream_timeout", kind="timeout"
            ) from None
        except BaseException:
            task.cancel()
            raise
        return ASGIResponse(status, names, call.chunks, task, call.disconnected)

    async def close(self) -> None:
        """Nothing to release: there is no connection."""


class _AppCall:
    """One request to the app: its scope, the body it receives, and what it sends back (head, then chunks)."""

    def __init__(self, request: UpstreamRequest) -> None:
        self.request = request
        self.body_sent = False
        self.disconnected = asyncio.Event()
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()

    def scope(self) -> dict[str, Any]:
        url = urlsplit(self.request.url)
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.request.headers.items()
        ]
        path = url.path or "/"
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.request.method,
            "scheme": url.scheme or "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": url.query.encode("latin-1"),
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": (url.hostname or "127.0.0.1", url.port or 80),
        }

    async def receive(self) -> Message:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.request.body or b"", "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
            self.head.set_result((int(message["status"]), names))
        elif message["type"] == "http.response.body":
            self.chunks.put_nowait(message.get("body", b""))
            if not message.get("more_body", False):
                self.chunks.put_nowait(_END)

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope(), self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an app failure is an upstream failure, like a reset socket
            self._unanswered("upstream failed before answering")
            self.chunks.put_nowait(exc)
            return
        self._unanswered("upstream closed without answering")
        self.chunks.put_nowait(_END)

    def _unanswered(self, why: str) -> None:
        if not self.head.done():
            self.head.set_exception(UpstreamError(why, "upstream_unreachable", kind="connect"))
