"""The shape shared by every LLM route: decode with the route's dialect, one upstream attempt, relay or encode.

The pipeline (`odock.pipeline.runner.Pipeline`) runs the stages around these three steps and renders failures
with `error_body`, so a route holds no gate, access, routing or usage code of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from odock.cache.replay import fold_events
from odock.dialects import openai_chat
from odock.dialects.contract import StreamOptions
from odock.errors import GatewayError, UpstreamError
from odock.model import StreamStart
from odock.pipeline.call import FinalChunk
from odock.providers.registry import family_of

if TYPE_CHECKING:
    from odock.dialects.contract import Dialect
    from odock.model import GatewayResponse, StreamEvent
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

    # --- replay: answering from a whole normalized answer (a cache hit) ------------------------------------

    @property
    def replay_dialect(self) -> Dialect | None:
        """The dialect this route answers in (None: a route without a codec cannot replay)."""
        return self.dialect

    def replay_model(self, call: Call, events: list[StreamEvent]) -> str:
        """The model the replayed answer names: the one the original answer named."""
        start = next((ev for ev in events if isinstance(ev, StreamStart)), None)
        return (start.model if start else "") or call.ctx.requested_model or ""

    def replay_stream(self, call: Call) -> tuple[StreamOptions, bytes]:
        """The stream options and content type of this call's replayed stream."""
        from odock.edge.endpoints.passthrough import want_stream_usage

        return StreamOptions(include_usage=want_stream_usage(call.json or {})), b"text/event-stream"

    def replay_unary(self, call: Call, response: GatewayResponse, model: str) -> bytes:
        """The unary body of a replayed answer."""
        dialect = self.replay_dialect
        assert dialect is not None
        return dialect.client.encode_response(response, model=model)

    async def replay(self, call: Call, events: list[StreamEvent]) -> None:
        """Answer as a stream or unary, as this call asked, whichever way the answer was first given."""
        dialect = self.replay_dialect
        assert dialect is not None
        ctx = call.ctx
        model = self.replay_model(call, events)
        if not ctx.stream:
            provider = ctx.answered_provider or ctx.provider
            response = fold_events(events, family_of(provider.type) if provider else "")
            await call.answered(response)
            await call.respond(200, self.replay_unary(call, response, model))
            return
        options, content_type = self.replay_stream(call)
        encoder = dialect.client.stream_encoder(model=model, request_id=ctx.request_id, options=options)
        passed: list[StreamEvent] = []
        for event in events:
            out = call.delta(event)  # a stage may drop an event or turn it into several
            if isinstance(out, list):
                passed.extend(out)
            elif out is not None:
                passed.append(out)
        body = b"".join(encoder.event(ev) for ev in passed) + encoder.finish()
        await call.stream(_once(FinalChunk(body)), encoder.fail, content_type)


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
