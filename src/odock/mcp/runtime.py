"""What the MCP proxy needs at run time, built once by the gateway: the upstream HTTP client, the session signer,
upstream auth (with its OAuth2 token cache), the stdio pools, and each server's plan (its tool rules, timeouts and
static auth headers, worked out once per server record instead of once per call)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from odock.errors import UpstreamError
from odock.mcp.auth import UpstreamAuth, static_headers
from odock.mcp.pinning import ToolPins
from odock.mcp.protocol import Rules, rules_of
from odock.mcp.records import McpServer
from odock.mcp.session import SessionSigner
from odock.transport.base import Timeouts

if TYPE_CHECKING:
    from odock.mcp.stdio import StdioPools
    from odock.transport.base import Transport

# a GET stream stays open while the client listens (server notifications); the client's disconnect ends it
STREAM_TOTAL_S = 24 * 3600.0
MAX_PLANS = 10_000


@dataclass(slots=True, frozen=True)
class ServerPlan:
    """What every call to one server record needs, worked out once."""

    server: McpServer  # the record it was made from (a changed server is a new record: a new plan)
    rules: Rules
    unary: Timeouts
    stream: Timeouts
    auth_headers: dict[str, str] | None  # None: fetched per call (OAuth2 tokens expire)
    safety: bool = False  # the server opted in to SafetySec (`policies.safety.enabled`)
    plugins: bool = False  # the server opted in to the plugins (`config.plugins`)


def safety_opted_in(policies: dict[str, Any]) -> bool:
    """SafetySec is off for MCP unless the server's own `policies.safety` says `enabled: true`."""
    section = policies.get("safety")
    return isinstance(section, dict) and section.get("enabled") is True


def screening_wanted(policies: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether calls to a server of these policies and config need the MCP screening stage at all."""
    return safety_opted_in(policies) or config.get("plugins") is True


@dataclass(slots=True)
class McpRuntime:
    transport: Transport
    signer: SessionSigner
    timeout_s: float = 300.0
    auth: UpstreamAuth = field(init=False)
    pins: ToolPins = field(default_factory=ToolPins)
    stdio: StdioPools | None = None
    _plans: dict[str, ServerPlan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.auth = UpstreamAuth(self.transport)

    def plan(self, server: McpServer) -> ServerPlan:
        """The server's plan; made again when the directory hands out a new record (after a catalogue change)."""
        plan = self._plans.get(server.id)
        if plan is not None and plan.server is server:
            return plan
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        try:
            auth: dict[str, str] | None = static_headers(server)
        except (UpstreamError, KeyError):
            auth = None  # an unusable auth config fails the calls that forward, when they do
        plan = self._plans[server.id] = ServerPlan(
            server,
            self._rules(server),
            self.timeouts(server.config, stream=False),
            self.timeouts(server.config, stream=True),
            auth,
            safety=safety_opted_in(server.policies),
            plugins=server.config.get("plugins") is True,
        )
        return plan

    def _rules(self, server: McpServer) -> Rules:
        rules = rules_of(server)
        mode = server.config.get("pin_tools")
        if mode in ("alert", "block", True):
            mode = "alert" if mode is True else str(mode)
            pins, sid = self.pins, server.id
            rules = replace(
                rules,
                pin_admit=lambda tool: pins.admit(sid, tool, mode),
                pin_refused=(lambda name: pins.refused(sid, name)) if mode == "block" else None,
            )
        return rules

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
