"""uvicorn's httptools protocol with one change: a response's head and its first body bytes leave together.

uvicorn writes the status line and headers the moment the app sends `http.response.start`, then the body in a
second write: two syscalls and two TCP segments for every unary answer, and the client wakes twice. Holding the
head until the next write of the same response (or the end of the current loop iteration, when the body is not
ready yet, e.g. a stream waiting for its upstream) sends it in one. Order is never changed; only a head can wait,
and never past the iteration that wrote it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "


class _HeadCoalescingTransport:
    """A transport proxy that holds a response head until the next write or the end of the loop iteration."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD) and not self._transport.is_closing():
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) writing each response head together with its first body bytes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = _HeadCoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)
