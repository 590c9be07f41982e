"""The response-head coalescing of the gateway's HTTP protocol (uvicorn's httptools protocol otherwise)."""

from __future__ import annotations

import asyncio
from typing import Any

from odock.edge.server import _HeadCoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_head_and_body_leave_in_one_write() -> None:
    real = RecordingTransport()
    t = _HeadCoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert real.writes == []
    t.write(b"{}")
    assert real.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert real.writes == [HEAD + b"{}"]


async def test_a_lone_head_goes_out_at_the_end_of_the_iteration() -> None:
    """A stream's head is not held while its body waits for the upstream."""
    real = RecordingTransport()
    t = _HeadCoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    await asyncio.sleep(0)
    assert real.writes == [HEAD]
    t.write(b"5\r\nhello\r\n")
    assert real.writes == [HEAD, b"5\r\nhello\r\n"]


async def test_close_flushes_and_other_calls_pass_through() -> None:
    real = RecordingTransport()
    t = _HeadCoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    t.close()
    assert real.writes == [HEAD] and real.closed
    assert t.get_extra_info("peername") == "info:peername"
    t.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # after close: not held, handed straight to the transport
    assert real.writes[-1].startswith(b"HTTP/1.1 400")
