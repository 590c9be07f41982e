"""The shape shared by every LLM route: run the call's stages, render failures in the route's dialect,
and always finish the call (post-flight + usage record).

Upstream failures (reference §10.8 says 502 with the upstream error body): with `ODOCK_UPSTREAM_ERRORS=passthrough`
(the default) a final upstream 4xx — routing gave up or chose not to fail over — keeps its status, so SDKs raise
their own class (BadRequestError on a context-length 400, RateLimitError on a 429) and can honour the provider's
Retry-After. A native route answers with the provider's body verbatim, the very shape its SDK parses; the
translating unified route keeps its Odock body. 5xx, unreachable and timeouts stay 502, and `strict` keeps every
upstream failure 502. `X-Odock-Upstream-Status` names the upstream's status whenever it answered with one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.dialects import openai_chat
from odock.edge.http import ClientDisconnected, Request, render_error
from odock.errors import GatewayError, UpstreamError
from odock.pipeline.call import Call, upstream_error_body

if TYPE_CHECKING:
    from odock.gateway import Gateway

# upstream statuses about the gateway's own provider account, not the client's request: a rejected or
# under-privileged provider credential (401, 403; 407 from an egress proxy) or the provider's billing (402).
# Passed through they would read as the client's Odock key being refused or its Odock budget spent: they stay 502.
PROVIDER_ACCOUNT_STATUSES = frozenset({401, 402, 403, 407})


def adopt_upstream_status(err: UpstreamError, mode: str) -> None:
    """Prepare an upstream failure for the client: the upstream's status and error in the body and a header; in
    passthrough mode a client-side 4xx also keeps its status and the headers a client acts on (Retry-After)."""
    err.extra.update(upstream_error_body(err))
    status = err.upstream_status
    if status is None:
        return
    err.headers["X-Odock-Upstream-Status"] = str(status)
    if mode == "passthrough" and 400 <= status < 500 and status not in PROVIDER_ACCOUNT_STATUSES:
        err.status = status
        err.headers.update(err.upstream_headers)


class LLMEndpoint:
    route = "llm"
    methods: tuple[str, ...] = ("POST",)
    # the provider family a native route pins (RequiredProvider); None on the unified route
    required_provider: str | None = None
    # the client speaks its upstream's dialect: a passed-through upstream 4xx keeps the provider's own body
    relays_upstream_body = True

    def error_body(self, err: GatewayError) -> bytes:
        """Render an error in this route's dialect (OpenAI shape unless overridden)."""
        return openai_chat.error_body(err)

    def render(self, err: GatewayError) -> tuple[bytes, bytes]:
        """The error's body and content type: the provider's own for a passed-through upstream 4xx on a native
        route, else this route's dialect."""
        if (self.relays_upstream_body and isinstance(err, UpstreamError) and err.upstream_body
                and err.status == err.upstream_status):
            content_type = err.upstream_content_type or "text/plain; charset=utf-8"
            return err.upstream_body, content_type.encode("latin-1", "replace")
        return self.error_body(err), b"application/json"

    async def serve(self, call: Call) -> None:
        raise NotImplementedError

    async def handle(self, gw: Gateway, req: Request) -> None:
        call = Call(gw, req, self.route, self.required_provider)
        try:
            await self.serve(call)
        except GatewayError as err:
            if isinstance(err, UpstreamError):
                adopt_upstream_status(err, gw.settings.upstream_errors)
            call.fail(err)
            if not req.started:
                body, content_type = self.render(err)
                await req.respond(err.status, body, content_type,
                                  headers=render_error(err) + call.governed_headers())
        except ClientDisconnected:
            call.ctx.outcome, call.ctx.error_code = "cancelled", "client_disconnected"
        except BaseException:
            call.ctx.status, call.ctx.outcome, call.ctx.error_code = 500, "failed", "internal_error"
            raise
        finally:
            await call.finish()
