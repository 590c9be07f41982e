"""The metrics tally: what reaches Prometheus is what per-call updates would have made, within FLUSH_S, and at once
when scraped."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from odock import metrics
from odock.metrics import TALLY


def _samples(name: str, labels: dict[str, str]) -> dict[str, float]:
    found = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[sample.labels.get("le", "")] = sample.value
    return found


def _observe_reference(values: list[float]) -> dict[str, float]:
    reference = Histogram(
        "ref", "ref", buckets=metrics.MCP_DURATION._kwargs["buckets"], registry=CollectorRegistry()
    )
    for value in values:
        reference.observe(value)
    return {s.labels["le"]: s.value for s in reference.collect()[0].samples if s.name == "ref_bucket"}


async def test_tallied_metrics_match_per_call_updates() -> None:
    """Counts, amounts and every histogram bucket (bounds included) equal observe()'s, and arrive within FLUSH_S."""
    TALLY.flush()
    bounds = metrics.MCP_DURATION._upper_bounds
    durations = [0.0, bounds[0], bounds[0] * 1.5, bounds[3], 1e9]
    buckets_before = _samples("gateway_mcp_request_duration_seconds_bucket", {"transport": "TALLY"})
    sum_before = _samples("gateway_mcp_request_duration_seconds_sum", {"transport": "TALLY"}).get("", 0.0)
    count = metrics.child(metrics.MCP_REQUESTS, "TALLY", "tools/call", "success")
    in_bytes = metrics.child(metrics.MCP_BYTES, "in")
    before = (count._value.get(), in_bytes._value.get())
    for seconds in durations:
        TALLY.inc(metrics.MCP_REQUESTS, ("TALLY", "tools/call", "success"))
        TALLY.observe(metrics.MCP_DURATION, seconds, ("TALLY",))
        TALLY.inc(metrics.MCP_BYTES, ("in",), 10)
    assert (count._value.get(), in_bytes._value.get()) == before  # not yet: tallied
    await asyncio.sleep(TALLY.FLUSH_S * 2)
    assert (count._value.get(), in_bytes._value.get()) == (before[0] + 5, before[1] + 50)
    after = _samples("gateway_mcp_request_duration_seconds_bucket", {"transport": "TALLY"})
    assert {le: after[le] - buckets_before.get(le, 0.0) for le in after} == _observe_reference(durations)
    total = _samples("gateway_mcp_request_duration_seconds_sum", {"transport": "TALLY"})[""]
    assert total - sum_before == pytest.approx(sum(durations))


async def test_a_scrape_sees_every_update_at_once() -> None:
    """The exposition flushes the tally first: nothing tallied is missing from /metrics, even within FLUSH_S;
    an unlabelled histogram and the in-flight level too."""
    route = metrics.child(metrics.REQUESTS, "tally.test", "2xx")
    before = route._value.get()
    attempts_before = _samples("gateway_routing_attempts_bucket", {})
    TALLY.inc(metrics.REQUESTS, ("tally.test", "2xx"), 3)
    TALLY.observe(metrics.ROUTING_ATTEMPTS, 2)
    metrics.REQUESTS_IN_FLIGHT.value += 7
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.REQUESTS_IN_FLIGHT.value -= 7
    assert f'gateway_requests_total{{route="tally.test",status_class="2xx"}} {before + 3}' in text
    assert "gateway_requests_in_flight 7.0" in text
    attempts = _samples("gateway_routing_attempts_bucket", {})
    assert sum(attempts.values()) > sum(attempts_before.values())
