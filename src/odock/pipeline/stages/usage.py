"""The usage record (steps 20–21): priced once, written off the request path, for every authenticated call."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from odock import metrics
from odock.governance.pricing import cost_nanos
from odock.governance.usage_check import checked_usage
from odock.model import Usage
from odock.pipeline.stage import Stage
from odock.pipeline.stages.access import MAX_MODEL_NAME
from odock.providers.registry import family_of
from odock.state.records import UsageRecord

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.governance import Governance
    from odock.pipeline.call import Call
    from odock.usage import UsageRecorder

log = logging.getLogger("odock.usage")


class Pricer:
    """The exact cost of a finished call, from usage checked for sanity first; memoised on its context (the
    post-flight and the record share it), and it never raises: the answer has been sent by then."""

    def __init__(self, usage_max_tokens: int = 10_000_000) -> None:
        self.usage_max_tokens = usage_max_tokens

    def cost(self, ctx: CallContext) -> int | None:
        if ctx.priced:
            return ctx.cost_nanos
        ctx.priced = True
        try:
            self.check_usage(ctx)
            model = ctx.answered_by or ctx.model
            if model is None or not model.pricing or (ctx.usage is None and not ctx.billed_images):
                return None
            ctx.cost_nanos = cost_nanos(model.pricing, ctx.usage or Usage(), images=ctx.billed_images)
        except Exception:
            log.exception("pricing the call failed", extra={"request_id": ctx.request_id})
        return ctx.cost_nanos

    def check_usage(self, ctx: CallContext) -> None:
        """Clamp impossible upstream usage (negative, above ODOCK_USAGE_MAX_TOKENS) before it is priced."""
        if ctx.usage is None:
            return
        ctx.usage, flags = checked_usage(ctx.usage, ctx.raw_usage, self.usage_max_tokens)
        if flags:
            ctx.usage_flags = flags
            provider = ctx.answered_provider or ctx.provider
            family = family_of(provider.type) if provider else "unknown"
            for flag in flags:
                metrics.child(metrics.USAGE_ANOMALIES, family, flag).inc()
            log.warning(
                "impossible usage from the upstream clamped: %s",
                ", ".join(flags),
                extra={"request_id": ctx.request_id},
            )


def storable(name: str | None) -> bool:
    """Whether a requested model name fits the ledger's column (a refused name never reached a lookup)."""
    return name is not None and len(name) <= MAX_MODEL_NAME and "\x00" not in name


def routing_evidence(ctx: CallContext) -> dict[str, Any] | None:
    """Every attempt, and whether the call went where it was asked to (reference §9.7)."""
    if not ctx.attempts:
        return None
    answered = ctx.answered_by
    # a cooldown can skip the requested model without a failed attempt: that is a reroute too
    direct = len(ctx.attempts) == 1 and (answered is None or answered.name == ctx.requested_model)
    return {
        "decision": "direct" if direct else "rerouted",
        "attempts": [
            {
                "model": a.model,
                "provider": a.provider,
                "outcome": a.outcome,
                "error_class": a.error_class,
                "status": a.status,
                "latency_ms": a.latency_ms,
            }
            for a in ctx.attempts
        ],
    }


def plugin_evidence(ctx: CallContext) -> list[dict[str, Any]] | None:
    """Each plugin execution of the call so far: plugin, phase, outcome, duration (reference §8.6); never text."""
    if not ctx.plugin_runs:
        return None
    runs = []
    for run in ctx.plugin_runs:
        item: dict[str, Any] = {
            "plugin": run.plugin,
            "phase": run.phase,
            "outcome": run.outcome,
            "duration_us": run.duration_us,
        }
        if run.phase == "stream_chunk":
            item["deltas"] = run.count
        if run.findings:
            item["findings"] = list(run.findings)
        runs.append(item)
    return runs


def call_metadata(ctx: CallContext) -> dict[str, Any] | None:
    """The record's metadata: clamped-usage flags, a cache hit, SafetySec decisions (never text), plugin runs,
    gateway overhead and time to first token (§13.6: "gateway overhead" is the time spent before the upstream call
    began, recorded per request)."""
    metadata: dict[str, Any] = {}
    if ctx.usage_flags:
        metadata["usage_flags"] = ctx.usage_flags
    if ctx.cache_hit:
        metadata["cache_hit"] = True
    overhead, ttft = ctx.overhead_ms(), ctx.ttft_ms()
    if overhead is not None:
        metadata["overhead_ms"] = overhead
    if ttft is not None:
        metadata["ttft_ms"] = ttft
    if ctx.security:
        metadata["security"] = ctx.security
    plugins = plugin_evidence(ctx)
    if plugins:
        metadata["plugins"] = plugins
    return metadata or None


class RecordUsage(Stage):
    """The call's usage record, taken once: just before the response's last bytes leave (a client never holds a
    complete answer whose record a killed process could not replay from the spool), or — for a call that ends
    without a response — as its outermost compensation, after the post-flight. Never raises."""

    name = "usage"

    def __init__(self, recorder: UsageRecorder, pricer: Pricer, governance: Governance | None = None) -> None:
        self.recorder = recorder
        self.pricer = pricer
        self.governance = governance

    async def before(self, call: Call) -> None:
        ctx = call.ctx
        call.before_last_bytes(lambda: self.record(ctx), "usage record")

    def record(self, ctx: CallContext) -> None:
        key = ctx.key
        if key is None:
            return
        cost = self.pricer.cost(ctx)
        if (
            self.governance is not None
            and "above_reservation" not in ctx.usage_flags
            and self.governance.above_reservation(ctx, cost)
        ):
            ctx.usage_flags.append("above_reservation")
        usage = ctx.usage
        answered = ctx.answered_by or ctx.model
        provider = ctx.answered_provider or ctx.provider
        self.recorder.record(
            UsageRecord(
                request_id=ctx.request_id,
                created_at=datetime.now(UTC),
                organisation_id=key.organisation_id,
                team_id=key.team_id,
                user_id=key.user_id,
                api_key_id=key.id,
                route=ctx.route,
                status=ctx.status or 500,
                outcome="failed" if ctx.status >= 400 and ctx.outcome == "success" else ctx.outcome,
                model=ctx.requested_model if storable(ctx.requested_model) else None,
                model_slug=answered.slug if answered else None,
                provider=family_of(provider.type) if provider else None,  # the runtime name (§4.6)
                stream=ctx.stream,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cached_input_tokens=usage.cached_input_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                usage_estimated=usage.estimated if usage else False,
                latency_ms=ctx.elapsed_ms(),
                provider_request_id=ctx.provider_request_id,
                error_code=ctx.error_code,
                cost_nanos=cost,
                pricing=answered.pricing if answered and answered.pricing else None,
                raw_usage=ctx.raw_usage,
                routing=routing_evidence(ctx),
                metadata=call_metadata(ctx),
            )
        )
        if ctx.upstream_started is not None:
            metrics.TALLY.observe(metrics.GATEWAY_OVERHEAD, ctx.upstream_started - ctx.started, (ctx.route,))
        if usage is not None and provider is not None:
            family = family_of(provider.type)
            metrics.TALLY.inc(metrics.TOKENS, (family, "input"), usage.total_input)
            metrics.TALLY.inc(metrics.TOKENS, (family, "output"), usage.output_tokens)
