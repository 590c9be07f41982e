"""OpenTelemetry traces (the `odock[otel]` extra), built into the pipelines only when enabled.

    http.request (SERVER, root)                   one per sampled call; GenAI attributes, status, usage, cost
      ├─ gateway.auth, gateway.ratelimit.evaluate, gateway.request.decode, gateway.route.resolve, …   a stage each
      └─ chat gpt-4o-mini (CLIENT)                one per upstream attempt; its W3C traceparent goes upstream

Nothing here is on the hot path when tracing is off: `Gateway.build_pipelines` then builds plain stage lists
and never imports this module. When it is on, the sampling decision is taken once, at the root (an inbound
`traceparent` decides when present, else `OBSERVABILITY_SAMPLE_RATE`), and an unsampled call builds nothing:
the proxies and the transport see `ctx.trace is None` and call straight through.

Span attributes carry ids, names, numbers and decisions only — never a prompt, a completion or a key.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise SystemExit(
        "OBSERVABILITY_OTEL_TRACES_EXPORTER=otlphttp needs the OpenTelemetry extra: pip install 'odock[otel]'"
    ) from missing

from odock.errors import GatewayError
from odock.pipeline.stage import Stage
from odock.pipeline.stages.request_log import budget_decision
from odock.pipeline.stages.usage import storable
from odock.providers.registry import family_of

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.model import GatewayResponse, StreamEvent
    from odock.pipeline.call import Call
    from odock.routing.router import AttemptObserver, Candidate
    from odock.settings import Settings
    from odock.transport.base import Transport, UpstreamRequest, UpstreamResponse

# the reference's span names (§13.4) for the stages it names; others are `gateway.<stage name>`
SPAN_NAMES = {
    "pre_auth_gate": "gateway.ratelimit.evaluate",
    "authenticate": "gateway.auth",
    "early_gate": "gateway.ratelimit.evaluate",
    "read_body": "gateway.request.decode",
    "model_access": "gateway.route.resolve",
    "final_gate": "gateway.budget.enforce",
    "routing": "gateway.provider.route",
    "usage": "gateway.usage.collect",
}
# gen_ai.provider.name well-known values (GenAI semantic conventions); vLLM has none, so its own name
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "vllm": "vllm"}
# gen_ai.operation.name by model type
OPERATIONS = {"chat": "chat", "reasoning": "chat", "embeddings": "embeddings"}

_PROPAGATOR = TraceContextTextMapPropagator()
# the sampled call this task is serving (the transport proxy reads it: it is not given the call)
_CURRENT: ContextVar[CallTrace | None] = ContextVar("odock_call_trace", default=None)


def operation(ctx: CallContext) -> str:
    model = ctx.answered_by or ctx.model
    if model is not None:
        return OPERATIONS.get(model.type, model.type)
    return "generate_content" if ctx.route.startswith("gemini") else "chat"


def usage_attributes(ctx: CallContext) -> dict[str, Any]:
    """gen_ai.usage.*: input tokens count every input token, cached ones included, as the convention says; the
    cache reads and writes are also given on their own."""
    usage = ctx.usage
    if usage is None:
        return {}
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.total_input,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.cache_write_tokens:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attributes


class CallTrace:
    """One sampled call's spans."""

    __slots__ = ("attempt", "context", "root", "stages", "trace_id")

    def __init__(self, root: trace.Span, context: otel_context.Context) -> None:
        self.root = root
        self.context = context  # the root as a parent, for the stage and attempt spans
        self.trace_id = format(root.get_span_context().trace_id, "032x")
        self.attempt: trace.Span | None = None  # the upstream attempt in flight
        # the stages' timings (span name, stage, start ns, end ns, error code): their spans are made when the call
        # ends, after the answer went out, so the client does not wait for the SDK's span bookkeeping
        self.stages: list[tuple[str, str, int, int, str | None]] = []

    def stage_spans(self, tracer: trace.Tracer) -> None:
        for name, stage, start, end, error in self.stages:
            attributes = {"gateway.stage": stage}
            if error is not None:
                attributes.update({"error.type": error, "gateway.decision": "deny"})
            span = tracer.start_span(name, context=self.context, start_time=start, attributes=attributes)
            span.end(end_time=end)
        self.stages.clear()


