"""Simulated time is kept as integer microseconds since the Unix epoch, so that sums of
durations and unit completion times are exact."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

IntervalUs = tuple[int, int]


def to_us(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def daily_windows(
    windows: list[tuple[int, int, float]], tz: ZoneInfo, start_us: int, end_us: int
) -> list[IntervalUs]:
    """Occurrences of daily local windows ``(hour, minute, duration_min)`` overlapping
    ``[start_us, end_us)``, merged and sorted (UTC microseconds)."""
    if not windows:
        return []
    first: date = from_us(start_us).astimezone(tz).date() - timedelta(days=2)
    last: date = from_us(end_us).astimezone(tz).date() + timedelta(days=1)
    found: list[IntervalUs] = []
    day = first
    while day <= last:
        for hour, minute, duration_min in windows:
            local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            a = to_us(local.astimezone(UTC))
            b = a + round(duration_min * 60 * US)
            if a < end_us and b > start_us:
                found.append((a, b))
        day += timedelta(days=1)
    return merge(found)


def merge(intervals: list[IntervalUs]) -> list[IntervalUs]:
    out: list[IntervalUs] = []
    for a, b in sorted(intervals):
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def overlap(a: int, b: int, intervals: list[IntervalUs]) -> int:
    """Length of ``[a, b)`` covered by sorted, disjoint ``intervals``."""
    total = 0
    for lo, hi in intervals:
        if hi <= a:
            continue
        if lo >= b:
            break
        total += min(b, hi) - max(a, lo)
    return total
