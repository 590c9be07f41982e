"""Raw ASGI request/response helpers for the hot path (no framework: ~1.5 µs per request)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from odock.errors import BadRequest, ClientDisconnected, GatewayError, PayloadTooLarge, RequestTimeout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "Message",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "render_error",
]


class Request:
    """One HTTP exchange: lazily read body, one response (unary or streamed)."""

    __slots__ = (
        "_disconnected",
        "_query",
        "before_end",
        "finished",
        "headers",
        "receive",
        "request_id",
        "response_headers",
        "scope",
        "send",
        "started",
        "status",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: dict[str, str]
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = headers
        self.request_id = request_id
        self.started = False
        self.finished = False
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id.encode())]
        self._query: dict[str, list[str]] | None = None
        self._disconnected = False
        # called once, just before the last bytes of the response are sent (the usage record is taken there, so
        # a client never holds a complete answer whose record a killed process could not replay)
        self.before_end: Callable[[], None] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"]  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        return self.scope["path"]  # type: ignore[no-any-return]

    def query(self, name: str) -> str | None:
        if self._query is None:
            raw = self.scope.get("query_string", b"")
            self._query = parse_qs(raw.decode("latin-1")) if raw else {}
        values = self._query.get(name)
        return values[0] if values else None

    def client_host(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else ""

    async def body(self, limit: int, timeout_s: float) -> bytes:
        """Read the whole body, refusing more than `limit` bytes (413) and a slow client (408)."""
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadRequest("invalid Content-Length", "invalid_request_body") from None
            if size > limit:
                raise PayloadTooLarge(
                    f"request body of {size} bytes exceeds the limit of {limit}", "payload_too_large"
                )
        chunks: list[bytes] = []
        total = 0
        # asyncio.timeout's own way, without its bookkeeping (on 3.11 each of its state checks is an Enum class
        # attribute, looked up through EnumType.__getattr__): a timer cancels this task; the cancellation it
        # caused becomes the 408, any other goes on
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        try:
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self._disconnected = True
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                if chunk:
                    total += len(chunk)
                    if total > limit:
                        raise PayloadTooLarge(
                            f"request body exceeds the limit of {limit} bytes", "payload_too_large"
                        )
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if expired and task.uncancel() <= cancelling:
                raise RequestTimeout(
                    f"request body not received within {timeout_s:g}s", "request_timeout"
                ) from None
            raise
        finally:
            timer.cancel()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send a complete response."""
        self._before_end()
        self.started = True
        self.status = status
        all_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *self.response_headers,
        ]
        if headers:
            all_headers.extend(headers)
        await self.send({"type": "http.response.start", "status": status, "headers": all_headers})
        await self.send({"type": "http.response.body", "body": body})
        self.finished = True

    async def start_stream(
        self,
        status: int = 200,
        content_type: bytes = b"text/event-stream",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.started = True
        self.status = status
        all_headers = [
            (b"content-type", content_type),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *self.response_headers,
        ]
        if headers:
            all_headers.extend(headers)
        await self.send({"type": "http.response.start", "status": status, "headers": all_headers})

    async def write(self, chunk: bytes) -> None:
        if self._disconnected:
            raise ClientDisconnected()
        try:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            self._disconnected = True
            raise ClientDisconnected() from None

    async def end(self, chunk: bytes = b"") -> None:
        if self._disconnected:
            return
        self._before_end()
        try:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": False})
        except OSError:
            self._disconnected = True
        self.finished = True

    def _before_end(self) -> None:
        hook, self.before_end = self.before_end, None
        if hook is not None:
            hook()

    async def wait_disconnect(self) -> None:
        """Return when the client disconnects (used while streaming to cancel the upstream call)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._disconnected = True
                return

    def mark_disconnected(self) -> None:
        self._disconnected = True


# deeper documents are refused: whatever walks a body later (re-encoding it upstream, schema conversion, pricing
# validation) recurses once per level, and must stay far from the interpreter's recursion limit
def render_error(err: GatewayError) -> list[tuple[bytes, bytes]]:
    """Headers an error carries (Retry-After and friends)."""
    return [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
