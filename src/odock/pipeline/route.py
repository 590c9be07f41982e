"""The Route contract: what an endpoint gives the pipeline — decode with its dialect, one upstream attempt, and
the answer (relay or encode). Everything else (gates, access, budgets, routing, usage) is the pipeline's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from odock.dialects.contract import Dialect
    from odock.errors import GatewayError
    from odock.model import StreamEvent
    from odock.pipeline.call import Call
    from odock.routing.router import Candidate
    from odock.transport.base import UpstreamResponse


class Route(Protocol):
    """One client-facing route of an LLM call."""

    name: str  # bounded route label for metrics and the usage record ("openai.chat", "anthropic.messages", …)
    family: str | None  # the provider family a native route pins (RequiredProvider); None on /v1/llm/chat
    dialect: Dialect | None  # the route's wire format; decodes the call for stages that need it

    @property
    def replay_dialect(self) -> Dialect | None:
        """The dialect the route answers in, when it can replay a normalized answer (None: it cannot)."""
        ...

    def render(self, err: GatewayError) -> tuple[bytes, bytes]:
        """An error's body and content type in this route's dialect, so the client's SDK raises its matching
        exception (or the provider's own error body, for an upstream 4xx passed through on a native route)."""
        ...

    async def decode(self, call: Call) -> None:
        """Read and decode the body: set the requested model, stream flag and output cap on `call.ctx`."""
        ...

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        """Make one upstream attempt on `candidate` (the router calls this once per attempt)."""
        ...

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        """Answer the client from the upstream's response (None for a route the gateway answers itself)."""
        ...

    async def replay(self, call: Call, events: list[StreamEvent]) -> None:
        """Answer from a whole normalized answer (a cache hit), as a stream or unary as the call asked."""
        ...
