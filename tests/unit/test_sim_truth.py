"""Ground-truth maths on hand-made timelines; every expected number is worked out by hand."""

from __future__ import annotations

import pytest

from devices.timeutil import US
from devices.truth import KpiComponents, sum_by_line, time_components
from karkhana.models import MachineState as S

MIN = 60 * US


def m(minutes: float) -> int:
    return round(minutes * MIN)


def test_one_hour_with_break_short_stop_and_fault() -> None:
    # Window 00:00-01:00; break 00:20-00:30; short stop 00:10:00-00:10:30; fault 00:40-00:45.
    spans = [
        (m(0), m(10), S.RUNNING),
        (m(10), m(10.5), S.STOPPED),
        (m(10.5), m(20), S.RUNNING),
        (m(20), m(30), S.IDLE),
        (m(30), m(40), S.RUNNING),
        (m(40), m(45), S.FAULT),
        (m(45), m(60), S.RUNNING),
    ]
    planned = [(m(0), m(20)), (m(30), m(60))]
    c = time_components(spans, planned, (m(0), m(60)), short_stop_threshold_s=120)
    out = c.to_json()
    # planned = 60 - 10 = 50 min = 3000 s; fault 300 s is long; the 30 s stop is short.
    assert out["planned_s"] == 3000.0
    assert out["run_s"] == 2700.0  # 3000 - 300 (fault); the short stop counts as run
    assert out["short_stop_s"] == 30.0
    assert out["down_s"] == {"idle": 0.0, "stopped": 0.0, "fault": 300.0, "setup": 0.0, "off": 0.0}
    assert out["planned_stop_s"] == 0.0
    assert out["availability"] == pytest.approx(0.9)


def test_short_stop_running_into_a_break_is_one_long_stop_event() -> None:
    # A 30 s stop at 00:19:30 is followed by the 10-min break: one 630 s stop event, long.
    spans = [
        (m(0), m(19.5), S.RUNNING),
        (m(19.5), m(20), S.STOPPED),
        (m(20), m(30), S.IDLE),
        (m(30), m(60), S.RUNNING),
    ]
    planned = [(m(0), m(20)), (m(30), m(60))]
    out = time_components(spans, planned, (m(0), m(60)), 120).to_json()
    assert out["run_s"] == 2970.0
    assert out["short_stop_s"] == 0.0
    assert out["down_s"]["stopped"] == 30.0
    assert out["down_s"]["idle"] == 0.0  # the break is not planned time


def test_planned_stop_is_removed_from_planned_time_and_ends_a_stop_event() -> None:
    # planned_stop 00:40-00:50 inside planned time, then a 60 s stop: short (the planned stop
    # ends the previous event, so it cannot merge with anything before).
    spans = [
        (m(0), m(39), S.RUNNING),
        (m(39), m(40), S.SETUP),
        (m(40), m(50), S.PLANNED_STOP),
        (m(50), m(51), S.STOPPED),
        (m(51), m(60), S.RUNNING),
    ]
    planned = [(m(0), m(60))]
    out = time_components(spans, planned, (m(0), m(60)), 120).to_json()
    assert out["calendar_planned_s"] == 3600.0
    assert out["planned_stop_s"] == 600.0
    assert out["planned_s"] == 3000.0
    # setup 60 s and stopped 60 s are both short stops (60 s < 120 s).
    assert out["short_stop_s"] == 120.0
    assert out["run_s"] == 3000.0
    assert sum(out["down_s"].values()) == 0.0


def test_event_open_at_window_end_is_classified_by_its_duration_up_to_the_end() -> None:
    spans = [(m(0), m(59), S.RUNNING), (m(59), m(70), S.FAULT), (m(70), m(120), S.RUNNING)]
    planned = [(m(0), m(120))]
    early = time_components(spans, planned, (m(0), m(60)), 120).to_json()
    assert early["short_stop_s"] == 60.0  # only 60 s of the fault are visible: short
    assert early["run_s"] == 3600.0
    late = time_components(spans, planned, (m(0), m(120)), 120).to_json()
    assert late["down_s"]["fault"] == 660.0  # the whole 11-min fault is long
    assert late["run_s"] == 7200.0 - 660.0


