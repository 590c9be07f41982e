"""uvicorn's httptools protocol with the gateway's connection limits, and each response head sent with its body.

Connection limits (settings read in each worker process):
- a request head (request line and headers) larger than HTTP_MAX_HEADER_BYTES is answered 431 and the connection
  closed, having parsed at most one byte past the cap (a head pipelined into the same read as the end of the
  request before it is counted from the next read on, so it may pass the cap by that one read);
- a head not complete within HTTP_READ_HEADER_TIMEOUT of its first byte (of the connection's start, for the first
  head) closes the connection; an idle keep-alive connection is closed after HTTP_IDLE_TIMEOUT;
- HTTP_MAX_CONCURRENT_REQUESTS caps the requests being served (a complete head read) and answers 503 beyond it;
  open or half-sent connections do not count (uvicorn's own `limit_concurrency` counts connections, so that a few
  silent sockets would lock everyone out).

Head coalescing: uvicorn writes the status line and headers the moment the app sends `http.response.start`, then
the body in a second write: two syscalls and two TCP segments for every unary answer, and the client wakes twice.
Holding the head until the next write of the same response (or the end of the current loop iteration, when the
body is not ready yet, e.g. a stream waiting for its upstream) sends it in one. Order is never changed; only a head
can wait, and never past the iteration that wrote it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, NamedTuple

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from odock.dialects import openai_chat
from odock.errors import GatewayError
from odock.settings import load_settings

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

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    # the rest of asyncio.Transport, the real transport's: spelt out, since a `__getattr__` would slow down every
    # attribute read of this class (each goes through the type's getattr hook), a dozen per request
    def abort(self) -> None:
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class ConnectionLimits(NamedTuple):
    max_header_bytes: int
    header_timeout_s: float
    idle_timeout_s: float
    max_concurrent_requests: int  # 0: no cap


@functools.cache
def connection_limits() -> ConnectionLimits:
    """This process's limits, from the environment like the rest of its settings (workers re-read it)."""
    settings = load_settings()
    return ConnectionLimits(
        settings.max_header_bytes,
        settings.read_header_timeout_s,
        settings.idle_timeout_s,
        settings.max_concurrent_requests,
    )


def _error_body(status: int, code: str, message: str) -> bytes:
    """The JSON body of an error answered before any route is known (the OpenAI shape)."""
    return openai_chat.error_body(GatewayError(message, code, status=status))


_BUSY_BODY = _error_body(
    503,
    "server_busy",
    "the gateway is serving as many requests as HTTP_MAX_CONCURRENT_REQUESTS allows; retry shortly",
)


async def _server_busy(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The answer to a request over the concurrency cap (run in place of the gateway app)."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(_BUSY_BODY)),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _BUSY_BODY, "more_body": False})


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with the gateway's connection limits, writing each response head
    together with its first body bytes.

    Between the end of one request (or the connection's start) and the end of the next head, the bytes received are
    counted and a deadline runs; both stop at the head's end, so a request's body costs nothing extra. One timer
    per connection serves every head and the idle time between requests (uvicorn would arm a timer after each
    response): it is not cancelled when a head completes, and on firing re-arms itself for a later deadline, so a
    keep-alive request costs a clock read rather than a timer.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = connection_limits()
        self._max_head_bytes = limits.max_header_bytes
        self._header_timeout_s = limits.header_timeout_s
        self._max_requests = limits.max_concurrent_requests
        self._idle_timeout_s = limits.idle_timeout_s
        # uvicorn's cap counts connections; ours (on_headers_complete) counts requests being served
        self.limit_concurrency = None
        self._awaiting_head = True  # from a message's end (or the connection's start) to the next head's end
        self._head_bytes = 0
        self._head_deadline: float | None = (
            None  # set from the first byte of a head (or the connection's start)
        )
        # set from a response's end (no request pipelined behind it) to the next bytes received
        self._idle_deadline: float | None = None
        self._clock: asyncio.TimerHandle | None = None  # the connection's one timer, for both deadlines
        self._clock_at = 0.0  # when it fires

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = _HeadCoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)
        self._start_head_clock()  # a connection that never sends a byte is closed at the header timeout

    def connection_lost(self, exc: Exception | None) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        super().connection_lost(exc)

    def data_received(self, data: bytes | memoryview) -> None:
        self._idle_deadline = None
        if self._awaiting_head:
            if self._head_deadline is None:
                self._start_head_clock()
            room = self._max_head_bytes - self._head_bytes
            if len(data) > room:
                self._receive_past_head_room(memoryview(data), room)
                return
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[arg-type]  # httptools parses any buffer

    def _receive_past_head_room(self, data: memoryview, room: int) -> None:
        """Parse one byte past the cap: a head still open then is refused, the rest never parsed; else go on."""
        self._head_bytes += room + 1
        super().data_received(data[: room + 1])  # type: ignore[arg-type]
        if self.transport.is_closing():
            return
        if self._awaiting_head and self._head_bytes > self._max_head_bytes:
            self._refuse_oversized_head()
        elif len(data) > room + 1:
            self.data_received(data[room + 1 :])  # the rest: this request's body, or later requests

    def _refuse_oversized_head(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # never inside another response (pipelining)
            body = _error_body(
                431,
                "request_header_fields_too_large",
                f"the request line and headers exceed {self._max_head_bytes} bytes (HTTP_MAX_HEADER_BYTES)",
            )
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()  # unread bytes make it a reset: nothing more of this head is read

    def _start_head_clock(self) -> None:
        self._head_deadline = deadline = self.loop.time() + self._header_timeout_s
        self._wake_by(deadline)

    def _wake_by(self, deadline: float) -> None:
        """Have the clock fire by `deadline` (it is re-armed only when due later: deadlines mostly grow)."""
        clock = self._clock
        if clock is None or self._clock_at > deadline:
            if clock is not None:
                clock.cancel()
            self._clock_at = deadline
            self._clock = self.loop.call_at(deadline, self._clock_fired)

    def _clock_fired(self) -> None:
        self._clock = None
        head = self._head_deadline
        deadline = head if head is not None else self._idle_deadline
        if deadline is None:  # a request being served: the next head or idle time starts the clock again
            return
        if self.loop.time() < deadline:  # a later deadline
            self._wake_by(deadline)
        elif head is not None:
            # too slow a head: close now, or after the response in progress when this head was pipelined behind it
            self.shutdown()
        else:
            self.timeout_keep_alive_handler()  # idle too long (uvicorn's own close)

    def on_response_complete(self) -> None:
        # uvicorn's, but for the idle timeout, which the connection's clock keeps
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = deadline = self.loop.time() + self._idle_timeout_s
            self._wake_by(deadline)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_deadline = None
        if self._max_requests and len(self.tasks) >= self._max_requests:
            # uvicorn runs `self.app` for the request whose head just ended: the busy answer, this once
            gateway_app: ASGI3Application = self.app
            self.app = _server_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = gateway_app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        super().on_message_complete()
