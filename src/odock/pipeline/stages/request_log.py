"""One structured log line per request (`ODOCK_REQUEST_LOG`: all | errors | sampled | off).

The stage is first in each pipeline and only there when the log is on. It registers its line as the call's first
compensation, so the line is written last, once, however the call ends (success, error, client gone, a bug): by
then the status, usage, cost and routing evidence are known. A 401 has a line too (auth comes after this stage).

Only ids, names, numbers and decisions are logged (reference §13.5): never a prompt, a completion, a key, a hash
of one, or a header.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import TYPE_CHECKING, Any

from odock.pipeline.stage import Stage
from odock.pipeline.stages.usage import storable
from odock.providers.registry import family_of

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.pipeline.call import Call

log = logging.getLogger("odock.request")

MODES = ("all", "errors", "sampled", "off")


def failed(ctx: CallContext) -> bool:
    return ctx.status >= 400 or ctx.outcome != "success" or ctx.status == 0


def request_fields(ctx: CallContext) -> dict[str, Any]:
    """The line's fields, each present when known."""
    key = ctx.key
    answered = ctx.answered_by or ctx.model
    provider = ctx.answered_provider or ctx.provider
    usage = ctx.usage
    candidates: dict[str, Any] = {
        "request_id": ctx.request_id,
        "route": ctx.route,
        "status": ctx.status or 500,
        "code": ctx.error_code,
        "outcome": ctx.outcome if ctx.outcome != "success" else None,
        "key_id": key.id if key else None,
        "organisation_id": key.organisation_id if key else None,
        "team_id": key.team_id if key else None,
        "user_id": key.user_id if key else None,
        "model": ctx.requested_model if storable(ctx.requested_model) else None,
        "answered_by": answered.name if answered and answered.name != ctx.requested_model else None,
        "provider": family_of(provider.type) if provider else None,
        "stream": True if ctx.stream else None,
        "latency_ms": ctx.elapsed_ms(),
        "ttft_ms": ctx.ttft_ms(),
        "overhead_ms": ctx.overhead_ms(),
        "cost_usd": ctx.cost_nanos / 1e9 if ctx.priced and ctx.cost_nanos is not None else None,
    }
    fields = {name: value for name, value in candidates.items() if value is not None}
    if usage is not None:
        fields["input_tokens"] = usage.input_tokens
        fields["output_tokens"] = usage.output_tokens
        if usage.cached_input_tokens:
            fields["cached_input_tokens"] = usage.cached_input_tokens
        if usage.reasoning_tokens:
            fields["reasoning_tokens"] = usage.reasoning_tokens
    _decisions(ctx, fields)
    return fields


def budget_decision(ctx: CallContext) -> str | None:
    """What the call's budget/quota reservation came to: denied, or (once the call ended) settled or released."""
    if ctx.error_code in ("budget_exceeded", "quota_exceeded"):
        return "denied"
    if getattr(ctx.governance, "reservation_id", None) is None:
        return None  # no budget or quota applied
    return "settled" if ctx.usage is not None else "released"


def _decisions(ctx: CallContext, fields: dict[str, Any]) -> None:
    budget = budget_decision(ctx)
    if budget is not None:
        fields["budget"] = budget
    if ctx.attempts:
        answered = ctx.answered_by
        direct = len(ctx.attempts) == 1 and (answered is None or answered.name == ctx.requested_model)
        fields["routing"] = "direct" if direct else "rerouted"
        fields["attempts"] = len(ctx.attempts)
    if ctx.decisions:
        # what other stages decided (safety, plugins, cache, budgets): short names, never content
        fields.update(ctx.decisions)
    if ctx.trace is not None:
        fields["trace_id"] = ctx.trace.trace_id


class RequestLog(Stage):
    """Writes the request's line when the call ends (see the module docstring)."""

    name = "request_log"

    def __init__(self, mode: str, sample_rate: float = 0.1) -> None:
        self.mode = mode
        self.sample_rate = sample_rate

    async def before(self, call: Call) -> None:
        call.defer(functools.partial(self.write, call.ctx))

    def wanted(self, ctx: CallContext) -> bool:
        if self.mode == "all" or failed(ctx):
            return True
        if self.mode == "errors":
            return False
        # sampled: every error, every traced call, and a share of the rest
        return ctx.trace is not None or random.random() < self.sample_rate

    def write(self, ctx: CallContext) -> None:
        level = logging.WARNING if (ctx.status or 500) >= 500 else logging.INFO
        # below ODOCK_LOG_LEVEL the line is not even built
        if log.isEnabledFor(level) and self.wanted(ctx):
            # the record is made directly: `log.log` would walk the stack for a caller nobody reads
            record = log.makeRecord(log.name, level, __file__, 0, "request", (), None)
            record.fields = request_fields(ctx)
            log.handle(record)
