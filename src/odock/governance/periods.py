"""Budget and quota windows: calendar-aligned periods in the owner's time zone (reference §6.2 [INF]).

DAILY starts at local midnight; WEEKLY at local midnight of the weekday of `start_at` (Monday when unset);
MONTHLY on the 1st; QUARTERLY on Jan/Apr/Jul/Oct 1st. Boundaries are computed on local calendar dates and then
converted to UTC, so a DST day is 23 or 25 hours long and a window never drifts by an hour. Before `start_at` or
from `end_at` on, no window is active.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Period = Literal["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY"]
PERIODS: tuple[Period, ...] = ("DAILY", "WEEKLY", "MONTHLY", "QUARTERLY")

_zones: dict[str, ZoneInfo] = {}


def zone(name: str | None) -> ZoneInfo:
    """Return the ZoneInfo for `name` (UTC when empty); raise ValueError on an unknown zone."""
    key = name or "UTC"
    found = _zones.get(key)
    if found is None:
        try:
            found = ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone: {key!r}") from exc
        _zones[key] = found
    return found


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # midnight may not exist (a DST jump at 00:00); zoneinfo resolves it with fold=0, which is still monotonic
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _start_day(period: Period, local: date, anchor_weekday: int) -> tuple[date, date]:
    if period == "DAILY":
        return local, local + timedelta(days=1)
    if period == "WEEKLY":
        first = local - timedelta(days=(local.weekday() - anchor_weekday) % 7)
        return first, first + timedelta(days=7)
    if period == "MONTHLY":
        first = local.replace(day=1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        return first, nxt
    if period == "QUARTERLY":
        month = ((local.month - 1) // 3) * 3 + 1
        first = date(local.year, month, 1)
        nxt_month = month + 3
        nxt = date(first.year + (nxt_month > 12), (nxt_month - 1) % 12 + 1, 1)
        return first, nxt
    raise ValueError(f"unknown period: {period!r}")


def window_at(
    period: Period,
    at: datetime,
    timezone: str | None = "UTC",
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> tuple[datetime, datetime] | None:
    """Return the UTC [start, end) of the window holding `at`, or None when the schedule is not running then."""
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware")
    if start_at is not None and at < as_aware(start_at):
        return None
    if end_at is not None and at >= as_aware(end_at):
        return None
    tz = zone(timezone)
    anchor = as_aware(start_at).astimezone(tz).weekday() if start_at is not None else 0
    first, nxt = _start_day(period, at.astimezone(tz).date(), anchor)
    return _local_midnight(first, tz), _local_midnight(nxt, tz)


def as_aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
