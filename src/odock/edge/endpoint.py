"""The shape shared by every LLM route: decode with the route's dialect, one upstream attempt, relay or encode.

The pipeline (`odock.pipeline.runner.Pipeline`) runs the stages around these three steps and renders failures
with `error_body`, so a route holds no gate, access, routing or usage code of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.dialects import openai_chat
from odock.errors import GatewayError, UpstreamError

if TYPE_CHECKING:
    from odock.dialects.contract import Dialect
    from odock.pipeline.call import Call
    from odock.routing.router import Candidate
    from odock.transport.base import UpstreamResponse


class LLMEndpoint:
    """Base of the LLM routes (`odock.pipeline.route.Route`), served by the `llm` pipeline."""

    name = "llm"
    kind = "llm"  # which pipeline serves the route
    methods: tuple[str, ...] = ("POST",)
    # the provider family a native route pins (RequiredProvider); None on the unified route
    family: str | None = None
    # the route's wire format, for stages that need the decoded call (None: a route without a codec)
    dialect: Dialect | None = None
    # the client speaks its upstream's dialect: a passed-through upstream 4xx keeps the provider's own body
    relays_upstream_body = True

    def error_body(self, err: GatewayError) -> bytes:
        """Render an error in this route's dialect (OpenAI shape unless overridden)."""
        return openai_chat.error_body(err)

    def render(self, err: GatewayError) -> tuple[bytes, bytes]:
        """The error's body and content type: the provider's own for a passed-through upstream 4xx on a native
        route, else this route's dialect."""
        if (
            self.relays_upstream_body
            and isinstance(err, UpstreamError)
            and err.upstream_body
            and err.status == err.upstream_status
        ):
            content_type = err.upstream_content_type or "text/plain; charset=utf-8"
            return err.upstream_body, content_type.encode("latin-1", "replace")
        return self.error_body(err), b"application/json"

    async def decode(self, call: Call) -> None:
        raise NotImplementedError

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        raise NotImplementedError

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        raise NotImplementedError
