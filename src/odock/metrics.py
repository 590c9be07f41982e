"""Prometheus metrics (reference §13.3) with bounded labels only: route, provider, status class, kind, stream.

The per-call updates go through `TALLY`: a Prometheus `inc` takes a lock and a histogram's `observe` walks its
buckets in Python (under callgrind the ~8 updates of one call cost about 50k of its instructions); tallied, an
update is a dict addition (and a bisect), and the totals move to Prometheus `Tally.FLUSH_S` later at most, and
before every scrape, so `/metrics` is always exact.
"""

from __future__ import annotations

import asyncio
import functools
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric


class Tally:
    """Counter and histogram updates added up in plain numbers; `flush` hands them to Prometheus."""

    FLUSH_S = 0.25

    __slots__ = ("_armed", "_counts", "_observed")

    def __init__(self) -> None:
        self._counts: dict[tuple[Any, tuple[str, ...]], float] = {}
        # per histogram and labels: its finite bucket bounds, and a count per bucket (the last one +Inf) then the
        # sum of the values
        self._observed: dict[tuple[Any, tuple[str, ...]], tuple[tuple[float, ...], list[float]]] = {}
        self._armed = False

    def inc(self, counter: Any, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        key = (counter, labels)
        self._counts[key] = self._counts.get(key, 0) + amount
        if not self._armed:
            self._arm()

    def observe(self, histogram: Any, value: float, labels: tuple[str, ...] = ()) -> None:
        key = (histogram, labels)
        entry = self._observed.get(key)
        if entry is None:
            bounds = tuple(histogram._upper_bounds[:-1])
            entry = self._observed[key] = (bounds, [0] * (len(bounds) + 2))
        bounds, slot = entry
        # Prometheus counts a value in the first bucket whose bound is >= it (past the last bound: +Inf)
        slot[bisect_left(bounds, value)] += 1
        slot[-1] += value
        if not self._armed:
            self._arm()

    def _arm(self) -> None:
        self._armed = True
        try:
            asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
        except RuntimeError:  # no event loop (a synchronous caller): at once
            self.flush()

    def flush(self) -> None:
        """Hand the totals to Prometheus."""
        self._armed = False
        counts, self._counts = self._counts, {}
        for (counter, labels), amount in counts.items():
            (child(counter, *labels) if labels else counter).inc(amount)
        observed, self._observed = self._observed, {}
        for (histogram, labels), (_, slot) in observed.items():
            target = child(histogram, *labels) if labels else histogram
            # the bucket values and the sum `observe` itself adds to (prometheus_client's Histogram internals,
            # pinned by the lock file; tests/observability/test_tally.py compares with observe())
            for index, seen in enumerate(slot[:-1]):
                if seen:
                    target._buckets[index].inc(seen)
            target._sum.inc(slot[-1])


TALLY = Tally()  # one per process, like the metrics it feeds


class _FlushFirst:
    """Registered first, so collected first: every scrape sees the tally's totals."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        TALLY.flush()
        return []


class Level:
    """A gauge's value as a plain number, read by Prometheus when it scrapes (no lock per change)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(_FlushFirst())

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
REQUESTS_IN_FLIGHT = Level()
IN_FLIGHT.set_function(lambda: REQUESTS_IN_FLIGHT.value)
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
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time from request start to the first streamed bytes sent to the client",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time spent in the gateway before the upstream call began (auth, gates, access, routing)",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
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
BUDGET_DECISIONS = Counter(
    "gateway_budget_decisions_total",
    "Budget and quota reservations: reserved, denied, then settled or released",
    ["decision"],
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

# the response cache (odock.cache): lookups by result, the bytes held (embedded mode), entries evicted by reason
# ("lru", "expired", "purge"), and misses that waited for an identical call in flight instead of calling upstream
CACHE_HITS = Counter(
    "gateway_cache_hits_total", "Calls answered from the cache", ["route"], registry=REGISTRY
)
CACHE_MISSES = Counter(
    "gateway_cache_misses_total", "Cacheable calls not found in the cache", ["route"], registry=REGISTRY
)
CACHE_BYPASSES = Counter(
    "gateway_cache_bypasses_total",
    "Cacheable calls that skipped the cache (Cache-Control, an answer it cannot replay)",
    ["route", "reason"],
    registry=REGISTRY,
)
CACHE_BYTES = Gauge(
    "gateway_cache_bytes", "Bytes of cached answers held in memory (embedded)", registry=REGISTRY
)
CACHE_STORED_BYTES = Counter(
    "gateway_cache_stored_bytes_total", "Bytes of answers written to the cache", registry=REGISTRY
)
CACHE_EVICTIONS = Counter(
    "gateway_cache_evictions_total", "Cached answers removed, by reason", ["reason"], registry=REGISTRY
)
CACHE_COALESCED = Counter(
    "gateway_cache_coalesced_waits_total",
    "Misses that waited for an identical call in flight rather than calling the upstream",
    registry=REGISTRY,
)
# plugin names are bounded: only configured plugins run (reference §8.6)
PLUGIN_EXECUTIONS = Counter(
    "gateway_plugin_executions_total",
    "Plugin executions by outcome (allow, modify, block, error, timeout)",
    ["plugin_name", "plugin_stage", "outcome"],
    registry=REGISTRY,
)
PLUGIN_DURATION = Histogram(
    "gateway_plugin_execution_duration_seconds",
    "Time one plugin execution took",
    ["plugin_name", "plugin_stage"],
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
PLUGIN_ERRORS = Counter(
    "gateway_plugin_errors_total",
    "Plugin failures (error, timeout), whether the call failed open or closed",
    ["plugin_name", "plugin_stage", "kind"],
    registry=REGISTRY,
)
PLUGIN_ASYNC_DROPPED = Counter(
    "gateway_plugin_async_dropped_total",
    "post_response runs dropped because the async queue was full",
    registry=REGISTRY,
)
PLUGIN_ASYNC_QUEUE = Gauge(
    "gateway_plugin_async_queue_depth", "post_response runs waiting for a worker", registry=REGISTRY
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


# MCP gateway: labels from bounded sets only (transport, a known JSON-RPC method or "other", outcome, direction)
MCP_REQUESTS = Counter(
    "gateway_mcp_requests_total",
    "MCP requests answered, by transport, JSON-RPC method and outcome",
    ["transport", "method", "outcome"],
    registry=REGISTRY,
)
MCP_DURATION = Histogram(
    "gateway_mcp_request_duration_seconds",
    "MCP request time, first byte in to last byte out",
    ["transport"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
MCP_BYTES = Counter(
    "gateway_mcp_bytes_total",
    "MCP body bytes relayed, by direction (in, out)",
    ["direction"],
    registry=REGISTRY,
)
MCP_BLOCKS = Counter(
    "gateway_mcp_blocked_total",
    "MCP calls or listed tools refused by the server's tool rules, by kind",
    ["kind"],
    registry=REGISTRY,
)
MCP_STDIO_PROCESSES = Gauge(
    "gateway_mcp_stdio_processes", "Live stdio MCP server processes (all pools)", registry=REGISTRY
)
MCP_STDIO_EVENTS = Counter(
    "gateway_mcp_stdio_events_total",
    "Stdio pool events: spawn, exit, crash, init_timeout, idle_reaped, lifetime_reaped, breaker_open",
    ["event"],
    registry=REGISTRY,
)
