"""The shape shared by every LLM route: run the call's stages, render failures in the route's dialect,
and always finish the call (post-flight + usage record)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.dialects import openai_chat
from odock.edge.http import ClientDisconnected, Request, render_error
from odock.errors import GatewayError, UpstreamError
from odock.pipeline.call import Call, upstream_error_body

if TYPE_CHECKING:
    from odock.gateway import Gateway


class LLMEndpoint:
    route = "llm"
    methods: tuple[str, ...] = ("POST",)
    # the provider family a native route pins (RequiredProvider); None on the unified route
    required_provider: str | None = None

    def error_body(self, err: GatewayError) -> bytes:
        """Render an error in this route's dialect (OpenAI shape unless overridden)."""
        return openai_chat.error_body(err)

    async def serve(self, call: Call) -> None:
        raise NotImplementedError

    async def handle(self, gw: Gateway, req: Request) -> None:
        call = Call(gw, req, self.route, self.required_provider)
        try:
            await self.serve(call)
        except GatewayError as err:
            call.fail(err)
            if isinstance(err, UpstreamError):
                err.extra.update(upstream_error_body(err))
            if not req.started:
                await req.respond(err.status, self.error_body(err),
                                  headers=render_error(err) + call.governed_headers())
        except ClientDisconnected:
            call.ctx.outcome, call.ctx.error_code = "cancelled", "client_disconnected"
        except BaseException:
            call.ctx.status, call.ctx.outcome, call.ctx.error_code = 500, "failed", "internal_error"
            raise
        finally:
            await call.finish()
