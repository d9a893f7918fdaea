"""Shift calendar expansion, checked against hand-worked local times (Asia/Karachi = UTC+5)."""

from __future__ import annotations

from datetime import UTC, datetime

from karkhana.calendar import planned_intervals, shift_instances, subtract, total_seconds
from karkhana.config.factory import Site

KARACHI = Site.model_validate(
    {
        "id": "plant",
        "timezone": "Asia/Karachi",
        "calendar": {
            "shifts": [
                {
                    "name": "a",
                    "start": "06:00",
                    "end": "14:00",
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
                    "breaks": [{"start": "10:00", "end": "10:30"}],
                },
                {
                    "name": "c",
                    "start": "22:00",
                    "end": "06:00",
                    "days": ["mon"],
                    "breaks": [{"start": "02:00", "end": "02:45"}],
                },
            ]
        },
        "areas": [
            {"id": "x", "lines": [{"id": "l", "machines": [{"id": "m", "ideal_cycle_s": 1}]}]}
        ],
    }
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_day_shift_in_utc_with_break() -> None:
    # Monday 2026-11-23, 06:00-14:00 PKT = 01:00-09:00 UTC, break 05:00-05:30 UTC.
    got = planned_intervals(KARACHI, utc(2026, 11, 23, 0), utc(2026, 11, 23, 12))
    assert got == [
        (utc(2026, 11, 23, 1), utc(2026, 11, 23, 5)),
        (utc(2026, 11, 23, 5, 30), utc(2026, 11, 23, 9)),
    ]
    assert total_seconds(got) == 7.5 * 3600


def test_night_shift_crosses_midnight_and_its_break_is_next_day() -> None:
    # Monday 22:00 PKT -> Tuesday 06:00 PKT = Mon 17:00 -> Tue 01:00 UTC; break Tue 02:00-02:45 PKT.
    shifts = [
        s
        for s in shift_instances(KARACHI, utc(2026, 11, 23, 12), utc(2026, 11, 24, 2))
        if s.name == "c"
    ]
    assert len(shifts) == 1
    night = shifts[0]
    assert (night.start, night.end) == (utc(2026, 11, 23, 17), utc(2026, 11, 24, 1))
    assert night.breaks == ((utc(2026, 11, 23, 21), utc(2026, 11, 23, 21, 45)),)
    assert total_seconds(night.planned()) == 8 * 3600 - 45 * 60


def test_window_clips_and_sunday_has_no_shift() -> None:
    # Sunday 2026-11-22: no shift at all.
    assert planned_intervals(KARACHI, utc(2026, 11, 21, 19), utc(2026, 11, 22, 19)) == []
    # A window from 07:00 to 08:00 PKT inside shift a.
    got = planned_intervals(KARACHI, utc(2026, 11, 24, 2), utc(2026, 11, 24, 3))
    assert got == [(utc(2026, 11, 24, 2), utc(2026, 11, 24, 3))]


def test_subtract() -> None:
    a, b = utc(2026, 1, 1, 0), utc(2026, 1, 1, 10)
    holes = [(utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)), (utc(2026, 1, 1, 2, 30), utc(2026, 1, 1, 4))]
    assert subtract(a, b, holes) == [(a, utc(2026, 1, 1, 2)), (utc(2026, 1, 1, 4), b)]
