"""What one MCP request carries from stage to stage (kept in `Call.route_state`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from odock.mcp import pricing
from odock.mcp.protocol import Message, Rules
from odock.mcp.records import McpServer
from odock.mcp.runtime import McpRuntime, ServerPlan

KNOWN_METHODS = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "server/discover",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/cancelled",
    }
)


class AnswerScreen(Protocol):
    """The response phase of SafetySec and plugins on a call whose server opted in (the relay calls it)."""

    async def answer_json(self, body: bytes) -> bytes: ...

    async def answer_event(self, event: bytes) -> bytes: ...


@dataclass(slots=True)
class McpRequest:
    ref: str  # the path's server id or slug
    subpath: str  # what follows it (forwarded to the upstream URL)
    server: McpServer | None = None
    runtime: McpRuntime | None = None
    plan: ServerPlan | None = None
    rules: Rules | None = None
    messages: list[Message] = field(default_factory=list)
    batch: bool = False
    body: bytes = b""
    # what the messages ask, taken once when the body is read
    tools: list[str] = field(default_factory=list)  # the tools/call names
    request_ids: list[Any] = field(default_factory=list)
    list_ids: set[Any] = field(
        default_factory=set
    )  # ids of the tools/list requests (their answers are filtered)
    upstream_session: str | None = None
    bytes_out: int = 0
    waiting: set[Any] = field(default_factory=set)  # request ids a stream has not answered yet
    tool_calls: int = 0
    upstream_status: int | None = None
    outcome: str = "success"
    screen: AnswerScreen | None = None  # set only when the server opted in to SafetySec or plugins

    def take(self, messages: list[Message], batch: bool, body: bytes) -> None:
        """Keep the POST's messages, and what the later stages ask of them, in one pass."""
        self.messages, self.batch, self.body = messages, batch, body
        for m in messages:
            method = m.method
            if method == "tools/call" and m.name is not None:
                self.tools.append(m.name)
            if method is not None and m.id is not None:
                self.request_ids.append(m.id)
                if method == "tools/list":
                    self.list_ids.add(m.id)
        self.tool_calls = len(self.tools)

    @property
    def method(self) -> str:
        """A bounded label: the single message's method, "batch", or the HTTP verb's role."""
        if self.batch:
            return "batch"
        if not self.messages:
            return "none"
        method = self.messages[0].method
        if method is None:
            return "response"
        return method if method in KNOWN_METHODS else "other"

    def cost_nanos(self) -> int:
        """The call's cost on the server's pricing: calls, tools, the request's bytes and the bytes relayed."""
        server = self.server
        if server is None or not server.pricing:
            return 0
        calls = max(1, len(self.request_ids))
        return pricing.cost_nanos(server.pricing, self.tools, calls, len(self.body), self.bytes_out)
