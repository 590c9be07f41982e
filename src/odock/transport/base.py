"""The transport seam: `send(request) -> response` with a streaming body. Nothing else imports aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class Timeouts:
    connect_s: float = 10.0
    # time to the response headers (first byte): a slow upstream is a `timeout` failover trigger
    first_byte_s: float = 60.0
    # whole call, body included
    total_s: float = 600.0


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)


class UpstreamResponse(Protocol):
    status: int
    headers: dict[str, str]  # lower-case names

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive; raise UpstreamError(kind='protocol'|'timeout') on a cut."""
        ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response headers arrived (raise UpstreamError otherwise)."""
        ...

    async def close(self) -> None: ...
