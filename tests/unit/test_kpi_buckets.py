"""Buckets and roll-ups through the API: true line OEE from summed components, late data
recomputing the buckets it touches, and periods (hour, shift, day, week) in Asia/Karachi.

Expected values are worked out by hand from the constructed data and the calendar."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from karkhana.config.factory import load_factory
from services.api import ApiSettings, create_app
from services.kpi.buckets import OffGrid, PeriodKind, check_grid, periods
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_factory, write_samples

PKT = timedelta(hours=5)  # Asia/Karachi: UTC+05:00 all year
M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
SHIFTS: list[dict[str, object]] = [
    {"name": "a", "start": "06:00", "end": "14:00", "breaks": [{"start": "10:30", "end": "11:00"}]},
    {"name": "b", "start": "14:00", "end": "22:00"},
    {
        "name": "c",
        "start": "22:00",
        "end": "06:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
        "breaks": [{"start": "02:00", "end": "02:30"}],
    },
]


def local(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    """A Karachi wall-clock time in May 2024, as UTC (2024-05-06 is a Monday)."""
    return datetime(2024, 5, day, hh, mm, ss, tzinfo=UTC) - PKT


def iso(day: int, hh: int, mm: int = 0, ss: int = 0) -> str:
    return f"2024-05-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}+05:00"


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 1.0}},
        shifts=SHIFTS,
        timezone="Asia/Karachi",
    )


def client_for(factory: Path, db: Path) -> TestClient:
    return api_client(create_app(ApiSettings(factory=factory, db=db)), "viewer")


def get_oee(client: TestClient, **params: str) -> list[dict[str, object]]:
    response = client.get("/api/v1/kpi/oee", params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, object]] = response.json()
    return body


# --- roll-up ------------------------------------------------------------------------------


def rollup_rows() -> list[Row]:
    """Shift a of Monday 2024-05-06 (planned 06:00-14:00 minus 10:30-11:00 = 450 min).

    m1 runs the whole shift at ideal speed (1 s/unit) without rejects: 27,000 units,
    OEE 100 %. m2 is in planned maintenance until 13:00 (planned 60 min), runs 13:00-13:30
    at half speed (900 units, 450 rejected), then faults: A 50 %, P 50 %, Q 50 %, OEE 12.5 %.
    Mean of the machine OEEs: 56.25 %. True line OEE from summed components: planned 30,600 s,
    run 28,800 s, ideal 27,900 s, good 27,450 of 27,900: OEE = 27,450 / 30,600 = 89.71 %.
    """
    return [
        (M1, "state", local(6, 6), "running"),
        (M1, "count_total", local(6, 6), 0),
        (M1, "count_total", local(6, 13, 59, 59), 27_000),
        (M2, "state", local(6, 6), "planned_stop"),
        (M2, "state", local(6, 13), "running"),
        (M2, "state", local(6, 13, 30), "fault"),
        (M2, "state", local(6, 14), "planned_stop"),
        (M2, "count_total", local(6, 13), 0),
        (M2, "count_total", local(6, 13, 29), 900),
        (M2, "count_reject", local(6, 13), 0),
        (M2, "count_reject", local(6, 13, 29), 450),
    ]


@pytest.mark.parametrize("bucket", [None, "shift"])
@pytest.mark.parametrize("group_by", ["line", "area", "site"])
def test_group_oee_is_from_summed_components_not_the_mean(
    factory: Path, tmp_path: Path, bucket: str | None, group_by: str
) -> None:
    db = tmp_path / "store.sqlite"
    write_samples(db, rollup_rows())
    params = {"asset": "plant", "from": iso(6, 6), "to": iso(6, 14), "group_by": group_by}
    if bucket:
        params["bucket"] = bucket
    with client_for(factory, db) as client:
        machines = get_oee(client, **{**params, "group_by": "machine"})
        (group,) = get_oee(client, **params)
    by_asset = {m["asset"]: m for m in machines}
    assert by_asset[M1]["oee"] == pytest.approx(1.0)
    assert by_asset[M2]["oee"] == pytest.approx(0.125)
    mean = (1.0 + 0.125) / 2
    assert group["oee"] == pytest.approx(27_450 / 30_600)
    assert abs(mean - group["oee"]) > 0.05  # type: ignore[operator]
    assert group["availability"] == pytest.approx(28_800 / 30_600)
    assert group["performance"] == pytest.approx(27_900 / 28_800)
    assert group["quality"] == pytest.approx(27_450 / 27_900)
    assert group["machines"] == 2
    components = group["components"]
    assert isinstance(components, dict)
    assert components["planned_s"] == pytest.approx(27_000 + 3_600)
    assert components["run_s"] == pytest.approx(27_000 + 1_800)
    assert components["good"] == 27_450
    if bucket:
        assert group["period"] == "2024-05-06/a"


# --- late data ----------------------------------------------------------------------------


def live_rows() -> list[Row]:
    """What arrives live: m1 runs from 06:00; its counters at 06:00 and 13:59."""
    return [
        (M1, "state", local(6, 6), "running"),
        (M1, "count_total", local(6, 6), 0),
        (M1, "count_reject", local(6, 6), 0),
        (M1, "count_total", local(6, 13, 59), 25_200),
        (M1, "count_reject", local(6, 13, 59), 252),
    ]


def late_rows() -> list[Row]:
    """An edge buffer replaying after an outage: a fault 09:10-09:40 (long) and two
    stops of one minute each (short, threshold 120 s) 12:20-12:21 and 12:29-12:30."""
    return [
        (M1, "state", local(6, 9, 10), "fault"),
        (M1, "count_total", local(6, 9, 10), 11_400),
        (M1, "state", local(6, 9, 40), "running"),
        (M1, "count_total", local(6, 9, 40), 11_400),
        (M1, "state", local(6, 12, 20), "idle"),
        (M1, "state", local(6, 12, 21), "running"),
        (M1, "state", local(6, 12, 29), "stopped"),
        (M1, "state", local(6, 12, 30), "running"),
    ]


def test_late_data_recomputes_the_buckets_it_touches(factory: Path, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    write_samples(db, live_rows())
    params = {"asset": M1, "from": iso(6, 6), "to": iso(6, 14), "bucket": "shift"}
    with client_for(factory, db) as client:
        # Asked for three times, so the window's raw-data fingerprint is on record too.
        for _ in range(3):
            (before,) = get_oee(client, **params)
            # Planned 450 min, all of it running: A = 100 %, P = 25,200 / 27,000, Q = 99 %.
            assert before["availability"] == pytest.approx(1.0)
            assert before["performance"] == pytest.approx(25_200 / 27_000)
        write_samples(db, late_rows())
        (after,) = get_oee(client, **params)
        (whole_day,) = get_oee(client, **{**params, "bucket": "day", "to": iso(7, 0)})
        (direct,) = get_oee(client, **{k: v for k, v in params.items() if k != "bucket"})
    # Planned 27,000 s; 1,800 s of fault (long stop) is down; the two short stops stay run.
    assert after["availability"] == pytest.approx(25_200 / 27_000)
    assert after["performance"] == pytest.approx(25_200 / 25_200)
    assert after["quality"] == pytest.approx(0.99)
    assert after["oee"] == pytest.approx(25_200 / 27_000 * 0.99)
    assert after["components"]["short_stop_s"] == pytest.approx(120)  # type: ignore[index]
    assert after["components"]["down_s"]["fault"] == pytest.approx(1_800)  # type: ignore[index]
    # The same window read live-then-late equals a fresh computation from all the data.
    fresh_db = tmp_path / "fresh" / "store.sqlite"
    fresh_db.parent.mkdir()
    shutil.copy(db, fresh_db)
    assert not (fresh_db.parent / "store.kpi.sqlite").exists()
    with client_for(factory, fresh_db) as client:
        (fresh,) = get_oee(client, **params)
    for item in (fresh, direct):
        assert item["components"] == after["components"]
        assert item["oee"] == pytest.approx(after["oee"])
    assert whole_day["components"]["down_s"]["fault"] == pytest.approx(1_800)  # type: ignore[index]


def test_late_data_that_ends_a_stop_early_reclassifies_it_in_untouched_buckets(
    factory: Path, tmp_path: Path
) -> None:
    """Live: idle 07:00 until running at 08:00 (a long stop over four buckets). Late: a
    'running' sample at 07:01 makes it a one-minute short stop and the machine idle again
    from 07:50 (a 10-minute long stop). Buckets 07:15 and 07:30 receive no sample but change."""
    db = tmp_path / "store.sqlite"
    write_samples(
        db,
        [
            (M1, "state", local(6, 6), "running"),
            (M1, "state", local(6, 7), "idle"),
            (M1, "state", local(6, 8), "running"),
        ],
    )
    params = {"asset": M1, "from": iso(6, 6), "to": iso(6, 14), "bucket": "hour"}
    with client_for(factory, db) as client:
        seven = get_oee(client, **params)[1]
        assert seven["period"] == "2024-05-06T07:00+0500"
        assert seven["components"]["down_s"]["idle"] == pytest.approx(3_600)  # type: ignore[index]
        write_samples(
            db, [(M1, "state", local(6, 7, 1), "running"), (M1, "state", local(6, 7, 50), "idle")]
        )
        seven = get_oee(client, **params)[1]
    components = seven["components"]
    assert isinstance(components, dict)
    assert components["down_s"]["idle"] == pytest.approx(600)
    assert components["short_stop_s"] == pytest.approx(60)
    assert components["run_s"] == pytest.approx(3_000)


def test_periods_with_partial_hours_sum_the_right_buckets(factory: Path, tmp_path: Path) -> None:
    """A window starting and ending at quarter hours: whole hours and loose buckets add up to
    the direct computation of the window."""
    db = tmp_path / "store.sqlite"
    write_samples(db, live_rows() + late_rows())
    window = {"asset": M1, "from": iso(6, 8, 45), "to": iso(6, 12, 15)}
    with client_for(factory, db) as client:
        (direct,) = get_oee(client, **window)
        (day,) = get_oee(client, **window, bucket="day")
        hours = get_oee(client, **window, bucket="hour")
    assert day["components"] == direct["components"]
    assert len(hours) == 5 and hours[0]["from"] == "2024-05-06T03:45:00Z"
    # 09:00-10:00 local holds the fault 09:10-09:40: 1,800 s down.
    assert hours[1]["components"]["down_s"]["fault"] == 1_800  # type: ignore[index]
    assert sum(h["components"]["run_s"] for h in hours) == direct["components"]["run_s"]  # type: ignore[index]


# --- periods in Asia/Karachi --------------------------------------------------------------


def test_shift_day_and_week_periods_in_karachi(factory: Path) -> None:
    site = load_factory(factory).sites[0]
    start, end = local(6, 0), local(13, 0)  # Monday 00:00 to the next Monday 00:00, local
    shifts = periods(site, start, end, PeriodKind.SHIFT)
    # Mon-Sat have three shifts; Sunday has no night shift c (so none runs into Monday).
    assert [p.label for p in shifts[:3]] == ["2024-05-06/a", "2024-05-06/b", "2024-05-06/c"]
    assert shifts[0].start == local(6, 6) == datetime(2024, 5, 6, 1, tzinfo=UTC)
    assert shifts[2].start == local(6, 22) == datetime(2024, 5, 6, 17, tzinfo=UTC)
    assert shifts[2].end == local(7, 6) == datetime(2024, 5, 7, 1, tzinfo=UTC)
    assert shifts[-1].label == "2024-05-12/b" and shifts[-1].end == local(12, 22)
    assert len(shifts) == 6 * 3 + 2
    days = periods(site, start, end, PeriodKind.DAY)
    assert [d.label for d in days][:2] == ["2024-05-06", "2024-05-07"] and len(days) == 7
    assert days[0].start == datetime(2024, 5, 5, 19, tzinfo=UTC)
    assert days[0].end == datetime(2024, 5, 6, 19, tzinfo=UTC)
    (week,) = periods(site, local(7, 0), end, PeriodKind.WEEK)  # clipped to the window
    assert week.label == "2024-W19" and week.start == local(7, 0) and week.end == end
    hours = periods(site, local(6, 6, 30), local(6, 8), PeriodKind.HOUR)
    assert [h.label for h in hours] == ["2024-05-06T06:00+0500", "2024-05-06T07:00+0500"]
    assert hours[0].start == local(6, 6, 30)


def test_day_and_shift_report_planned_time_through_the_api(factory: Path, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    write_samples(db, [(M1, "state", local(5, 12), "running")])
    params = {"asset": M1, "from": iso(6, 0), "to": iso(8, 0)}
    with client_for(factory, db) as client:
        days = get_oee(client, **params, bucket="day")
        shifts = get_oee(client, **params, bucket="shift")
        week = get_oee(client, **params, bucket="week")
    # Monday local day: c of Sunday is not scheduled, a (450 min), b (480), c from 22:00 to
    # 24:00 (120 min): 1,050 min. Tuesday: c of Monday 00:00-06:00 minus 02:00-02:30
    # (330 min), a, b, c to 24:00: 1,380 min.
    assert [d["period"] for d in days] == ["2024-05-06", "2024-05-07"]
    assert [d["components"]["planned_s"] for d in days] == [1_050 * 60, 1_380 * 60]  # type: ignore[index]
    assert all(d["availability"] == pytest.approx(1.0) for d in days)
    planned = {s["period"]: s["components"]["planned_s"] for s in shifts}  # type: ignore[index]
    assert planned == {
        "2024-05-06/a": 450 * 60,
        "2024-05-06/b": 480 * 60,
        "2024-05-06/c": 450 * 60,
        "2024-05-07/a": 450 * 60,
        "2024-05-07/b": 480 * 60,
        "2024-05-07/c": 120 * 60,  # cut at the window end, 00:00 local
    }
    assert week[0]["period"] == "2024-W19"
    assert week[0]["components"]["planned_s"] == (1_050 + 1_380) * 60  # type: ignore[index]


def test_off_grid_calendar_and_window_are_422(tmp_path: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "a", "start": "06:10", "end": "14:00"}],
        timezone="Asia/Karachi",
    )
    site = load_factory(factory).sites[0]
    with pytest.raises(OffGrid, match="06:10"):
        check_grid(site, local(6, 0), local(7, 0))
    db = tmp_path / "store.sqlite"
    write_samples(db, [(M1, "state", local(6, 6), "running")])
    with client_for(factory, db) as client:
        params = {"asset": M1, "from": iso(6, 0), "to": iso(7, 0)}
        response = client.get("/api/v1/kpi/oee", params={**params, "bucket": "shift"})
        assert response.status_code == 422 and "06:10" in response.json()["detail"]
        # Without buckets the exact window computation still answers.
        assert client.get("/api/v1/kpi/oee", params=params).status_code == 200
        off = {**params, "from": iso(6, 0, 5), "bucket": "day"}
        response = client.get("/api/v1/kpi/oee", params=off)
        assert response.status_code == 422 and "grid" in response.json()["detail"]


# --- each bucket equals a direct computation over its window ------------------------------


def test_every_bucket_equals_the_direct_computation_of_its_window(tmp_path: Path) -> None:
    """On a random day of states (incl. unmapped values), counters with resets and other
    signals, each 15-minute bucket computed in one pass equals ``compute_machine`` over
    that bucket alone (which test_kpi_additivity checks against a second-by-second
    reading)."""
    from services.kpi import compute_machine
    from services.kpi.buckets import machine_buckets
    from services.store import open_reader
    from tests.unit.test_kpi_additivity import SHIFTS as ADD_SHIFTS
    from tests.unit.test_kpi_additivity import _timeline

    machine = "plant/area/line/m1"
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={machine: {"ideal_cycle_s": 1.5, "short_stop_threshold_s": 120}},
        shifts=ADD_SHIFTS,
    )
    day = datetime(2024, 5, 6, tzinfo=UTC)
    states, counts, power = _timeline(seed=23)
    rows: list[Row] = [(machine, "state", day + timedelta(seconds=s), v) for s, v in states]
    rows += [(machine, "count_total", day + timedelta(seconds=s), v) for s, v in counts]
    rows += [(machine, "count_reject", day + timedelta(seconds=s), v // 20) for s, v in counts]
    rows += [(machine, "power", day + timedelta(seconds=s), 1.0) for s in power]
    db = tmp_path / "store.sqlite"
    write_samples(db, rows)
    ref = load_factory(factory).machine(machine)
    start, end = day + timedelta(hours=2), day + timedelta(hours=23)
    with open_reader(db) as reader:
        lo, hi = int(start.timestamp()) * 10**9, int(end.timestamp()) * 10**9
        buckets = machine_buckets(reader, ref, lo, hi, max_gap_s=300)
        assert len(buckets) == 21 * 4
        for b in buckets:
            at = datetime.fromtimestamp(b.start_ns / 1e9, UTC)
            direct = compute_machine(reader, ref, at, at + timedelta(minutes=15), 300)
            assert b.components.flags == direct.flags, at
            got, want = _plain(b.components.as_dict()), _plain(direct.as_dict())
            assert got == pytest.approx(want), at


def _plain(d: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Numbers of nested mappings flattened to ``a.b`` keys (lists such as flags left out)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_plain(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[prefix + k] = v
    return out
