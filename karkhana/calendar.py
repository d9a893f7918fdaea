"""Expand a site's shift calendar into concrete UTC intervals.

Shifts are declared in the site's local time (IANA timezone); a shift whose end is not after
its start crosses midnight and belongs to the day it starts on. A shift that starts on one of
the site's holidays does not take place. Planned production time is shift time minus planned
breaks and, for a machine, minus the maintenance windows of the machine or its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from karkhana.config.factory import WEEKDAYS, Shift, Site

Interval = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class ShiftInstance:
    name: str
    day: date  # local date the shift starts on
    start: datetime  # UTC
    end: datetime  # UTC
    breaks: tuple[Interval, ...]  # UTC, clipped to the shift

    def planned(self) -> list[Interval]:
        return subtract(self.start, self.end, list(self.breaks))


def _local(day: date, t: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, t, tzinfo=tz).astimezone(UTC)


def _instance(shift: Shift, day: date, tz: ZoneInfo) -> ShiftInstance:
    start = _local(day, shift.start, tz)
    end_day = day if shift.end > shift.start else day + timedelta(days=1)
    end = _local(end_day, shift.end, tz)
    breaks: list[Interval] = []
    for br in shift.breaks:
        # A break belongs to the shift: place it on the day that puts it inside the shift.
        for offset in (0, 1):
            b_start = _local(day + timedelta(days=offset), br.start, tz)
            b_end_day = day + timedelta(days=offset) + timedelta(days=int(br.end <= br.start))
            b_end = _local(b_end_day, br.end, tz)
            lo, hi = max(b_start, start), min(b_end, end)
            if lo < hi:
                breaks.append((lo, hi))
                break
    return ShiftInstance(shift.name, day, start, end, tuple(sorted(breaks)))


def shift_instances(site: Site, start: datetime, end: datetime) -> list[ShiftInstance]:
    """Shift instances of ``site`` overlapping ``[start, end)``, in time order."""
    tz = site.tz
    first_day = start.astimezone(tz).date() - timedelta(days=1)
    last_day = end.astimezone(tz).date()
    holidays = {h.date for h in site.holidays}
    out: list[ShiftInstance] = []
    day = first_day
    while day <= last_day:
        weekday = WEEKDAYS[day.weekday()]
        for shift in site.calendar.shifts if day not in holidays else ():
            if weekday in shift.days:
                inst = _instance(shift, day, tz)
                if inst.start < end and inst.end > start:
                    out.append(inst)
        day += timedelta(days=1)
    out.sort(key=lambda s: s.start)
    return out


def subtract(start: datetime, end: datetime, holes: list[Interval]) -> list[Interval]:
    """``[start, end)`` minus the union of ``holes``."""
    out: list[Interval] = []
    cursor = start
    for h_start, h_end in sorted(holes):
        if h_end <= cursor:
            continue
        if h_start >= end:
            break
        if h_start > cursor:
            out.append((cursor, h_start))
        cursor = max(cursor, h_end)
    if cursor < end:
        out.append((cursor, end))
    return out


def clip(intervals: list[Interval], start: datetime, end: datetime) -> list[Interval]:
    out = []
    for a, b in intervals:
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            out.append((lo, hi))
    return out


def maintenance_intervals(
    site: Site, machine_path: str, start: datetime, end: datetime
) -> list[Interval]:
    """UTC intervals of the site's maintenance windows covering ``machine_path`` (the
    machine's own or its line's), clipped to ``[start, end)``, in time order."""
    tz = site.tz
    windows = [
        (w.start.replace(tzinfo=tz).astimezone(UTC), w.end.replace(tzinfo=tz).astimezone(UTC))
        for w in site.maintenance
        if w.covers(machine_path)
    ]
    return sorted(clip(windows, start, end))


def planned_intervals(
    site: Site, start: datetime, end: datetime, machine_path: str | None = None
) -> list[Interval]:
    """Planned production time of ``site`` within ``[start, end)``: shifts (not on
    holidays) minus breaks; for ``machine_path``, minus its maintenance windows too."""
    merged: list[Interval] = []
    for inst in shift_instances(site, start, end):
        for a, b in clip(inst.planned(), start, end):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
    if machine_path is None or not site.maintenance:
        return merged
    holes = maintenance_intervals(site, machine_path, start, end)
    out: list[Interval] = []
    for a, b in merged:
        out.extend(subtract(a, b, holes))
    return out


def total_seconds(intervals: list[Interval]) -> float:
    return sum((b - a).total_seconds() for a, b in intervals)
