"""Downtime events from a hand-built state timeline, the reason catalogue, codings, Pareto."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from karkhana.config import load_factory
from karkhana.config.factory import DEFAULT_STATE_MAP, FactoryConfig, ReasonCategory
from karkhana.errors import ConfigError
from karkhana.models import MachineState, Quality, to_ns
from services.downtime import (
    BadEventId,
    DowntimeEvent,
    event_id,
    find_event,
    machine_events,
    pareto,
    parse_event_id,
)
from services.kpi import PlannedTime, Point, compute_machine, state_times
from services.kpi.timeline import stop_events
from services.reasons_store import Coding, open_reasons
from services.store import open_reader
from tests.helpers.store_builders import Row, write_factory, write_samples

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
DAY = datetime(2024, 5, 6, tzinfo=UTC)

REASONS: dict[str | int, dict[str, str]] = {
    "belt-break": {"name": "Belt broke", "category": "breakdown"},
    "changeover": {"name": "Product changeover", "category": "setup"},
    12: {"name": "No yarn", "category": "external"},  # unquoted in YAML: the code is "12"
}


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm, second=ss)


def ns(hh: int, mm: int = 0, ss: int = 0) -> int:
    return to_ns(at(hh, mm, ss))


# m1: a stop from before the shift, a fault that turns idle, a 60 s short stop, a setup
# across the 10:00-10:30 break, and a stop still open at the end of the data.
# m2: a stop of exactly the 120 s threshold (a long stop: "below" is strict).
ROWS: list[Row] = [
    (M1, "state", at(5, 50), "stopped"),
    (M1, "state", at(6, 10), "running"),
    (M1, "state", at(7), "fault"),
    (M1, "state", at(7, 30), "idle"),
    (M1, "state", at(7, 35), "running"),
    (M1, "state", at(8), "idle"),
    (M1, "state", at(8, 1), "running"),
    (M1, "state", at(9, 50), "setup"),
    (M1, "state", at(10, 40), "running"),
    (M1, "state", at(13, 50), "off"),
    (M2, "state", at(6), "running"),
    (M2, "state", at(12), "stopped"),
    (M2, "state", at(12, 2), "planned_stop"),
]


def add_reasons(path: Path, site_reasons: dict[str, object] | None = None) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc["reasons"] = REASONS
    if site_reasons is not None:
        doc["sites"][0]["reasons"] = site_reasons
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def factory(tmp_path: Path) -> FactoryConfig:
    path = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 1.0}},
        shifts=[
            {
                "name": "day",
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"name": "lunch", "start": "10:00", "end": "10:30"}],
            }
        ],
        short_stop_threshold_s=120,
    )
    return load_factory(add_reasons(path))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    write_samples(path, ROWS)
    return path


def events(db: Path, factory: FactoryConfig, machine: str, a: int, b: int) -> list[DowntimeEvent]:
    with open_reader(db) as reader:
        return machine_events(reader, factory.machine(machine), a, b)


def test_events_of_a_shift_have_the_starts_durations_and_states_written(
    db: Path, factory: FactoryConfig
) -> None:
    got = events(db, factory, M1, ns(6), ns(14))
    assert [(e.start_ns, e.end_ns, e.open) for e in got] == [
        (ns(5, 50), ns(6, 10), False),
        (ns(7), ns(7, 35), False),
        (ns(8), ns(8, 1), False),
        (ns(9, 50), ns(10, 40), False),
        (ns(13, 50), ns(14), True),  # open: measured up to the window end
    ]
    assert [e.duration_s for e in got] == [1200, 2100, 60, 3000, 600]
    assert [e.short for e in got] == [False, False, True, False, False]
    assert [e.state for e in got] == [
        MachineState.STOPPED,
        MachineState.FAULT,
        MachineState.IDLE,
        MachineState.SETUP,
        MachineState.OFF,
    ]
    assert dict(got[1].state_s) == {"fault": 1800, "idle": 300}
    # Planned time: the shift starts at 06:00 and the 10:00-10:30 break is not planned.
    assert [e.planned_s for e in got] == [600, 2100, 60, 1200, 600]
    assert [e.window_s for e in got] == [600, 2100, 60, 3000, 600]
    assert [e.window_planned_s for e in got] == [600, 2100, 60, 1200, 600]


def test_a_stop_of_exactly_the_threshold_is_long(db: Path, factory: FactoryConfig) -> None:
    (event,) = events(db, factory, M2, ns(6), ns(14))
    assert (event.start_ns, event.duration_s, event.short) == (ns(12), 120, False)


def test_an_event_keeps_its_id_and_real_start_in_a_window_that_cuts_it(
    db: Path, factory: FactoryConfig
) -> None:
    whole = events(db, factory, M1, ns(6), ns(14))[1]
    (cut,) = events(db, factory, M1, ns(7, 10), ns(7, 20))
    assert cut.id == whole.id == event_id(M1, ns(7))
    assert (cut.start_ns, cut.end_ns, cut.duration_s) == (ns(7), ns(7, 35), 2100)
    assert cut.window_s == 600


def test_long_stops_add_up_to_the_engines_down_time(db: Path, factory: FactoryConfig) -> None:
    """The same stops the OEE figures count: planned seconds of long events by state equal
    the engine's down time, short ones its short-stop time (hand totals: see ROWS)."""
    ref = factory.machine(M1)
    with open_reader(db) as reader:
        comps = compute_machine(reader, ref, at(6), at(14), max_gap_s=1e9)
    assert dict(comps.down_s) == {
        "idle": 300,
        "stopped": 600,
        "fault": 1800,
        "setup": 1200,
        "off": 600,
    }
    assert comps.short_stop_s == 60