class Tracing:
    """The tracer provider, its exporter, and the pieces `build_pipelines` wraps around a pipeline."""

    def __init__(self, provider: TracerProvider, sample_rate: float) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("odock")
        self.sample_rate = sample_rate

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        resource = Resource.create({"service.name": settings.service_name, "service.namespace": "odock"})
        # the sampling decision is ours, at the root: the SDK records every span it is asked for
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.traces_url)))
        return cls(provider, settings.sample_rate)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    async def close(self) -> None:
        import asyncio

        # exports what is queued: a blocking HTTP call, kept off the event loop
        await asyncio.to_thread(self.provider.shutdown)

    # --- build time ------------------------------------------------------------------------------------------

    def root(self) -> Stage:
        return TraceRoot(self)

    def stages(self, stages: list[Stage]) -> list[Stage]:
        """Each stage behind a proxy that gives its hooks a span on a sampled call."""
        return [traced(stage, self) for stage in stages]

    def transport(self, inner: Transport) -> Transport:
        return TracedTransport(inner, self)

    def observer(self, inner: AttemptObserver | None) -> AttemptObserver:
        """The router's attempt observer, which also closes the attempt's span with its outcome."""

        def observe(candidate: Candidate, ok: bool, elapsed: float, err: GatewayError | None) -> None:
            state = _CURRENT.get()
            if state is not None and state.attempt is not None:
                end_attempt(state, candidate, err)
            if inner is not None:
                inner(candidate, ok, elapsed, err)

        return observe

    # --- per call --------------------------------------------------------------------------------------------

    def sampled(self, headers: dict[str, str]) -> tuple[bool, Any]:
        """Whether to trace this call, and the inbound parent context (None without a valid traceparent)."""
        if "traceparent" in headers:
            parent = _PROPAGATOR.extract(headers)
            span_context = trace.get_current_span(parent).get_span_context()
            if span_context.is_valid:
                return span_context.trace_flags.sampled, parent
        return random.random() < self.sample_rate, None


def end_attempt(state: CallTrace, candidate: Candidate, err: GatewayError | None) -> None:
    span, state.attempt = state.attempt, None
    assert span is not None
    slug = candidate.model.slug
    span.update_name(f"{OPERATIONS.get(candidate.model.type, candidate.model.type)} {slug}")
    family = family_of(candidate.provider.type)
    span.set_attributes(
        {
            "gen_ai.provider.name": PROVIDER_NAMES.get(family, family),
            "gen_ai.request.model": slug,
            "gateway.provider": family,
            "gateway.model": candidate.model.name,
        }
    )
    if err is not None:
        span.set_attribute("error.type", err.code)
        upstream_status = getattr(err, "upstream_status", None)
        if upstream_status:
            span.set_attribute("http.response.status_code", upstream_status)
        span.set_status(Status(StatusCode.ERROR, err.code))
    span.end()


class TraceRoot(Stage):
    """First stage: decides sampling once, opens the root span, and closes it as the call's last compensation."""

    name = "trace"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def before(self, call: Call) -> None:
        exchange = call.exchange
        sampled, parent = self.tracing.sampled(exchange.headers)
        if not sampled:
            return  # nothing built for an unsampled call
        ctx = call.ctx
        span = self.tracing.tracer.start_span(
            "http.request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": getattr(exchange, "method", "POST"),
                "url.path": exchange.path,
                "gateway.route": ctx.route,
                "gateway.request_id": ctx.request_id,
            },
        )
        parent_context = trace.set_span_in_context(span)
        token = otel_context.attach(parent_context)
        state = CallTrace(span, parent_context)
        ctx.trace = state
        reset = _CURRENT.set(state)

        tracer = self.tracing.tracer

        async def finish() -> None:
            _CURRENT.reset(reset)
            state.stage_spans(tracer)
            finish_root(ctx, state)
            otel_context.detach(token)

        call.defer(finish)


def root_attributes(ctx: CallContext) -> dict[str, Any]:
    """The root span's attributes once the call ended: status, GenAI attributes, usage, cost, decisions."""
    answered, provider = ctx.answered_by, ctx.answered_provider or ctx.provider
    family = family_of(provider.type) if provider is not None else None
    candidates: dict[str, Any] = {
        "http.response.status_code": ctx.status or 500,
        "gen_ai.operation.name": operation(ctx),
        "gateway.stream": ctx.stream,
        "gateway.outcome": ctx.outcome,
        "organization.id": ctx.key.organisation_id if ctx.key else None,
        "gateway.api_key.id": ctx.key.id if ctx.key else None,
        "gen_ai.request.model": ctx.requested_model if storable(ctx.requested_model) else None,
        "gen_ai.response.model": answered.slug if answered else None,
        "gateway.model": answered.name if answered else None,
        "gen_ai.provider.name": PROVIDER_NAMES.get(family, family) if family else None,
        "gateway.provider": family,
        "gateway.retry_count": len(ctx.attempts) - 1 if ctx.attempts else None,
        "gateway.cost_usd": ctx.cost_nanos / 1e9 if ctx.priced and ctx.cost_nanos is not None else None,
        "gateway.budget.decision": budget_decision(ctx),
        "error.type": ctx.error_code,
    }
    attributes = {name: value for name, value in candidates.items() if value is not None}
    if ctx.decisions:
        attributes.update({f"gateway.decision.{name}": value for name, value in ctx.decisions.items()})
    attributes.update(usage_attributes(ctx))
    return attributes


