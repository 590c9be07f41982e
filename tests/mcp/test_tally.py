"""The MCP metrics tally: what reaches Prometheus is what per-call updates would have made, within FLUSH_S."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram

from odock import metrics
from odock.mcp.tally import _BOUNDS, FLUSH_S, TALLY


def _samples(name: str, labels: dict[str, str]) -> dict[str, float]:
    found = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[sample.labels.get("le", "")] = sample.value
    return found


async def test_tallied_metrics_match_per_call_updates() -> None:
    """Counts, bytes and every histogram bucket (bounds included) equal observe()'s, and arrive within FLUSH_S."""
    TALLY.flush()
    durations = [0.0, _BOUNDS[0], _BOUNDS[0] * 1.5, _BOUNDS[3], 1e9]
    buckets_before = _samples("gateway_mcp_request_duration_seconds_bucket", {"transport": "TALLY"})
    sum_before = _samples("gateway_mcp_request_duration_seconds_sum", {"transport": "TALLY"}).get("", 0.0)
    count = metrics.child(metrics.MCP_REQUESTS, "TALLY", "tools/call", "success")
    in_bytes = metrics.child(metrics.MCP_BYTES, "in")
    before = (count._value.get(), in_bytes._value.get())
    for seconds in durations:
        TALLY.add("TALLY", "tools/call", "success", seconds, 10, 20)
    assert (count._value.get(), in_bytes._value.get()) == before  # not yet: tallied
    await asyncio.sleep(FLUSH_S * 2)
    assert (count._value.get(), in_bytes._value.get()) == (before[0] + 5, before[1] + 50)
    reference = Histogram(
        "ref", "ref", buckets=metrics.MCP_DURATION._kwargs["buckets"], registry=CollectorRegistry()
    )
    for seconds in durations:
        reference.observe(seconds)
    expected = {s.labels["le"]: s.value for s in reference.collect()[0].samples if s.name == "ref_bucket"}
    after = _samples("gateway_mcp_request_duration_seconds_bucket", {"transport": "TALLY"})
    assert {le: after[le] - buckets_before.get(le, 0.0) for le in after} == expected
    total = _samples("gateway_mcp_request_duration_seconds_sum", {"transport": "TALLY"})[""]
    assert total - sum_before == pytest.approx(sum(durations))
