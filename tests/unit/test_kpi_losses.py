"""The time model (holidays, maintenance windows, calendar time) and the OEE loss tree.

Every expected value is worked out by hand from the constructed timeline below (see the
docstrings), never printed by the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.scenario import Segment
from devices.timeutil import US, to_us
from devices.truth import add_rejects, time_components
from karkhana.calendar import planned_intervals, total_seconds
from karkhana.config.factory import load_factory
from karkhana.errors import ConfigError
from karkhana.models import MachineState
from services.api import ApiSettings, create_app
from services.kpi import compute_machine, compute_ratios, loss_tree, sum_components
from services.store import open_reader
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_samples

PKT = timedelta(hours=5)  # Asia/Karachi: UTC+05:00 all year
MACHINE = "plant/weaving/line-1/loom-01"
OTHER = "plant/weaving/line-1/loom-02"


def local(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    """A Karachi wall-clock time in May 2024 as UTC (2024-05-06 is a Monday)."""
    return datetime(2024, 5, day, hh, mm, ss, tzinfo=UTC) - PKT


def factory_doc(**site_extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "short_stop_threshold_s": 120,
        "startup_window_s": 300,
        "external_causes": {"off": "power_outage", "idle": "no_material"},
        "sites": [
            {
                "id": "plant",
                "timezone": "Asia/Karachi",
                "calendar": {
                    "shifts": [
                        {
                            "name": "a",
                            "start": "06:00",
                            "end": "14:00",
                            "breaks": [{"name": "lunch", "start": "10:30", "end": "11:00"}],
                        }
                    ]
                },
                "areas": [
                    {
                        "id": "weaving",
                        "lines": [
                            {
                                "id": "line-1",
                                "machines": [
                                    {"id": "loom-01", "ideal_cycle_s": 1.0},
                                    {"id": "loom-02", "ideal_cycle_s": 1.0},
                                ],
                            }
                        ],
                    }
                ],
                **site_extra,
            }
        ],
    }


def write_doc(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# --- time model ---------------------------------------------------------------------------


def test_holiday_removes_the_shifts_that_start_on_it(tmp_path: Path) -> None:
    """Mon-Wed, one 06:00-14:00 shift with a 30-minute lunch: 450 min a day; Tuesday is a
    holiday, so two days remain: 900 min."""
    doc = factory_doc(holidays=[date(2024, 5, 7)])
    site = load_factory(write_doc(tmp_path / "f.yaml", doc)).sites[0]
    planned = planned_intervals(site, local(6, 0), local(9, 0))
    assert total_seconds(planned) == 2 * 450 * 60
    assert all(a.date() != date(2024, 5, 7) for a, _ in planned)


def test_holiday_may_have_a_name(tmp_path: Path) -> None:
    doc = factory_doc(holidays=[{"date": "2024-05-07", "name": "Labour Day"}])
    site = load_factory(write_doc(tmp_path / "f.yaml", doc)).sites[0]
    assert site.holidays[0].date == date(2024, 5, 7)
    assert site.holidays[0].name == "Labour Day"


def test_maintenance_windows_are_per_machine_or_line(tmp_path: Path) -> None:
    """Line maintenance 07:00-08:00 (both looms); loom-01 also 10:00-11:30 local, which
    overlaps the lunch break 10:30-11:00: 60 min of it is shift time. loom-01 plans
    450 - 60 - 60 = 330 min, loom-02 450 - 60 = 390 min."""
    doc = factory_doc(
        maintenance=[
            {
                "asset": "plant/weaving/line-1",
                "start": "2024-05-06T07:00",
                "end": "2024-05-06T08:00",
            },
            {"asset": MACHINE, "start": "2024-05-06T10:00", "end": "2024-05-06T11:30"},
        ]
    )
    factory = load_factory(write_doc(tmp_path / "f.yaml", doc))
    site = factory.sites[0]
    window = (local(6, 0), local(7, 0))
    assert total_seconds(planned_intervals(site, *window, MACHINE)) == 330 * 60
    assert total_seconds(planned_intervals(site, *window, OTHER)) == 390 * 60
    assert total_seconds(planned_intervals(site, *window)) == 450 * 60


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (
            {"maintenance": [{"asset": "plant/weaving/line-9", "start": "2024-05-06T07:00",
                              "end": "2024-05-06T08:00"}]},
            "sites",
            "line-9",
        ),
        (
            {"maintenance": [{"asset": MACHINE, "start": "2024-05-06T08:00",
                              "end": "2024-05-06T07:00"}]},
            "sites[0].maintenance[0]",
            "end after it starts",
        ),
        (
            {"maintenance": [{"asset": MACHINE, "start": "2024-05-06T07:00+05:00",
                              "end": "2024-05-06T08:00"}]},
            "sites[0].maintenance[0]",
            "local times",
        ),
        ({"holidays": ["2024-02-30"]}, "sites[0].holidays[0].date", "date"),
    ],
)  # fmt: skip
def test_bad_time_model_keys_are_refused_with_their_path(
    tmp_path: Path, extra: dict[str, Any], key: str, words: str
) -> None:
    path = write_doc(tmp_path / "f.yaml", factory_doc(**extra))
    with pytest.raises(ConfigError) as info:
        load_factory(path)
    assert str(path) in str(info.value)
    assert info.value.key_path.startswith(key)
    assert words in info.value.problem


def test_external_cause_on_a_breakdown_is_refused(tmp_path: Path) -> None:
    doc = factory_doc()
    doc["external_causes"] = {"fault": "power_outage"}
    with pytest.raises(ConfigError) as info:
        load_factory(write_doc(tmp_path / "f.yaml", doc))
    assert "cannot be an external loss" in info.value.problem


# --- the loss tree on a hand-worked shift -------------------------------------------------

# Shift a, Monday 2024-05-06, 06:00-14:00 with lunch 10:30-11:00: planned 27,000 s.
STATES: list[tuple[datetime, str]] = [
    (local(6, 6), "running"),
    (local(6, 7), "fault"),  # breakdown, 1,200 s
    (local(6, 7, 20), "running"),  # startup 07:20-07:25
    (local(6, 8), "stopped"),  # short stop, 60 s
    (local(6, 8, 1), "running"),
    (local(6, 9), "setup"),  # changeover, 900 s
    (local(6, 9, 15), "running"),  # startup 09:15-09:20
    (local(6, 9, 45), "off"),  # power outage, 900 s, external
    (local(6, 10), "running"),  # startup 10:00-10:05
    (local(6, 10, 30), "idle"),  # lunch: not planned, but a long stop
    (local(6, 11), "running"),  # startup 11:00-11:05
    (local(6, 11, 30), "idle"),  # no material, 600 s, external
    (local(6, 11, 40), "running"),  # startup 11:40-11:45
    (local(6, 13), "stopped"),  # long stop, 300 s, other
    (local(6, 13, 5), "running"),  # startup 13:05-13:10
    (local(6, 14), "off"),
]
# Reject counter: startup rejects 5 + 4 + 2 + 3 + 2 = 16, production rejects 3 + 1 + 1 = 5.
REJECTS: list[tuple[datetime, int]] = [
    (local(6, 6), 0),
    (local(6, 7, 22), 5),  # startup
    (local(6, 8, 30), 8),  # production
    (local(6, 9, 17), 12),  # startup
    (local(6, 10, 3), 14),  # startup
    (local(6, 11, 4), 17),  # startup (after the lunch break)
    (local(6, 11, 46), 18),  # production: the startup ended at 11:45
    (local(6, 13, 5, 30), 20),  # startup
    (local(6, 13, 50), 21),  # production
]
TOTAL = 20_000
PLANNED = 27_000.0
RUN = PLANNED - 1_200 - 900 - 900 - 600 - 300  # 23,100 s, the 60 s short stop included


def shift_rows(machine: str = MACHINE) -> list[Row]:
    rows: list[Row] = [(machine, "state", ts, v) for ts, v in STATES]
    rows += [(machine, "count_reject", ts, v) for ts, v in REJECTS]
    rows += [
        (machine, "count_total", local(6, 6), 0),
        (machine, "count_total", local(6, 13, 59), TOTAL),
    ]
    return rows


@pytest.fixture
def plant(tmp_path: Path) -> tuple[Path, Path]:
    factory = write_doc(tmp_path / "factory.yaml", factory_doc())
    db = tmp_path / "store.sqlite"
    write_samples(db, shift_rows())
    return factory, db


def test_components_split_external_losses_and_startup_rejects(plant: tuple[Path, Path]) -> None:
    factory, db = plant
    ref = load_factory(factory).machine(MACHINE)
    with open_reader(db) as reader:
        c = compute_machine(reader, ref, local(6, 6), local(6, 14), max_gap_s=300)
    assert c.planned_s == PLANNED
    assert c.run_s == RUN
    assert c.short_stop_s == 60
    assert dict(c.down_s) == {"idle": 600, "stopped": 300, "fault": 1_200, "setup": 900, "off": 900}
    assert dict(c.external_s) == {"power_outage": 900, "no_material": 600}
    assert (c.total, c.good, c.startup_rejects) == (TOTAL, TOTAL - 21, 16)
    assert (c.startup_reject_s, c.production_reject_s) == (16, 5)


def test_loss_tree_seconds_and_points_add_up_to_planned_time(plant: tuple[Path, Path]) -> None:
    """Losses: breakdowns 1,200, setup 900, small stops 60, reduced speed
    23,100 - 60 - 20,000 = 3,040, startup rejects 16, production rejects 5, other stops 300,
    external 900 + 600; fully productive time 19,979 s. Total 27,000 s."""
    factory, db = plant
    ref = load_factory(factory).machine(MACHINE)
    with open_reader(db) as reader:
        c = compute_machine(reader, ref, local(6, 6), local(6, 14), max_gap_s=300)
    tree = loss_tree(c)
    assert tree.breakdowns_s == 1_200
    assert tree.setup_s == 900
    assert tree.small_stops_s == 60
    assert tree.reduced_speed_s == 3_040
    assert tree.startup_rejects_s == 16
    assert tree.production_rejects_s == 5
    assert tree.other_stops_s == 300
    assert dict(tree.external_s) == {"power_outage": 900, "no_material": 600}
    assert tree.points(1_200) == pytest.approx(1_200 / 27_000 * 100)
    r = compute_ratios(c)
    losses = [1_200, 900, 60, 3_040, 16, 5, 300, 900, 600]
    points = sum(tree.points(s) or 0 for s in losses)
    assert (r.oee or 0) * 100 + points == pytest.approx(100)
    assert r.oee == pytest.approx(19_979 / 27_000)
    assert r.oee_excluding_external == pytest.approx(19_979 / 25_500)
    assert r.utilization == pytest.approx(27_000 / 28_800)
    assert r.teep == pytest.approx(19_979 / 28_800)


def test_api_reports_losses_teep_and_oee_excluding_external(plant: tuple[Path, Path]) -> None:
    factory, db = plant
    with api_client(create_app(ApiSettings(factory=factory, db=db)), "viewer") as client:
        response = client.get(
            "/api/v1/kpi/oee",
            params={"asset": MACHINE, "from": "2024-05-06T06:00:00+05:00",
                    "to": "2024-05-06T14:00:00+05:00"},
        )  # fmt: skip
    assert response.status_code == 200, response.text
    (item,) = response.json()
    losses = item["losses"]
    assert losses["breakdowns"] == {"seconds": 1_200, "points": pytest.approx(4.4444, abs=1e-4)}
    assert losses["setup"]["seconds"] == 900
    assert losses["small_stops"]["seconds"] == 60
    assert losses["reduced_speed"] == {"seconds": 3_040, "points": pytest.approx(11.2593, abs=1e-4)}
    assert losses["startup_rejects"]["seconds"] == 16
    assert losses["production_rejects"]["seconds"] == 5
    assert losses["other_stops"]["seconds"] == 300
    assert losses["external"]["power_outage"]["seconds"] == 900
    assert losses["external"]["no_material"]["points"] == pytest.approx(2.2222, abs=1e-4)
    assert item["components"]["startup_rejects"] == 16
    assert item["components"]["external_s"] == {"power_outage": 900, "no_material": 600}
    assert round(item["oee"], 4) == 0.7400
    assert round(item["oee_excluding_external"], 4) == 0.7835
    assert round(item["utilization"], 4) == 0.9375
    assert round(item["teep"], 4) == 0.6937


@pytest.mark.parametrize(
    "cut", [local(6, 7, 21), local(6, 9, 16), local(6, 9, 50), local(6, 13, 5, 10)]
)
def test_new_components_are_additive_across_a_cut(plant: tuple[Path, Path], cut: datetime) -> None:
    """Cutting the shift inside a startup window (before its rejects are counted) or a stop
    changes no sum: the part after the cut still sees the startup, and the long stop before
    it, that began before the cut."""
    factory, db = plant
    ref = load_factory(factory).machine(MACHINE)
    with open_reader(db) as reader:
        whole = compute_machine(reader, ref, local(6, 6), local(6, 14), max_gap_s=300)
        parts = sum_components(
            compute_machine(reader, ref, a, b, max_gap_s=300)
            for a, b in ((local(6, 6), cut), (cut, local(6, 14)))
        )
    assert parts.startup_rejects == whole.startup_rejects == 16
    assert dict(parts.external_s) == pytest.approx(dict(whole.external_s))
    assert parts.production_reject_s == pytest.approx(whole.production_reject_s)
    assert parts.window_s == whole.window_s


def test_maintenance_window_reported_and_removed_from_planned_time(tmp_path: Path) -> None:
    """loom-01 in maintenance 12:00-13:00 (local): planned 27,000 - 3,600 s; the hour's run
    time is no longer counted, so run 23,100 - 3,600."""
    doc = factory_doc(
        maintenance=[{"asset": MACHINE, "start": "2024-05-06T12:00", "end": "2024-05-06T13:00"}]
    )
    factory = load_factory(write_doc(tmp_path / "f.yaml", doc))
    db = tmp_path / "store.sqlite"
    write_samples(db, shift_rows())
    with open_reader(db) as reader:
        c = compute_machine(reader, factory.machine(MACHINE), local(6, 6), local(6, 14), 300)
    assert c.maintenance_s == 3_600
    assert c.planned_s == PLANNED - 3_600
    assert c.run_s == RUN - 3_600


# --- the simulator's ground truth computes the same components ----------------------------


def us(dt: datetime) -> int:
    return to_us(dt)


def test_truth_external_startups_and_reject_split() -> None:
    """The same hand-worked shift as spans and generated units: one unit per second while
    running at 06:00-07:00 and 07:20-07:30, with rejects at 06:30 (production), 07:21 and
    07:24:59 (startup) and 07:25 (production: the startup window is [07:20, 07:25))."""
    spans = [
        (us(a), us(b), MachineState(s))
        for (a, s), (b, _) in zip(STATES, [*STATES[1:], (local(6, 14), "off")], strict=True)
    ]
    planned = [(us(local(6, 6)), us(local(6, 10, 30))), (us(local(6, 11)), us(local(6, 14)))]
    window = (us(local(6, 6)), us(local(6, 14)))
    causes = {MachineState.OFF: "power_outage", MachineState.IDLE: "no_material"}
    comp = time_components(spans, planned, window, 120, causes)
    assert comp.external_us == {"power_outage": 900 * US, "no_material": 600 * US}
    starts = [local(6, 7, 20), local(6, 9, 15), local(6, 10), local(6, 11), local(6, 11, 40)]
    assert comp.startups_us == [us(t) for t in [*starts, local(6, 13, 5)]]

    late = local(6, 7, 25)

    def seg(a: datetime, b: datetime, rejects: list[datetime]) -> Segment:
        k = [round((us(t) - us(a)) / US) for t in rejects]
        return Segment(us(a), us(b), MachineState.RUNNING, US, us(a), tuple(k), 1.0)

    segments = [
        seg(local(6, 6), local(6, 7), [local(6, 6, 30)]),
        seg(local(6, 7, 20), local(6, 7, 30), [local(6, 7, 21), local(6, 7, 24, 59), late]),
    ]
    add_rejects(comp, segments, window, 300, 0.5)
    # Units complete strictly inside a segment: 3,599 + 599.
    assert (comp.total, comp.reject, comp.startup_reject) == (3_599 + 599, 4, 2)
    assert (comp.startup_reject_s, comp.production_reject_s) == (1.0, 1.0)
    out = comp.to_json()
    assert out["losses"]["external_s"] == {"no_material": 600.0, "power_outage": 900.0}
    assert out["utilization"] == pytest.approx(27_000 / 28_800)
