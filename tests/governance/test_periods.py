"""Budget/quota windows aligned to calendar boundaries in a time zone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from odock.governance.periods import window_at


def test_daily_utc() -> None:
    """A daily window runs midnight to midnight."""
    start, end = window_at("DAILY", datetime(2026, 5, 3, 13, 0, tzinfo=UTC), "UTC") or (None, None)
    assert (start, end) == (datetime(2026, 5, 3, tzinfo=UTC), datetime(2026, 5, 4, tzinfo=UTC))


def test_daily_in_zone_and_dst_day_is_23_hours() -> None:
    """Local midnights in New York: the spring-forward day lasts 23 hours, the fall-back day 25."""
    spring = window_at("DAILY", datetime(2026, 3, 8, 12, 0, tzinfo=UTC), "America/New_York")
    assert spring is not None
    assert spring[0] == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert spring[1] - spring[0] == timedelta(hours=23)
    fall = window_at("DAILY", datetime(2026, 11, 1, 12, 0, tzinfo=UTC), "America/New_York")
    assert fall is not None and fall[1] - fall[0] == timedelta(hours=25)


def test_late_evening_utc_belongs_to_local_day() -> None:
    """03:00 UTC on the 4th is still the 3rd in Los Angeles."""
    window = window_at("DAILY", datetime(2026, 6, 4, 3, 0, tzinfo=UTC), "America/Los_Angeles")
    assert window is not None and window[0] == datetime(2026, 6, 3, 7, 0, tzinfo=UTC)


def test_weekly_defaults_to_monday_and_follows_start_weekday() -> None:
    """Weekly windows start on Monday, or on the weekday of start_at."""
    at = datetime(2026, 7, 16, 10, tzinfo=UTC)  # a Thursday
    monday = window_at("WEEKLY", at, "UTC")
    assert monday is not None and monday[0] == datetime(2026, 7, 13, tzinfo=UTC)
    wednesday_anchor = datetime(2026, 1, 7, tzinfo=UTC)  # a Wednesday
    wed = window_at("WEEKLY", at, "UTC", start_at=wednesday_anchor)
    assert wed is not None and wed == (datetime(2026, 7, 15, tzinfo=UTC), datetime(2026, 7, 22, tzinfo=UTC))


def test_monthly_and_quarterly_boundaries() -> None:
    """Months start on the 1st (December rolls into January); quarters on Jan/Apr/Jul/Oct 1st."""
    dec = window_at("MONTHLY", datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "UTC")
    assert dec == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    q4 = window_at("QUARTERLY", datetime(2026, 11, 5, tzinfo=UTC), "UTC")
    assert q4 == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    q1 = window_at("QUARTERLY", datetime(2026, 3, 31, 23, tzinfo=UTC), "Europe/Paris")
    # 2026-04-01 00:30 in Paris is the second quarter already
    assert q1 is not None and q1[0] == datetime(2026, 3, 31, 22, tzinfo=UTC)


def test_start_and_end_bound_the_schedule() -> None:
    """No window before start_at or from end_at on."""
    start = datetime(2026, 5, 10, tzinfo=UTC)
    end = datetime(2026, 6, 1, tzinfo=UTC)
    assert window_at("MONTHLY", datetime(2026, 5, 9, tzinfo=UTC), "UTC", start, end) is None
    assert window_at("MONTHLY", datetime(2026, 5, 10, tzinfo=UTC), "UTC", start, end) is not None
    assert window_at("MONTHLY", datetime(2026, 6, 1, tzinfo=UTC), "UTC", start, end) is None


def test_unknown_zone_is_an_error() -> None:
    """An unknown time zone raises ValueError."""
    with pytest.raises(ValueError):
        window_at("DAILY", datetime(2026, 1, 1, tzinfo=UTC), "Mars/Olympus")
