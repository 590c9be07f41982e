"""What the MCP proxy needs at run time, built once by the gateway: the upstream HTTP client, the session signer,
upstream auth (with its OAuth2 token cache) and the stdio pools."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from odock.mcp.auth import UpstreamAuth
from odock.mcp.pinning import ToolPins
from odock.mcp.session import SessionSigner
from odock.transport.base import Timeouts

if TYPE_CHECKING:
    from odock.mcp.stdio import StdioPools
    from odock.transport.base import Transport

# a GET stream stays open while the client listens (server notifications); the client's disconnect ends it
STREAM_TOTAL_S = 24 * 3600.0


@dataclass(slots=True)
class McpRuntime:
    transport: Transport
    signer: SessionSigner
    timeout_s: float = 300.0
    auth: UpstreamAuth = field(init=False)
    pins: ToolPins = field(default_factory=ToolPins)
    stdio: StdioPools | None = None

    def __post_init__(self) -> None:
        self.auth = UpstreamAuth(self.transport)

    def timeouts(self, config: dict[str, object], *, stream: bool) -> Timeouts:
        timeout = config.get("timeout_ms")
        call_s = float(timeout) / 1000 if isinstance(timeout, int | float) and timeout > 0 else self.timeout_s
        connect = config.get("connect_timeout_ms")
        connect_s = float(connect) / 1000 if isinstance(connect, int | float) and connect > 0 else 10.0
        return Timeouts(
            connect_s=connect_s, first_byte_s=call_s, total_s=STREAM_TOTAL_S if stream else call_s
        )

    async def close(self) -> None:
        if self.stdio is not None:
            await self.stdio.close()