def test_find_event_by_its_start(db: Path, factory: FactoryConfig) -> None:
    ref = factory.machine(M1)
    with open_reader(db) as reader:
        found = find_event(reader, ref, ns(9, 50), now_ns=ns(15))
        assert found is not None and found.id == event_id(M1, ns(9, 50))
        assert found.duration_s == 3000
        # 07:30 is inside an event (idle after fault) but no event starts there.
        assert find_event(reader, ref, ns(7, 30), now_ns=ns(15)) is None
        assert find_event(reader, ref, ns(7, 35), now_ns=ns(15)) is None  # running
        open_event = find_event(reader, ref, ns(13, 50), now_ns=ns(15))
        assert open_event is not None and open_event.open and open_event.duration_s == 4200


def test_event_ids_round_trip_and_bad_ones_are_refused() -> None:
    assert parse_event_id(event_id(M1, 123)) == (M1, 123)
    bad_ids = (
        "plant.assembly.line-1.m1",
        "plant.assembly.m1@1",
        "a.b.c.D@1",
        "a.b.c.d@x",
        "a.b.c.d@\u00b2",  # a digit to str.isdigit, not to int()
        f"a.b.c.d@{2**63}",  # beyond a 64-bit timestamp
    )
    for bad in bad_ids:
        with pytest.raises(BadEventId, match="not a downtime event id"):
            parse_event_id(bad)


def test_pareto_totals_equal_the_events(db: Path, factory: FactoryConfig) -> None:
    evs = events(db, factory, M1, ns(6), ns(14)) + events(db, factory, M2, ns(6), ns(14))
    coded = {event_id(M1, ns(7)): "belt-break", event_id(M1, ns(9, 50)): "changeover"}
    coded[event_id(M2, ns(12))] = "belt-break"
    codings = {eid: Coding(eid, "", 0, reason, "", None, 0) for eid, reason in coded.items()}
    buckets = pareto(evs, codings, factory.reasons)
    assert [(b.reason, b.seconds, b.planned_s, b.count) for b in buckets] == [
        ("changeover", 3000, 1200, 1),
        ("belt-break", 2100 + 120, 2100 + 120, 2),
        (None, 600 + 60 + 600, 600 + 60 + 600, 3),
    ]
    assert sum(b.seconds for b in buckets) == sum(e.window_s for e in evs)
    assert sum(b.count for b in buckets) == len(evs)
    assert (buckets[1].name, buckets[1].category) == ("Belt broke", "breakdown")
    assert (buckets[2].name, buckets[2].category) == (None, None)


