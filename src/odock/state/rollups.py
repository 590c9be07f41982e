"""Hourly and daily usage rollups, kept by the usage writer in the same transaction as the ledger rows.

Charts read these, never the raw ledger. Hourly rows (hour, organisation) carry a latency histogram and a
time-to-first-token histogram for p50/p95 and feed the overview: one row an hour per active organisation, however many models there are. Daily rows are one per (dimension, value, day, organisation): a
record adds to its organisation's, team's, user's, key's and model's row of the day. The usage explorer and
the budget burn-down group one dimension in the order of the primary key and stop after a page, so no page
reads more rows than it shows, whatever the number of keys (a daily row per key and model would make "by
model" read every key's rows). Absent dimensions are skipped. Buckets are UTC text (`YYYY-MM-DDTHH`,
`YYYY-MM-DD`): they sort, compare and look the same on SQLite and PostgreSQL.

Time to first token exists for streamed calls only (the record's `metadata["ttft_ms"]`): `ttft_count` counts the
calls that have one, so a mean is `ttft_ms_sum / ttft_count` and the histogram's percentiles are over those calls.
Percentiles come from fixed buckets (as latency's): they add up across batches, hours and organisations with a
plain sum, which exact percentiles (or any sketch needing a merge function) would not do in one SQL upsert.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from odock.state.records import UsageRecord

# upper bounds (ms) of the latency histogram's buckets; the last bucket is everything above the last bound
LATENCY_BOUNDS_MS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 60000)
LATENCY_COLUMNS = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1))
# time to first token is mostly well under a second: finer buckets at the low end
TTFT_BOUNDS_MS = (25, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000)
TTFT_COLUMNS = tuple(f"ttft_{i:02d}" for i in range(len(TTFT_BOUNDS_MS) + 1))
SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency_ms_sum",
    "ttft_count",
    "ttft_ms_sum",
)
HOURLY_KEYS = ("bucket", "organisation_id")
DAILY_KEYS = ("dimension", "value", "day", "organisation_id")
# dimension name → the record's attribute it counts by
DIMENSIONS = {
    "organisation": "organisation_id",
    "team": "team_id",
    "user": "user_id",
    "key": "api_key_id",
    "model": "model",
}
HISTOGRAMS = LATENCY_COLUMNS + TTFT_COLUMNS
HOURLY_COLUMNS = HOURLY_KEYS + SUMS + HISTOGRAMS
DAILY_COLUMNS = DAILY_KEYS + SUMS


def latency_bucket(latency_ms: int) -> int:
    """The index of the histogram bucket holding `latency_ms`."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


class Aggregate:
    """The hourly and daily rollup increments of a batch of records, added a slice at a time (`add`).

    Runs in the usage writer, on the gateway's event loop, so the writer adds a batch in slices with loop turns
    between them (a 2,000-record batch in one go held the loop ~2 ms). Records are grouped first and each group's
    columns summed once at the end (C-level `sum` over `zip`), and the bucket texts computed once per hour.
    """

    def __init__(self) -> None:
        self.hourly: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        self.histograms: dict[tuple[str, ...], list[int]] = {}
        self.daily: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        self.buckets: dict[int, tuple[str, str]] = {}

    def add(self, records: Iterable[UsageRecord]) -> None:
        hourly, histograms, daily, buckets = self.hourly, self.histograms, self.daily, self.buckets
        ttft_offset = len(LATENCY_COLUMNS)
        dimensions = tuple(DIMENSIONS.items())
        for record in records:
            hour_index = int(record.created_at.timestamp() // 3600)
            texts = buckets.get(hour_index)
            if texts is None:
                start = datetime.fromtimestamp(hour_index * 3600, UTC)
                texts = buckets[hour_index] = (start.strftime("%Y-%m-%dT%H"), start.strftime("%Y-%m-%d"))
            hour, day = texts
            metadata = record.metadata
            ttft = metadata.get("ttft_ms") if metadata else None
            if not isinstance(ttft, int) or isinstance(ttft, bool) or ttft < 0:
                ttft = None
            sums = (
                1,
                0 if record.outcome == "success" else 1,
                record.input_tokens,
                record.output_tokens,
                record.cached_input_tokens,
                record.reasoning_tokens,
                record.cost_nanos or 0,
                record.latency_ms,
                0 if ttft is None else 1,
                ttft or 0,
            )
            organisation = record.organisation_id
            hour_key = (hour, organisation)
            group = hourly.get(hour_key)
            if group is None:
                group = hourly[hour_key] = []
                histograms[hour_key] = [0] * len(HISTOGRAMS)
            group.append(sums)
            histogram = histograms[hour_key]
            histogram[bisect.bisect_left(LATENCY_BOUNDS_MS, record.latency_ms)] += 1
            if ttft is not None:
                histogram[ttft_offset + bisect.bisect_left(TTFT_BOUNDS_MS, ttft)] += 1
            for dimension, attribute in dimensions:
                value = getattr(record, attribute)
                if value:
                    daily.setdefault((dimension, value, day, organisation), []).append(sums)
        # each group folded to one row per slice, so that `rows` is short work whatever the batch's size
        for groups in (hourly, daily):
            for key, group in groups.items():
                if len(group) > 1:
                    groups[key] = [_column_sums(group)]

    def rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The hourly and daily rows to upsert, each sorted by its key (a fixed lock order)."""
        hourly, daily = self.hourly, self.daily
        return (
            [key + _column_sums(hourly[key]) + tuple(self.histograms[key]) for key in sorted(hourly)],
            [key + _column_sums(daily[key]) for key in sorted(daily)],
        )


def aggregate(records: Iterable[UsageRecord]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The hourly and daily rollup increments of `records` in one go (see `Aggregate`)."""
    batch = Aggregate()
    batch.add(records)
    return batch.rows()


def _column_sums(rows: list[tuple[int, ...]]) -> tuple[int, ...]:
    return rows[0] if len(rows) == 1 else tuple(map(sum, zip(*rows, strict=True)))


def _upsert(table: str, keys: Sequence[str], columns: Sequence[str], placeholder: str) -> str:
    values = ", ".join(placeholder.format(n=n) for n in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


HOURLY_UPSERT_SQLITE = _upsert("usage_rollup_hourly", HOURLY_KEYS, HOURLY_COLUMNS, "?")
DAILY_UPSERT_SQLITE = _upsert("usage_rollup_daily", DAILY_KEYS, DAILY_COLUMNS, "?")


def _upsert_unnest(table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    # PostgreSQL: the whole batch as one statement over column arrays (as the ledger insert), not one per row
    arrays = ", ".join(
        f"${n}::{'text' if name in keys else 'int8'}[]" for n, name in enumerate(columns, start=1)
    )
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns if c not in keys)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )


HOURLY_UPSERT_PG = _upsert_unnest("usage_rollup_hourly", HOURLY_KEYS, HOURLY_COLUMNS)
DAILY_UPSERT_PG = _upsert_unnest("usage_rollup_daily", DAILY_KEYS, DAILY_COLUMNS)


def percentile_ms(
    histogram: Sequence[int], fraction: float, bounds: Sequence[int] = LATENCY_BOUNDS_MS
) -> float | None:
    """Estimate a percentile from histogram counts over `bounds` (linear within the bucket), None when empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = bounds[index - 1] if index > 0 else 0
            high = bounds[index] if index < len(bounds) else low * 2
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(bounds[-1])
