"""The pipeline: an ordered list of stages, built once at start, that every call of one kind runs through.

    before-hooks, in list order ─► router: attempts over route.send ─► route.respond (after-hooks, deltas)
                                                                                   │
    compensations, in reverse, always ◄────────────────────────────────────────────┘

The order lives in one list (Starlette's `build_middleware_stack` habit); see `odock.pipeline.stages` for the
reference order of each kind of call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from odock.errors import ClientDisconnected, GatewayError, UpstreamError
from odock.pipeline.call import Answered, Call, upstream_error_body
from odock.routing.router import run_attempts

if TYPE_CHECKING:
    from odock.pipeline.exchange import Exchange
    from odock.pipeline.route import Route
    from odock.pipeline.stage import Stage
    from odock.routing.router import AttemptObserver
    from odock.state.catalogue import Catalogue
    from odock.transport.base import Transport


@dataclass(slots=True, frozen=True)
class BodyLimits:
    max_body_bytes: int
    read_timeout_s: float


def _render(err: GatewayError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]


# upstream statuses about the gateway's own provider account, not the client's request: a rejected or
# under-privileged provider credential (401, 403; 407 from an egress proxy) or the provider's billing (402).
# Passed through they would read as the client's Odock key being refused or its Odock budget spent: they stay 502.
PROVIDER_ACCOUNT_STATUSES = frozenset({401, 402, 403, 407})


def adopt_upstream_status(err: UpstreamError, mode: str) -> None:
    """Prepare an upstream failure for the client (reference §10.8 says 502 with the upstream error body).

    The upstream's status and error go in the body and `X-Odock-Upstream-Status`; with `passthrough` (the
    default) a final client-side 4xx — routing gave up or chose not to fail over — also keeps its status and the
    headers a client acts on (Retry-After), so SDKs raise their own class. 5xx, unreachable and timeouts stay
    502, and `strict` keeps every upstream failure 502. A failure of the gateway's own provider account keeps
    only its status: the provider's body names the operator's credential (a masked key, a project id)."""
    status = err.upstream_status
    if status in PROVIDER_ACCOUNT_STATUSES:
        err.extra["upstream_status"] = status
    else:
        err.extra.update(upstream_error_body(err))
    if status is None:
        return
    err.headers["X-Odock-Upstream-Status"] = str(status)
    if mode == "passthrough" and 400 <= status < 500 and status not in PROVIDER_ACCOUNT_STATUSES:
        err.status = status
        err.headers.update(err.upstream_headers)


class Pipeline:
    """One kind of call's stages in order, and what the runner needs to reach the upstream."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        transport: Transport,
        limits: BodyLimits,
        client_ip: Callable[[Exchange], str],
        observe: AttemptObserver | None = None,
        catalogue: Catalogue | None = None,
        upstream_errors: str = "passthrough",
    ) -> None:
        self.stages = tuple(stages)
        self.upstream_errors = upstream_errors  # ODOCK_UPSTREAM_ERRORS: passthrough | strict
        self.transport = transport
        self.catalogue = catalogue  # for routes the gateway answers itself (model listings)
        self.limits = limits
        self.client_ip = client_ip
        self.observe = observe
        self.before_stages = tuple(s for s in self.stages if "before" in s.hooks())
        self.delta_stages = tuple(s for s in self.stages if "on_delta" in s.hooks())
        self.after_stages = tuple(s for s in reversed(self.stages) if "after" in s.hooks())
        self.needs_request = any(s.needs_request for s in self.stages)
        self.needs_response = any(s.needs_response for s in self.stages)

    def hooks_before(self, call: Call, stage: Stage) -> tuple[tuple[Stage, ...], tuple[Stage, ...]]:
        """The call's delta and after stages placed before `stage` (those that see an answer `stage` gave
        itself), less any that stepped aside on this call."""
        earlier = set(self.stages[: self.stages.index(stage)])
        return (
            tuple(s for s in call.delta_stages if s in earlier),
            tuple(s for s in call.after_stages if s in earlier),
        )

    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    async def run(self, exchange: Exchange, route: Route) -> None:
        """Serve one call: stages, upstream attempts, answer; compensations always."""
        call = Call(self, exchange, route, self.client_ip(exchange))
        try:
            try:
                for stage in self.before_stages:
                    await stage.before(call)
            except Answered as answered:
                call.delta_stages, call.after_stages = self.hooks_before(call, answered.stage)
                await route.replay(call, answered.events)
                return
            upstream = None
            if call.plan is not None:
                upstream = await run_attempts(
                    call.ctx, call.plan, lambda c: route.send(call, c), self.observe
                )
                answered_by = call.ctx.answered_by
                if answered_by is not None:
                    exchange.response_headers.append((b"x-odock-model", answered_by.name.encode()))
            await route.respond(call, upstream)
        except GatewayError as err:
            if isinstance(err, UpstreamError):
                adopt_upstream_status(err, self.upstream_errors)
            call.fail(err)
            if not exchange.started:
                body, content_type = route.render(err)
                await exchange.respond(
                    err.status, body, content_type, headers=_render(err) + call.governed_headers()
                )
        except ClientDisconnected:
            call.ctx.outcome, call.ctx.error_code = "cancelled", "client_disconnected"
        except BaseException:
            call.ctx.status, call.ctx.outcome, call.ctx.error_code = 500, "failed", "internal_error"
            raise
        finally:
            await call.unwind()
