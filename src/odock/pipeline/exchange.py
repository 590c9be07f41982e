"""What the pipeline needs from the client side of a call: the edge's `Request` is one, a test double another.

Defined here, below the edge, so that the pipeline never imports the edge (the package graph points one way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Exchange(Protocol):
    """One HTTP exchange with the client: its head, a lazily read body, and one response (unary or streamed)."""

    headers: dict[str, str]  # lower-case names
    request_id: str
    response_headers: list[tuple[bytes, bytes]]
    started: bool
    finished: bool
    # called once, just before the response's last bytes are sent (the usage record is taken there)
    before_end: Callable[[], None] | None

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    def query(self, name: str) -> str | None: ...

    def client_host(self) -> str: ...

    async def body(self, limit: int, timeout_s: float) -> bytes: ...

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None: ...

    async def start_stream(
        self,
        status: int = 200,
        content_type: bytes = b"text/event-stream",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self, chunk: bytes = b"") -> None: ...

    async def wait_disconnect(self) -> None: ...
