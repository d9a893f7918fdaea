"""The one-pass bucket computation equals the engine run on each bucket alone.

Random machine data (state sequences with short and long stops across bucket edges, unmapped
and bad states, open stop events at the end of the data, counters with resets, bad and
non-numeric samples, modes, energy, gaps) on random calendars (shifts and breaks at any
minute, maintenance windows of the machine or its line) is fed to both paths through an
in-memory sample store. The reference is ``_engine_buckets``: for every bucket the engine
reads the store itself (``load_machine_data`` over the bucket's window) and computes
``machine_components``; it records which samples it read, which gives the dependency span.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karkhana.config.factory import FactoryConfig, MachineRef
from karkhana.models import Quality, SampleValue
from services.kpi import compute_ratios
from services.kpi.buckets import (
    BUCKET_NS,
    BucketResult,
    _engine_buckets,
    _sliced_buckets,
    bucket_batch,
    machine_buckets,
)
from services.kpi.source import Point
from services.kpi_store import RATIOS, _layout, _ratio_columns, _table, flatten

NS = 1_000_000_000
DAY = datetime(2024, 5, 6, tzinfo=UTC)  # a Monday
DAY_NS = int(DAY.timestamp()) * NS
RANGE_START_NS = DAY_NS + 6 * 3600 * NS
PATH = "plant/area/line-1/m1"


class MemorySource:
    """A ``SampleSource`` over samples held in memory: signal -> points in time order."""

    def __init__(self, asset: str, series: dict[str, list[Point]]) -> None:
        self.asset = asset
        self.series = {k: sorted(v) for k, v in series.items() if v}
        self.ts = {k: [p.ts_ns for p in v] for k, v in self.series.items()}

    def _get(self, asset: str, signal: str) -> tuple[list[Point], list[int]]:
        if asset != self.asset or signal not in self.series:
            return [], []
        return self.series[signal], self.ts[signal]

    def points(self, asset: str, signal: str, start_ns: int, end_ns: int) -> Sequence[Point]:
        points, ts = self._get(asset, signal)
        return points[bisect_left(ts, start_ns) : bisect_left(ts, end_ns)]

    def points_before(self, asset: str, signal: str, before_ns: int) -> Iterator[Point]:
        points, ts = self._get(asset, signal)
        return reversed(points[: bisect_left(ts, before_ns)])

    def points_from(self, asset: str, signal: str, from_ns: int) -> Iterator[Point]:
        points, ts = self._get(asset, signal)
        return iter(points[bisect_left(ts, from_ns) :])

    def sample_times(self, asset: str, start_ns: int, end_ns: int) -> Sequence[int]:
        if asset != self.asset:
            return []
        every = sorted({t for ts in self.ts.values() for t in ts})
        lo, hi = bisect_left(every, start_ns), bisect_left(every, end_ns)
        return every[max(lo - 1, 0) : hi] if lo > 0 else every[lo:hi]


# --- strategies -----------------------------------------------------------------------------

STATE_VALUES: list[SampleValue] = [
    "running",
    "running",
    "running",
    "idle",
    "stopped",
    "fault",
    "fault",
    "setup",
    "off",
    "planned_stop",
    "bogus",  # unmapped
    1,  # running, as a device code
    4,  # fault
    4.0,
    True,  # code 1
]
QUALITIES = [Quality.GOOD] * 8 + [Quality.UNCERTAIN, Quality.BAD]


def gaps_s() -> st.SearchStrategy[int]:
    """Seconds between samples: many short ones (short stops), some long ones, some that
    straddle bucket edges; up to 40 minutes (gaps in the data)."""
    return st.one_of(
        st.integers(1, 150), st.integers(100, 1_000), st.integers(800, 2_400), st.just(900)
    )


@st.composite
def timeline(draw: st.DrawFn, values: list[SampleValue], first_s: int, last_s: int) -> list[Point]:
    out: list[Point] = []
    t = first_s + draw(st.integers(0, 1_800))
    while t < last_s and len(out) < 60:
        ns = t * NS + draw(st.sampled_from([0, 0, 0, 1, 500_000_000]))
        out.append(Point(ns, draw(st.sampled_from(values)), draw(st.sampled_from(QUALITIES))))
        t += draw(gaps_s())
    return out


@st.composite
def counter(draw: st.DrawFn, first_s: int, last_s: int, floats: bool) -> list[Point]:
    out: list[Point] = []
    value: float = draw(st.integers(0, 1_000))
    t = first_s + draw(st.integers(0, 900))
    while t < last_s and len(out) < 60:
        kind = draw(st.sampled_from(["up"] * 8 + ["reset", "text", "bad", "same"]))
        if kind == "up":
            value += draw(st.floats(0, 50, allow_nan=False)) if floats else draw(st.integers(1, 60))
        elif kind == "reset":
            value = draw(st.integers(0, 5))
        sample: SampleValue = "n/a" if kind == "text" else value
        quality = Quality.BAD if kind == "bad" else Quality.GOOD
        out.append(Point(t * NS, sample, quality))
        t += draw(gaps_s())
    return out


def hhmm(minute: int) -> str:
    return f"{minute // 60 % 24:02d}:{minute % 60:02d}"


@st.composite
def shift(draw: st.DrawFn, name: str, earliest: int, latest: int) -> dict[str, Any]:
    """A shift starting and ending at any minute in ``[earliest, latest]`` (minutes from local
    midnight; past 1,440 it crosses midnight), with at most one break inside it."""
    start = draw(st.integers(earliest, latest - 2))
    end = draw(st.integers(start + 2, latest))
    out: dict[str, Any] = {"name": name, "start": hhmm(start), "end": hhmm(end), "breaks": []}
    if draw(st.booleans()):
        a = draw(st.integers(start + 1, end - 1))
        b = draw(st.integers(a + 1, min(end, 1_439)) if a < 1_439 else st.just(a))
        if a < b <= 1_439:
            out["breaks"] = [{"start": hhmm(a), "end": hhmm(b)}]
    return out


@st.composite
def factory(draw: st.DrawFn) -> MachineRef:
    # Shifts do not overlap: one in the morning, one from noon (possibly past midnight).
    shifts = [draw(shift("a", 0, 720))]
    if draw(st.booleans()):
        shifts.append(draw(shift("b", 720, 1_440 + int(shifts[0]["start"][:2]) * 60)))
    maintenance = []
    for asset in draw(st.lists(st.sampled_from([PATH, "plant/area/line-1"]), max_size=2)):
        start = DAY + timedelta(minutes=draw(st.integers(300, 900)))
        end = start + timedelta(minutes=draw(st.integers(1, 200)))
        maintenance.append(
            {
                "asset": asset,
                "start": start.replace(tzinfo=None).isoformat(),
                "end": end.replace(tzinfo=None).isoformat(),
            }
        )
    machine: dict[str, Any] = {
        "id": "m1",
        "ideal_cycle_s": draw(st.sampled_from([0.5, 1.0, 2.7])),
        "short_stop_threshold_s": draw(st.sampled_from([0, 60, 120, 600, 1_500, 4_000])),
        "startup_window_s": draw(st.sampled_from([0, 60, 300, 1_200])),
        "external_causes": draw(
            st.sampled_from([{}, {"off": "power_outage"}, {"off": "power", "idle": "material"}])
        ),
    }
    doc = {
        "version": 1,
        "sites": [
            {
                "id": "plant",
                "timezone": draw(st.sampled_from(["UTC", "Asia/Karachi", "Asia/Kolkata"])),
                "calendar": {"shifts": shifts},
                "maintenance": maintenance,
                "areas": [{"id": "area", "lines": [{"id": "line-1", "machines": [machine]}]}],
            }
        ],
    }
    (ref,) = FactoryConfig.model_validate(doc).machines()
    return ref


@st.composite
def machine_data(draw: st.DrawFn) -> tuple[MachineRef, MemorySource, int, int]:
    buckets = draw(st.integers(1, 14))
    start = RANGE_START_NS + draw(st.integers(-8, 8)) * BUCKET_NS
    end = start + buckets * BUCKET_NS
    first_s = (start - DAY_NS) // NS - draw(st.integers(0, 7_200))
    last_s = (end - DAY_NS) // NS + draw(st.integers(-3_600, 3_600))
    base = DAY_NS // NS

    def shifted(points: list[Point]) -> list[Point]:
        return [Point(p.ts_ns + base * NS, p.value, p.quality) for p in points]

    series = {
        "state": shifted(draw(timeline(STATE_VALUES, first_s, last_s))),
        "count_total": shifted(draw(counter(first_s, last_s, floats=False))),
        "count_reject": shifted(draw(counter(first_s, last_s, floats=False))),
        "energy": shifted(draw(counter(first_s, last_s, floats=True))),
        "mode": shifted(
            draw(timeline([1, 0, "auto", "manual", "MANUAL", 2, "x"], first_s, last_s))
        ),
        "power": shifted(draw(timeline([1.5], first_s, last_s))),
    }
    return draw(factory()), MemorySource(PATH, series), start, end


# --- comparison -----------------------------------------------------------------------------


def assert_same(got: BucketResult, want: BucketResult) -> None:
    at = datetime.fromtimestamp(want.start_ns / NS, UTC).isoformat()
    assert got.start_ns == want.start_ns
    assert (got.dep_first_ns, got.dep_last_ns, got.open) == (
        want.dep_first_ns,
        want.dep_last_ns,
        want.open,
    ), at
    g, w = got.components.as_dict(), want.components.as_dict()
    assert g["flags"] == w["flags"], at
    for name in ("down_s", "external_s"):
        assert list(g[name]) == list(w[name]), (at, name)  # type: ignore[call-overload]
        for key, value in w[name].items():  # type: ignore[attr-defined]
            assert g[name][key] == pytest.approx(value, abs=1e-9, rel=1e-12), (at, name, key)  # type: ignore[index]
    for name, value in w.items():
        if isinstance(value, int | float):
            assert g[name] == pytest.approx(value, abs=1e-9, rel=1e-12), (at, name)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(machine_data())
def test_one_pass_buckets_equal_the_engine_on_each_bucket(
    case: tuple[MachineRef, MemorySource, int, int],
) -> None:
    ref, source, start, end = case
    fast = machine_buckets(source, ref, start, end, max_gap_s=300)
    reference = _engine_buckets(source, ref, start, end, max_gap_s=300)
    assert len(fast) == len(reference) == (end - start) // BUCKET_NS
    for got, want in zip(fast, reference, strict=True):
        assert_same(got, want)
    # The bucket table's rows, built from the columns, hold the same values.
    layout = _layout()
    numbers, sets = _table(bucket_batch(source, ref, start, end, max_gap_s=300), layout)
    ratios = _ratio_columns(numbers)
    for k, want in enumerate(reference):
        flat = flatten(want.components, layout)
        assert {n: numbers[n][k] for n in flat} == pytest.approx(flat, abs=1e-9, rel=1e-12)
        assert all(numbers[n][k] == 0.0 for n in numbers.keys() - flat.keys())
        assert sets[0][k] == ",".join(sorted(want.components.flags))
        expected = compute_ratios(want.components)
        for i, name in enumerate(RATIOS):
            value = getattr(expected, name)
            assert ratios[i][k] == (None if value is None else pytest.approx(value, rel=1e-12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machine_data())
def test_sliced_reference_equals_the_engine_reading_each_bucket(
    case: tuple[MachineRef, MemorySource, int, int],
) -> None:
    """The slicing reference (used for the buckets the sweep leaves to the engine) reads
    what the engine reads."""
    ref, source, start, end = case
    sliced = _sliced_buckets(source, ref, start, end, max_gap_s=300)
    reference = _engine_buckets(source, ref, start, end, max_gap_s=300)
    for got, want in zip(sliced, reference, strict=True):
        assert_same(got, want)


def test_an_open_stop_event_is_short_in_early_buckets_and_long_later() -> None:
    """Idle from 06:10 to the end of the data (threshold 1,500 s): the bucket 06:00 sees a
    stop of 300 s so far (short: run time), 06:15 one of 1,200 s (short), 06:30 and later one
    of at least 1,500 s (long: down time). Expected values from the timeline by hand."""
    doc = {
        "version": 1,
        "sites": [
            {
                "id": "plant",
                "timezone": "UTC",
                "calendar": {"shifts": [{"name": "a", "start": "00:00", "end": "23:00"}]},
                "areas": [
                    {
                        "id": "area",
                        "lines": [
                            {
                                "id": "line-1",
                                "machines": [
                                    {"id": "m1", "ideal_cycle_s": 1, "short_stop_threshold_s": 1500}
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (ref,) = FactoryConfig.model_validate(doc).machines()
    six = DAY_NS + 6 * 3600 * NS
    source = MemorySource(
        PATH,
        {
            "state": [
                Point(six - 3600 * NS, "running"),
                Point(six + 600 * NS, "idle"),
            ]
        },
    )
    buckets = machine_buckets(source, ref, six, six + 4 * BUCKET_NS, max_gap_s=300)
    run = [b.components.run_s for b in buckets]
    idle = [b.components.down_s["idle"] for b in buckets]
    assert run == [900, 900, 0, 0]
    assert idle == [0, 0, 900, 900]
    assert [b.components.short_stop_s for b in buckets] == [300, 900, 0, 0]
    assert [b.open for b in buckets] == [True] * 4
