"""The MCP metrics (`gateway_mcp_requests_total`, `…_request_duration_seconds`, `…_bytes_total`), added up in plain
numbers on the hot path and handed to Prometheus at most `FLUSH_S` later.

A Prometheus `inc` takes a lock, and a histogram's `observe` walks its buckets in Python: under callgrind the four
updates of one MCP call cost ~37k instructions of its ~650k (`python -m bench.mcp --instructions`). Tallied, a
call costs a dict update, a bisect and two additions; one timer per flush window moves the totals over (the
governance decisions' habit, `odock.governance.core._TALLIED`). A scrape sees a call at most `FLUSH_S` late.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

from odock import metrics

__all__ = ["FLUSH_S", "TALLY", "McpTally"]

FLUSH_S = 0.25


class McpTally:
    __slots__ = ("_armed", "bytes_in", "bytes_out", "durations", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # transport -> per-bucket counts (the last one +Inf), then the sum of the seconds
        self.durations: dict[str, list[float]] = {}
        self.bytes_in = self.bytes_out = 0
        self._armed = False

    def add(
        self, transport: str, method: str, outcome: str, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        """Count one MCP call; the totals reach Prometheus within `FLUSH_S`."""
        key = (transport, method, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        slot = self.durations.get(transport)
        if slot is None:
            slot = self.durations[transport] = [0] * (len(_BOUNDS) + 2)
        # Prometheus counts an observation in the first bucket whose bound is >= it (the last: +Inf)
        slot[bisect_left(_BOUNDS, seconds)] += 1
        slot[-1] += seconds
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if not self._armed:
            self._armed = True
            try:
                asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): at once
                self.flush()

    def flush(self) -> None:
        """Hand the totals to Prometheus."""
        self._armed = False
        requests, self.requests = self.requests, {}
        for key, count in requests.items():
            metrics.child(metrics.MCP_REQUESTS, *key).inc(count)
        durations, self.durations = self.durations, {}
        for transport, slot in durations.items():
            histogram: Any = metrics.child(metrics.MCP_DURATION, transport)
            # the bucket values and the sum `observe` itself adds to (prometheus_client's Histogram internals)
            for index, observed in enumerate(slot[:-1]):
                if observed:
                    histogram._buckets[index].inc(observed)
            histogram._sum.inc(slot[-1])
        if self.bytes_in:
            metrics.child(metrics.MCP_BYTES, "in").inc(self.bytes_in)
        if self.bytes_out:
            metrics.child(metrics.MCP_BYTES, "out").inc(self.bytes_out)
        self.bytes_in = self.bytes_out = 0


_BOUNDS: tuple[float, ...] = tuple(metrics.MCP_DURATION._upper_bounds[:-1])  # the finite bucket bounds
TALLY = McpTally()  # one per process, like the metrics it feeds