def finish_root(ctx: CallContext, state: CallTrace) -> None:
    span = state.root
    if state.attempt is not None:  # an attempt cut by a bug or a cancellation
        state.attempt.set_status(Status(StatusCode.ERROR, "attempt did not complete"))
        state.attempt.end()
        state.attempt = None
    span.set_attributes(root_attributes(ctx))
    if ctx.first_byte_at is not None:
        # the first stream chunk, as an event at its own time (perf_counter → wall clock)
        at = time.time_ns() - int((time.perf_counter() - ctx.first_byte_at) * 1e9)
        span.add_event("gateway.stream.first_chunk", timestamp=at)
    if (ctx.status or 500) >= 500 or ctx.outcome == "failed":
        span.set_status(Status(StatusCode.ERROR, ctx.error_code or "failed"))
    span.end()


class TracedTransport:
    """The upstream transport, opening an attempt span and sending its W3C traceparent on a sampled call."""

    def __init__(self, inner: Transport, tracing: Tracing) -> None:
        self.inner = inner
        self.tracer = tracing.tracer

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        state = _CURRENT.get()
        if state is None:
            return await self.inner.send(request)
        span = self.tracer.start_span(
            "gateway.provider.request",
            context=state.context,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": request.method, "server.address": _host(request.url)},
        )
        state.attempt = span
        _PROPAGATOR.inject(request.headers, context=trace.set_span_in_context(span))
        response = await self.inner.send(request)
        span.set_attribute("http.response.status_code", response.status)
        return response

    async def close(self) -> None:
        await self.inner.close()


def _host(url: str) -> str:
    rest = url.partition("://")[2]
    return rest.split("/", 1)[0]


class _TracedStage(Stage):
    """A stage behind a span per hook call; only the hooks the stage has are defined (see `traced`)."""

    def __init__(self, inner: Stage, tracer: trace.Tracer) -> None:
        self.inner = inner
        self.tracer = tracer
        self.span_name = SPAN_NAMES.get(inner.name, f"gateway.{inner.name}")


async def _before(self: _TracedStage, call: Call) -> None:
    state = call.ctx.trace
    if state is None:
        await self.inner.before(call)
        return
    await _timed(state, self.span_name, self.inner.name, self.inner.before(call))


async def _after(self: _TracedStage, call: Call, response: GatewayResponse | None) -> None:
    state = call.ctx.trace
    if state is None:
        await self.inner.after(call, response)
        return
    await _timed(state, self.span_name + ".after", self.inner.name, self.inner.after(call, response))


async def _timed(state: CallTrace, name: str, stage: str, hook: Awaitable[None]) -> None:
    """Run a hook and note its timing for its span (made when the call ends: `CallTrace.stage_spans`)."""
    error: str | None = None
    start = time.time_ns()
    try:
        await hook
    except GatewayError as err:
        error = err.code
        raise
    finally:
        state.stages.append((name, stage, start, time.time_ns(), error))


def _on_delta(self: _TracedStage, call: Call, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
    return self.inner.on_delta(call, event)  # no span per delta: a stream has thousands


def traced(stage: Stage, tracing: Tracing) -> Stage:
    """`stage` behind a proxy class with exactly its hooks and request/response needs (the runner builds its
    per-phase lists from the class, so a proxy must not add a hook the stage does not have)."""
    hooks = stage.hooks()
    namespace: dict[str, Any] = {
        "name": stage.name,
        "needs_request": stage.needs_request,
        "needs_response": stage.needs_response,
    }
    if "before" in hooks:
        namespace["before"] = _before
    if "after" in hooks:
        namespace["after"] = _after
    if "on_delta" in hooks:
        namespace["on_delta"] = _on_delta
    proxy = type(f"Traced{type(stage).__name__}", (_TracedStage,), namespace)
    return proxy(stage, tracing.tracer)  # type: ignore[no-any-return]
