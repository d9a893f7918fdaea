"""Reliability, yield, throughput, energy, automation and data-completeness KPIs.

Every expected value is worked out by hand from the constructed timeline (see
``day_rows``), never printed by the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devices.timeutil import US, to_us
from devices.truth import time_components
from karkhana.config.factory import load_factory
from karkhana.models import MachineState, Quality
from services.api import ApiSettings, create_app
from services.kpi import (
    MachineData,
    MachineSpec,
    OeeComponents,
    Point,
    compute_indicators,
    compute_machine,
    machine_components,
    map_mode,
)
from services.kpi.buckets import machine_buckets
from services.store import open_reader
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_factory, write_samples

M = "plant/area/line-1/m1"
DAY = datetime(2024, 5, 6, tzinfo=UTC)
SHIFTS: list[dict[str, object]] = [
    {"name": "a", "start": "06:00", "end": "14:00", "breaks": [{"start": "10:00", "end": "10:30"}]}
]
NS = 1_000_000_000


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY + timedelta(hours=hh, minutes=mm, seconds=ss)


STATES: list[tuple[datetime, str]] = [
    (at(6), "running"),
    (at(7), "fault"),  # 20 min: failure 1
    (at(7, 20), "running"),
    (at(8), "stopped"),  # 60 s: a short stop
    (at(8, 1), "running"),
    (at(8, 30), "fault"),  # 30 s: a short stop, not a failure
    (at(8, 30, 30), "running"),
    (at(9), "stopped"),  # 5 min, then fault 10 min in the same long stop: failure 2
    (at(9, 5), "fault"),
    (at(9, 15), "running"),
    (at(9, 40), "setup"),  # 09:40-10:30, planned 20 min (the break is not planned)
    (at(10, 30), "running"),
    (at(12), "fault"),  # 10 min: failure 3
    (at(12, 10), "running"),
    (at(13), "setup"),  # 30 s: a short stop
    (at(13, 0, 30), "running"),
    (at(13, 50), "off"),  # to the end of the shift: 10 min, long
]
# Mode codes (default mode_map: 1 auto, 0 manual): manual during both setups and while
# running 11:00-11:30; a repeated auto sample at 12:00 is no change.
MODES: list[tuple[datetime, int]] = [
    (at(6), 1),
    (at(9, 40), 0),
    (at(10, 30), 1),
    (at(11), 0),
    (at(11, 30), 1),
    (at(12), 1),
    (at(13), 0),
    (at(13, 0, 30), 1),
]


def day_rows() -> list[Row]:
    """Shift 06:00-14:00 UTC, break 10:00-10:30: planned 27,000 s, window 28,800 s.

    Long-stop time in planned time: fault 1,200 + 600 + 600 = 2,400 s, stopped 300 s,
    setup 1,200 s, off 600 s: 4,500 s, so run 22,500 s (incl. 120 s of short stops).
    Failures 3: MTBF 22,500 / 3 = 7,500 s, MTTR 2,400 / 3 = 800 s.
    Units 18,000 of which 360 rejects: FPY 0.98, scrap ratio 0.02, throughput
    18,000 / 22,500 s = 2,880 units/h. Energy 1,000.0 -> 1,441.0 kWh: 441 kWh,
    441 / 17,640 = 0.025 kWh per good unit. Mode known over all run time; manual run time
    11:00-11:30 (1,800 s) + the short setup (30 s): automation 20,670 / 22,500; 3 changes
    from auto to manual: 3 x 3,600 / 22,500 = 0.48 per run hour. Power every minute except
    12:30-13:00: 12:29 covers to 12:34 (max_gap 300 s), so 26 min uncovered:
    completeness (28,800 - 1,560) / 28,800.
    """
    rows: list[Row] = [(M, "state", t, v) for t, v in STATES]
    rows += [(M, "mode", t, v) for t, v in MODES]
    rows += [(M, "count_total", at(6), 0), (M, "count_total", at(13, 50), 18_000)]
    rows += [(M, "count_reject", at(6), 0), (M, "count_reject", at(13, 50), 360)]
    rows += [(M, "energy", at(6), 1000.0), (M, "energy", at(13, 59), 1441.0)]
    minutes = [m for m in range(8 * 60) if not 6 * 60 + 30 <= m < 7 * 60]
    rows += [(M, "power", at(6) + timedelta(minutes=m), 10.0) for m in minutes]
    return rows


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    write_samples(path, day_rows())
    return path


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml", machines={M: {"ideal_cycle_s": 1.0}}, shifts=SHIFTS
    )


def test_kpis_of_a_hand_worked_shift(db: Path, factory: Path) -> None:
    ref = load_factory(factory).machine(M)
    with open_reader(db) as reader:
        c = compute_machine(reader, ref, at(6), at(14), max_gap_s=300)
    assert (c.planned_s, c.run_s, c.short_stop_s) == (27_000, 22_500, 120)
    assert (c.failures, c.manual_interventions) == (3, 3)
    assert (c.mode_run_s, c.auto_run_s) == (22_500, 20_670)
    k = compute_indicators(c)
    assert k.mtbf_s == pytest.approx(7_500) and k.mttr_s == pytest.approx(800)
    assert k.first_pass_yield == pytest.approx(0.98)
    assert k.scrap_ratio == pytest.approx(0.02)
    assert k.throughput_per_h == pytest.approx(2_880)
    assert k.energy_kwh == pytest.approx(441)
    assert k.energy_per_good_kwh == pytest.approx(0.025)
    assert k.automation_rate == pytest.approx(20_670 / 22_500)
    assert k.manual_interventions_per_h == pytest.approx(0.48)
    assert k.data_completeness == pytest.approx((28_800 - 1_560) / 28_800)


def test_failures_and_interventions_belong_to_the_window_they_start_in(
    db: Path, factory: Path
) -> None:
    """Split at 12:05, inside the third breakdown: it counts once (in the first part), its
    repair time is shared 300 s / 300 s, and the parts sum to the whole."""
    ref = load_factory(factory).machine(M)
    with open_reader(db) as reader:
        first = compute_machine(reader, ref, at(6), at(12, 5), max_gap_s=300)
        second = compute_machine(reader, ref, at(12, 5), at(14), max_gap_s=300)
    assert (first.failures, second.failures) == (3, 0)
    assert second.down_s["fault"] == 300
    assert (first.manual_interventions, second.manual_interventions) == (2, 1)
    whole = first + second
    assert whole.energy_kwh == pytest.approx(441)
    assert whole.auto_run_s == pytest.approx(20_670)


def test_every_bucket_equals_the_direct_computation_with_modes_and_energy(
    db: Path, factory: Path
) -> None:
    ref = load_factory(factory).machine(M)
    with open_reader(db) as reader:
        buckets = machine_buckets(reader, ref, to_ns(at(5)), to_ns(at(15)), max_gap_s=300)
        for b in buckets:
            start = datetime.fromtimestamp(b.start_ns / NS, UTC)
            direct = compute_machine(reader, ref, start, start + timedelta(minutes=15), 300)
            for name in ("failures", "energy_kwh", "mode_run_s", "auto_run_s"):
                assert getattr(b.components, name) == pytest.approx(getattr(direct, name))
            assert b.components.manual_interventions == direct.manual_interventions, start


def to_ns(t: datetime) -> int:
    return int(t.timestamp()) * NS


def test_api_kpis_block_from_stored_buckets_and_direct(db: Path, factory: Path) -> None:
    """The same figures whether the API sums stored 15-minute buckets (bucket=day) or
    computes the window directly: the new components are stored and summed."""
    app = create_app(ApiSettings(factory=factory, db=db))
    params = {"asset": M, "from": "2024-05-06T00:00:00Z", "to": "2024-05-07T00:00:00Z"}
    with api_client(app, "viewer") as client:
        direct = client.get("/api/v1/kpi/oee", params=params)
        daily = client.get("/api/v1/kpi/oee", params={**params, "bucket": "day"})
    assert direct.status_code == 200 and daily.status_code == 200, daily.text
    for item in (direct.json()[0], daily.json()[0]):
        kpis = item["kpis"]
        assert kpis["failures"] == 3 and kpis["manual_interventions"] == 3
        assert kpis["mtbf_s"] == pytest.approx(7_500)
        assert kpis["mttr_s"] == pytest.approx(800)
        assert kpis["energy_per_good_kwh"] == pytest.approx(0.025)
        assert kpis["automation_rate"] == pytest.approx(20_670 / 22_500)
        assert kpis["throughput_per_h"] == pytest.approx(2_880)
        assert item["components"]["energy_kwh"] == pytest.approx(441)


def test_unknown_mode_counts_neither_as_auto_nor_manual() -> None:
    """Running over [0, 100 s). Mode: none before 20 s, auto 20-50, bad sample 50-60,
    manual (text) 60-70, manual (code, no change) 70-80, auto (float code) 80-90, manual
    90-100. Known 30 + 40 = 70 s, auto 30 + 10 = 40 s; one intervention (90 s: after auto;
    60 s follows a bad sample, so no change of mode is seen)."""
    spec = MachineSpec({"1": MachineState.RUNNING}, 1.0, 120, mode_map={"1": "auto", "0": "manual"})
    modes = [
        Point(20 * NS, 1),
        Point(50 * NS, 1, Quality.BAD),
        Point(60 * NS, "Manual"),
        Point(70 * NS, 0),
        Point(80 * NS, 1.0),
        Point(90 * NS, "0"),
    ]
    data = MachineData(0, 100 * NS, [(0, 100 * NS)], states=[Point(0, 1)], modes=modes)
    c = machine_components(data, spec, max_gap_s=300)
    assert (c.mode_run_s, c.auto_run_s, c.manual_interventions) == (70, 40, 1)


def test_map_mode() -> None:
    mode_map = {"1": "auto", "0": "manual", "A": "auto"}
    assert [map_mode(v, mode_map) for v in (1, 0.0, True, "A", "MANUAL", 7, "x")] == [
        "auto", "manual", "auto", "auto", "manual", None, None
    ]  # fmt: skip


def test_undefined_kpis_are_null() -> None:
    k = compute_indicators(OeeComponents())
    assert k.mtbf_s is None and k.mttr_s is None and k.automation_rate is None
    assert k.first_pass_yield is None and k.energy_per_good_kwh is None


def test_ground_truth_counts_the_same_failures_and_setups() -> None:
    """The simulator's truth on the same timeline, with its mode rule (manual during setup):
    failures 3, interventions 2 (the setups), manual run time 30 s (the short setup)."""
    end = to_us(at(14))
    times = [to_us(t) for t, _ in STATES] + [end]
    spans = [(times[i], times[i + 1], MachineState(v)) for i, (_, v) in enumerate(STATES)]
    planned = [(to_us(at(6)), to_us(at(10))), (to_us(at(10, 30)), end)]
    comp = time_components(
        spans, planned, (to_us(at(6)), end), 120, manual_states=frozenset({MachineState.SETUP})
    )
    assert (comp.failures, comp.manual_interventions) == (3, 2)
    assert comp.run_us == 22_500 * US and comp.mode_run_us == 22_500 * US
    assert comp.auto_run_us == 22_470 * US
    without_mode = time_components(spans, planned, (to_us(at(6)), end), 120)
    assert without_mode.mode_run_us == 0 and without_mode.failures == 3
