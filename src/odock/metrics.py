"""Prometheus metrics (reference §13.3) with bounded labels only: route, provider, status class, kind, stream."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by route and status class",
    ["route", "status_class"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from request start to the last response byte",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Requests being served", registry=REGISTRY)
PROVIDER_DURATION = Histogram(
    "gateway_provider_request_duration_seconds",
    "Upstream time to response headers",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_REQUESTS = Counter(
    "gateway_provider_requests_total", "Upstream attempts", ["provider", "outcome"], registry=REGISTRY
)
PROVIDER_ERRORS = Counter(
    "gateway_provider_errors_total", "Upstream failures by kind", ["provider", "kind"], registry=REGISTRY
)
STREAMS = Counter(
    "gateway_stream_sessions_total", "Streams served, by outcome", ["route", "outcome"], registry=REGISTRY
)
ROUTING_ATTEMPTS = Histogram(
    "gateway_routing_attempts",
    "Upstream attempts per routed call",
    buckets=(1, 2, 3, 4, 6, 10),
    registry=REGISTRY,
)
ROUTING_DECISIONS = Counter(
    "gateway_routing_decisions_total", "Routed calls by decision", ["decision"], registry=REGISTRY
)
USAGE_QUEUE = Gauge("gateway_usage_queue_depth", "Usage records waiting to be written", registry=REGISTRY)
USAGE_FLUSHED = Counter("gateway_usage_flushed_total", "Usage records written", registry=REGISTRY)
USAGE_FLUSH_ERRORS = Counter(
    "gateway_usage_flush_errors_total", "Failed usage batch writes (retried)", registry=REGISTRY
)
USAGE_REFUSED = Counter(
    "gateway_usage_refused_total",
    "Usage records the store refused (a value its column cannot hold), set aside",
    registry=REGISTRY,
)
USAGE_DROPPED = Counter(
    "gateway_usage_dropped_total", "Usage records dropped because the buffer was full", registry=REGISTRY
)
USAGE_UNSPOOLED = Counter(
    "gateway_usage_unspooled_total",
    "Usage records queued without a spool copy (spool full or not writable): lost if the process is killed "
    "before they are written",
    registry=REGISTRY,
)
RATELIMIT_DECISIONS = Counter(
    "gateway_ratelimit_decisions_total",
    "Governance gate decisions (rate limits, quotas, budgets)",
    ["ratelimit_stage", "decision"],
    registry=REGISTRY,
)
GOVERNANCE_ERRORS = Counter(
    "gateway_governance_errors_total",
    "Governance failures handled without failing the call",
    ["stage"],
    registry=REGISTRY,
)
TOKENS = Counter("gateway_tokens_total", "Tokens by class", ["provider", "class"], registry=REGISTRY)
USAGE_ANOMALIES = Counter(
    "gateway_usage_anomalies_total",
    "Upstream usage reports clamped as impossible (negative, above the ceiling)",
    ["provider", "kind"],
    registry=REGISTRY,
)
RESERVATION_EXCEEDED = Counter(
    "gateway_reservation_exceeded_total",
    "Calls charged above their budget (or token/cost quota) reservation",
    ["kind"],
    registry=REGISTRY,
)

# SafetySec (reference §7.6): module runs, decisions, blocks, redactions and failing modules (never any text)
SECURITY_MODULE_RUNS = Counter(
    "gateway_security_module_runs_total", "SafetySec module runs", ["phase", "module"], registry=REGISTRY
)
SECURITY_DECISIONS = Counter(
    "gateway_security_decisions_total",
    "SafetySec decisions by phase and action (allow, observe, redact, block)",
    ["phase", "action"],
    registry=REGISTRY,
)
SECURITY_BLOCKS = Counter(
    "gateway_security_blocks_total",
    "Calls blocked by SafetySec",
    ["phase", "module", "category"],
    registry=REGISTRY,
)
SECURITY_REDACTIONS = Counter(
    "gateway_security_redactions_total",
    "Spans redacted by SafetySec",
    ["phase", "category"],
    registry=REGISTRY,
)
SECURITY_ERRORS = Counter(
    "gateway_security_errors_total",
    "SafetySec modules that failed, by how the call went on (closed: refused, open: let through)",
    ["phase", "module", "mode"],
    registry=REGISTRY,
)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, cached: label sets are bounded and `labels()` costs a lock per call."""
    return metric.labels(*values)
