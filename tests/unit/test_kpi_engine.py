"""Hand-worked cases of the KPI maths (docs/kpi.md), on the pure engine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from karkhana.config.factory import DEFAULT_STATE_MAP
from karkhana.models import Quality, SampleValue
from services.kpi import (
    COUNTER_RESET,
    NO_DATA,
    PERFORMANCE_CAPPED,
    UNMAPPED_STATE,
    MachineData,
    MachineSpec,
    OeeComponents,
    Point,
    compute_ratios,
    counter_delta,
    covered_ns,
    machine_components,
    stop_event_bounds,
    sum_components,
)

T0 = 1_714_953_600 * 10**9  # 2024-05-06T00:00:00Z
S = 10**9


def at(seconds: float) -> int:
    return T0 + round(seconds * S)


def points(*pairs: tuple[float, SampleValue]) -> list[Point]:
    return [Point(at(t), v) for t, v in pairs]


SPEC = MachineSpec(DEFAULT_STATE_MAP, ideal_cycle_s=1.0, short_stop_threshold_s=60)


def run(
    states: Sequence[Point],
    window: tuple[float, float] = (0, 100),
    planned: Sequence[tuple[float, float]] | None = None,
    total: Sequence[Point] = (),
    reject: Sequence[Point] = (),
    times: Sequence[int] = (),
    spec: MachineSpec = SPEC,
    max_gap_s: float = 300,
) -> OeeComponents:
    plan = [window] if planned is None else planned
    data = MachineData(
        start_ns=at(window[0]),
        end_ns=at(window[1]),
        planned=[(at(a), at(b)) for a, b in plan],
        states=states,
        total_counts=total,
        reject_counts=reject,
        sample_times=times,
    )
    return machine_components(data, spec, max_gap_s)


def test_short_stop_below_threshold_counts_as_run() -> None:
    # running 0-100, stopped 100-130 (30 s < 60 s), running 130-200
    c = run(points((0, "running"), (100, "stopped"), (130, "running")), window=(0, 200))
    assert c.run_s == 200
    assert c.short_stop_s == 30
    assert sum(c.down_s.values()) == 0
    assert c.planned_s == 200


def test_stop_at_threshold_is_long() -> None:
    # a stop of exactly the threshold is not "below" it: availability loss
    c = run(points((0, "running"), (20, "stopped"), (80, "running")))
    assert c.run_s == 40
    assert c.down_s["stopped"] == 60
    assert c.short_stop_s == 0


def test_stop_event_spanning_several_stop_states_is_one_event() -> None:
    # fault 20-50 then idle 50-70: one 50 s event (short), although each part is short too;
    # fault 20-50 then setup 50-100 then running: one 80 s event (long), split by state
    short = run(points((0, "running"), (20, "fault"), (50, "idle"), (70, "running")))
    assert (short.run_s, short.short_stop_s) == (100, 50)
    long = run(
        points((0, "running"), (20, "fault"), (50, "setup"), (100, "running")), window=(0, 120)
    )
    assert long.run_s == 40
    assert long.down_s["fault"] == 30
    assert long.down_s["setup"] == 50


def test_stop_crossing_window_start_is_classified_on_whole_event() -> None:
    # fault from -50 to 30: an 80 s event, long, although only 30 s are in the window
    long = run(points((-100, "running"), (-50, "fault"), (30, "running")))
    assert long.down_s["fault"] == 30
    assert long.run_s == 70
    # fault from -20 to 30: a 50 s event, short
    short = run(points((-100, "running"), (-20, "fault"), (30, "running")))
    assert short.run_s == 100
    assert short.short_stop_s == 30
    assert sum(short.down_s.values()) == 0


def test_stop_crossing_window_end_is_classified_on_whole_event() -> None:
    # stopped from 80 to 150 (70 s, long) seen by the window [0, 100)
    c = run(points((0, "running"), (80, "stopped"), (150, "running")))
    assert c.down_s["stopped"] == 20
    assert c.run_s == 80
    # stopped from 80 to 130 (50 s, short)
    c = run(points((0, "running"), (80, "stopped"), (130, "running")))
    assert (c.run_s, c.short_stop_s) == (100, 20)


def test_open_stop_at_end_of_data_uses_duration_to_window_end() -> None:
    # stopped since 80, nothing after: 20 s up to the window end -> short
    c = run(points((0, "running"), (80, "stopped")))
    assert (c.run_s, c.short_stop_s) == (100, 20)
    # the same open stop seen by a window ending at 200: 120 s -> long
    c = run(points((0, "running"), (80, "stopped")), window=(0, 200))
    assert c.down_s["stopped"] == 120


def test_stop_event_bounds_reads_back_and_ahead_to_event_ends() -> None:
    history = points(
        (-300, "running"),
        (-200, "running"),
        (-100, "fault"),
        (-40, "idle"),
        (10, "running"),
        (90, "stopped"),
        (95, "fault"),
        (170, "running"),
        (180, "stopped"),
    )
    window = [p for p in history if at(0) <= p.ts_ns < at(100)]
    before = reversed([p for p in history if p.ts_ns < at(0)])
    after = iter([p for p in history if p.ts_ns >= at(100)])
    got = stop_event_bounds(DEFAULT_STATE_MAP, iter(before), window, after)
    # back to the last running sample before the window, ahead to the first running after
    assert [p.ts_ns for p in got] == [at(t) for t in (-200, -100, -40, 10, 90, 95, 170)]
    # ... which classifies both partial events as long: fault+idle 110 s, stop+fault 80 s
    c = run(got)
    assert c.down_s == pytest.approx({"idle": 10, "stopped": 5, "fault": 5, "setup": 0, "off": 0})
    assert c.run_s == 80


def test_stop_event_bounds_without_event_in_progress_reads_one_sample_back() -> None:
    before = iter(points((-10, "running"), (-20, "fault")))  # newest first
    after = iter(points((150, "fault")))
    got = stop_event_bounds(DEFAULT_STATE_MAP, before, points((50, "running")), after)
    assert [p.ts_ns for p in got] == [at(-10), at(50)]


def test_planned_stop_is_removed_from_planned_time() -> None:
    c = run(points((0, "running"), (20, "planned_stop"), (50, "running")))
    assert c.planned_s == 70
    assert c.planned_stop_s == 30
    assert c.run_s == 70
    assert compute_ratios(c).availability == 1.0


def test_planned_stop_ends_a_stop_event() -> None:
    # stopped 10-40 (30 s) then planned_stop: the stop is short although the machine
    # does not run until 80
    c = run(points((0, "running"), (10, "stopped"), (40, "planned_stop"), (80, "running")))
    assert (c.run_s, c.short_stop_s, c.planned_stop_s, c.planned_s) == (60, 30, 40, 60)


def test_only_calendar_planned_time_counts() -> None:
    # planned 0-40 and 60-100 (a break 40-60); fault 30-70 (40 s, short under threshold 60)
    # and a long fault 80-200
    c = run(
        points((0, "running"), (30, "fault"), (70, "running"), (80, "fault"), (200, "running")),
        planned=[(0, 40), (60, 100)],
    )
    assert c.planned_s == 80
    assert c.short_stop_s == 20  # 30-40 and 60-70
    assert c.run_s == 60  # 0-40 and 60-80
    assert c.down_s["fault"] == 20  # 80-100


def test_unknown_state_before_first_sample_is_no_data() -> None:
    c = run(points((40, "running")))
    assert c.no_data_s == 40
    assert c.run_s == 60
    assert c.planned_s == 100
    assert NO_DATA in c.flags
    assert compute_ratios(c).availability == 0.6


def test_no_state_data_at_all_is_no_data() -> None:
    c = run([])
    assert (c.no_data_s, c.run_s, c.planned_s) == (100, 0, 100)


def test_unmapped_state_code_is_unknown_and_flagged() -> None:
    c = run(points((0, 1), (50, 99), (70, 1)))  # 99 is not in the default state map
    assert c.no_data_s == 20
    assert c.run_s == 80
    assert UNMAPPED_STATE in c.flags


def test_unmapped_state_outside_window_is_not_flagged() -> None:
    c = run(points((-50, "bogus"), (-10, "running")))
    assert c.run_s == 100
    assert UNMAPPED_STATE not in c.flags


def test_unknown_state_ends_a_stop_event() -> None:
    # stopped 10-40 then an unmapped code: the 30 s stop is short; the unknown 40-100 is no data
    c = run(points((0, "running"), (10, "stopped"), (40, "weird")))
    assert (c.run_s, c.short_stop_s, c.no_data_s) == (40, 30, 60)


def test_bad_quality_state_sample_is_unknown() -> None:
    states = [Point(at(0), 1), Point(at(60), 1, Quality.BAD), Point(at(90), 1)]
    c = run(states)
    assert (c.run_s, c.no_data_s) == (70, 30)
    assert UNMAPPED_STATE not in c.flags


def test_counter_delta_with_baseline_and_reset() -> None:
    # baseline 100 before the window; 150, then a reset to 5, then 25: 50 + 5 + 20
    got = counter_delta(points((-10, 100), (10, 150), (20, 5), (30, 25)), at(0))
    assert got.delta == 75
    assert COUNTER_RESET in got.flags


def test_counter_without_baseline_starts_at_first_sample_in_window() -> None:
    got = counter_delta(points((10, 1000), (20, 1010), (90, 1042)), at(0))
    assert got.delta == 42
    assert not got.flags


def test_counter_skips_bad_quality_samples() -> None:
    samples = [Point(at(0), 10), Point(at(5), 0, Quality.BAD), Point(at(9), 12)]
    assert counter_delta(samples, at(0)).delta == 2


def test_counts_and_quality() -> None:
    c = run(
        points((0, "running")),
        total=points((-5, 500), (50, 540), (99, 580)),
        reject=points((-5, 7), (60, 9)),
    )
    assert (c.total, c.good, c.ideal_s) == (80, 78, 80)
    r = compute_ratios(c)
    assert r.quality == pytest.approx(78 / 80)
    assert r.performance == pytest.approx(0.8)
    assert r.oee == pytest.approx(1.0 * 0.8 * 78 / 80)


def test_coverage_with_gap_longer_than_max_gap() -> None:
    # samples at 0, 100, 1000; window [0, 1200); max gap 300:
    # 0-100 covered, 100-400 covered, 400-1000 not, 1000-1200 covered
    times = [at(0), at(100), at(1000)]
    assert covered_ns(times, at(0), at(1200), 300 * S) == 600 * S
    c = run(points((0, "running")), window=(0, 1200), times=times)
    assert compute_ratios(c).coverage == 0.5


def test_coverage_counts_sample_before_window() -> None:
    # a sample 200 s before the window covers its first 100 s
    assert covered_ns([at(-200), at(500)], at(0), at(1000), 300 * S) == 400 * S


def test_performance_capped_and_flagged() -> None:
    # 100 s running, 200 units at an ideal 1 s each: performance 2.0 -> capped
    c = run(points((0, "running")), total=points((0, 0), (99, 200)))
    r = compute_ratios(c)
    assert r.performance == 1.0
    assert PERFORMANCE_CAPPED in r.flags
    assert r.oee == 1.0


def test_zero_planned_time_gives_nulls() -> None:
    c = run(points((0, "running")), planned=[])
    assert c.planned_s == 0
    r = compute_ratios(c)
    assert (r.availability, r.performance, r.quality, r.oee) == (None, None, None, None)


def test_no_counts_gives_null_quality_and_oee() -> None:
    c = run(points((0, "running")))
    r = compute_ratios(c)
    assert r.availability == 1.0
    assert r.performance == 0.0
    assert r.quality is None
    assert r.oee is None


def test_components_add_up() -> None:
    a = run(points((0, "running"), (20, "fault")), total=points((0, 0), (10, 10)))
    b = run(points((0, "running"), (50, "planned_stop")), total=points((0, 0), (10, 30)))
    s = sum_components([a, b])
    assert s == a + b
    assert s.planned_s == a.planned_s + b.planned_s
    assert s.down_s["fault"] == 80
    assert s.total == 40
    assert s.window_s == 200
    assert sum_components([]) == OeeComponents()