def test_codings_are_stored_replaced_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "reasons.sqlite"
    first = Coding("a.b.c.d@1", "a/b/c/d", 1, "belt-break", "", "op-1", 10)
    with open_reasons(path) as store:
        store.put(first)
        store.put(Coding("a.b.c.d@2", "a/b/c/d", 2, "changeover", "die swap", "op-2", 20))
    with open_reasons(path) as store:  # a new connection: it was committed
        assert store.get("a.b.c.d@1") == first
        store.put(Coding("a.b.c.d@1", "a/b/c/d", 1, "12", "no yarn after all", "op-3", 30))
        got = store.get_many(["a.b.c.d@1", "a.b.c.d@2", "a.b.c.d@3"])
    assert sorted(got) == ["a.b.c.d@1", "a.b.c.d@2"]
    assert (got["a.b.c.d@1"].reason, got["a.b.c.d@1"].comment) == ("12", "no yarn after all")
    assert got["a.b.c.d@2"].coded_by == "op-2"


def test_catalogue_site_entries_add_to_and_override_the_top_level(tmp_path: Path) -> None:
    path = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    site_reasons = {
        "changeover": {"name": "Mould change", "category": "setup"},
        "load-shedding": {"name": "Grid load shedding", "category": "external"},
    }
    factory = load_factory(add_reasons(path, site_reasons))
    catalogue = factory.reasons_for(factory.sites[0])
    assert sorted(catalogue) == ["12", "belt-break", "changeover", "load-shedding"]
    assert catalogue["changeover"].name == "Mould change"
    assert catalogue["load-shedding"].category is ReasonCategory.EXTERNAL
    assert factory.reasons["changeover"].name == "Product changeover"


@pytest.mark.parametrize(
    ("reasons", "key_path", "problem"),
    [
        ({"jam": {"name": "Jam", "category": "broken"}}, "reasons.jam.category", "breakdown"),
        ({"jam": {"name": "Jam"}}, "reasons.jam.category", "required key is missing"),
        ({"Jam": {"name": "Jam", "category": "other"}}, "reasons.Jam", "pattern"),
        ({"jam": {"name": "", "category": "other"}}, "reasons.jam.name", "at least 1"),
        ({"jam": {"name": "J", "category": "other", "colour": 1}}, "reasons.jam.colour", "unknown"),
    ],
)
def test_bad_catalogue_entries_name_the_key(
    tmp_path: Path, reasons: dict[str, object], key_path: str, problem: str
) -> None:
    path = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    doc = yaml.safe_load(path.read_text())
    doc["reasons"] = reasons
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_factory(path)
    assert info.value.source == str(path)
    assert info.value.key_path.startswith(key_path)
    assert problem in info.value.problem


_STATES = ["running", "idle", "stopped", "fault", "setup", "planned_stop", "off", "bogus"]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 400), st.sampled_from(_STATES), st.booleans()),
        min_size=0,
        max_size=25,
    ),
    window=st.tuples(st.integers(0, 6000), st.integers(1, 6000)),
    planned=st.lists(st.tuples(st.integers(0, 8000), st.integers(1, 900)), max_size=4),
    threshold=st.sampled_from([0.0, 60.0, 120.0, 300.0]),
)
def test_events_split_time_exactly_as_the_engine_does(
    steps: list[tuple[int, str, bool]],
    window: tuple[int, int],
    planned: list[tuple[int, int]],
    threshold: float,
) -> None:
    """Any timeline: planned time in long events, by state, is the engine's down time and
    planned time in short events its short-stop time (one definition of a stop)."""
    s = 1_000_000_000
    points, t = [], 0
    for gap, state, bad in steps:
        t += gap * s
        points.append(Point(t, state, Quality.BAD if bad else Quality.GOOD))
    start_ns, end_ns = window[0] * s, (window[0] + window[1]) * s
    intervals: list[tuple[int, int]] = []
    for a, length in sorted(planned):
        a = max(a * s, intervals[-1][1] if intervals else 0, start_ns)
        b = min(a + length * s, end_ns)
        if b > a:
            intervals.append((a, b))
    plan = PlannedTime(intervals)
    smap = DEFAULT_STATE_MAP
    times = state_times(points, smap, plan, start_ns, end_ns, threshold)
    down = dict.fromkeys(times.down_ns, 0)
    short = 0
    for ev in stop_events(points, smap, end_ns, threshold):
        for state, a, b in ev.segments:
            if ev.short:
                short += plan.overlap(a, b)
            else:
                down[state.value] += plan.overlap(a, b)
    assert down == times.down_ns
    assert short == times.short_stop_ns