def test_event_that_began_before_the_window_is_classified_on_its_whole_duration() -> None:
    # A 3-min fault from -2 min to +1 min: long, so its 60 s inside the window are down time.
    spans = [(m(-10), m(-2), S.RUNNING), (m(-2), m(1), S.FAULT), (m(1), m(60), S.RUNNING)]
    planned = [(m(-10), m(60))]
    out = time_components(spans, planned, (m(0), m(60)), 120).to_json()
    assert out["planned_s"] == 3600.0
    assert out["down_s"]["fault"] == 60.0
    assert out["run_s"] == 3540.0


def test_consecutive_stop_states_form_one_event_split_by_state() -> None:
    # fault 90 s + setup 60 s back to back: one 150 s event, long; each state keeps its time.
    spans = [
        (m(0), m(10), S.RUNNING),
        (m(10), m(11.5), S.FAULT),
        (m(11.5), m(12.5), S.SETUP),
        (m(12.5), m(60), S.RUNNING),
    ]
    out = time_components(spans, [(m(0), m(60))], (m(0), m(60)), 120).to_json()
    assert out["down_s"]["fault"] == 90.0
    assert out["down_s"]["setup"] == 60.0
    assert out["short_stop_s"] == 0.0
    assert out["run_s"] == 3450.0


def test_off_outside_planned_time_is_not_down_time() -> None:
    spans = [(m(0), m(30), S.OFF), (m(30), m(60), S.RUNNING)]
    out = time_components(spans, [(m(30), m(60))], (m(0), m(60)), 120).to_json()
    assert out["planned_s"] == 1800.0
    assert out["run_s"] == 1800.0
    assert out["down_s"]["off"] == 0.0


def test_ratios_from_components() -> None:
    c = KpiComponents(calendar_planned_us=3000 * US, run_us=2700 * US)
    c.down_us[S.FAULT] = 300 * US
    c.total, c.reject, c.ideal_s = 1000, 20, 2500.0
    out = c.to_json()
    assert out["good"] == 980
    assert out["availability"] == pytest.approx(0.9)
    assert out["performance"] == pytest.approx(2500 / 2700)
    assert out["quality"] == pytest.approx(0.98)
    assert out["oee"] == pytest.approx(0.9 * 2500 / 2700 * 0.98)
    assert out["performance_capped"] is False


def test_performance_above_one_is_capped_and_flagged() -> None:
    c = KpiComponents(calendar_planned_us=100 * US, run_us=100 * US, total=110, ideal_s=110.0)
    out = c.to_json()
    assert out["performance"] == 1.0
    assert out["performance_capped"] is True


def test_zero_denominators_give_null_ratios() -> None:
    out = KpiComponents().to_json()
    assert out["availability"] is None
    assert out["performance"] is None
    assert out["quality"] is None
    assert out["oee"] is None


def test_line_ratios_come_from_sums_not_averages() -> None:
    a = KpiComponents(calendar_planned_us=3000 * US, run_us=2700 * US, total=100, reject=0)
    a.down_us[S.FAULT] = 300 * US
    b = KpiComponents(calendar_planned_us=1000 * US, run_us=500 * US, total=100, reject=50)
    b.down_us[S.IDLE] = 500 * US
    lines = sum_by_line({"s/a/l/m1": a, "s/a/l/m2": b, "s/a/other/m3": KpiComponents()})
    line = lines["s/a/l"].to_json()
    assert line["planned_s"] == 4000.0
    assert line["availability"] == pytest.approx(3200 / 4000)  # the average would be 0.7
    assert line["quality"] == pytest.approx(150 / 200)  # the average would be 0.75
    assert line["down_s"]["fault"] == 300.0 and line["down_s"]["idle"] == 500.0
    assert lines["s/a/other"].to_json()["availability"] is None
