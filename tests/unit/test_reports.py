"""The OEE report over HTTP: figures against hand-computed ground truth, the same buckets as
the KPI API, CSV that parses back to the JSON, roles and bad parameters."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from karkhana.models import to_ns
from services.api import ApiSettings, create_app
from services.downtime import event_id
from services.keys import Role
from services.reasons_store import Coding, open_reasons
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_factory, write_samples
from tests.unit.test_downtime import add_reasons

LINE = "plant/assembly/line-1"
M1 = f"{LINE}/m1"
M2 = f"{LINE}/m2"
DAY = datetime(2024, 5, 6, tzinfo=UTC)
SHIFT = {"from": "2024-05-06T06:00:00Z", "to": "2024-05-06T14:00:00Z"}


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm, second=ss)


# One 06:00-14:00 shift (UTC, no breaks), short-stop threshold 120 s.
# m1 (ideal cycle 1 s): fault 08:00-08:30, setup 11:00-11:20, a 60 s short stop at 12:00;
#   24 000 units, 480 rejects.
# m2 (ideal cycle 2 s): stopped 09:00-10:00; 11 000 units, no rejects.
ROWS: list[Row] = [
    (M1, "state", at(6), "running"),
    (M1, "state", at(8), "fault"),
    (M1, "state", at(8, 30), "running"),
    (M1, "state", at(11), "setup"),
    (M1, "state", at(11, 20), "running"),
    (M1, "state", at(12), "idle"),
    (M1, "state", at(12, 1), "running"),
    (M1, "count_total", at(6), 0),
    (M1, "count_total", at(13, 59, 59), 24_000),
    (M1, "count_reject", at(6), 0),
    (M1, "count_reject", at(13, 59, 59), 480),
    (M2, "state", at(6), "running"),
    (M2, "state", at(9), "stopped"),
    (M2, "state", at(10), "running"),
    (M2, "count_total", at(6), 0),
    (M2, "count_total", at(13, 59, 59), 11_000),
    (M2, "count_reject", at(6), 0),
    (M2, "count_reject", at(13, 59, 59), 0),
]

# Ground truth in seconds, worked out from the timeline above.
PLANNED = 2 * 8 * 3600
RUN_M1, RUN_M2 = 28_800 - 1800 - 1200, 28_800 - 3600
IDEAL_M1, IDEAL_M2 = 24_000 * 1.0, 11_000 * 2.0


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    add_reasons(factory)
    db = tmp_path / "data" / "store.sqlite"
    db.parent.mkdir()
    write_samples(db, ROWS)
    settings = ApiSettings(factory=factory, db=db)
    # The operator coded m1's fault as a broken belt.
    with open_reasons(settings.reasons_path) as reasons:
        reasons.put(
            Coding(
                event_id=event_id(M1, to_ns(at(8))),
                asset=M1,
                start_ns=to_ns(at(8)),
                reason="belt-break",
                comment="",
                coded_by="test",
                coded_ns=to_ns(at(8, 40)),
            )
        )
    return settings


@pytest.fixture
def manager(settings: ApiSettings) -> Iterator[TestClient]:
    with api_client(create_app(settings), Role.MANAGER) as client:
        yield client


def report(client: TestClient, **params: str) -> dict[str, Any]:
    response = client.get("/api/v1/reports/oee", params={**SHIFT, "asset": LINE, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_summary_and_machine_table_equal_the_ground_truth(manager: TestClient) -> None:
    body = report(manager)
    s = body["summary"]
    run = RUN_M1 + RUN_M2
    assert (s["asset"], s["level"], s["machines"]) == (LINE, "line", 2)
    assert s["availability"] == pytest.approx(run / PLANNED)
    assert s["performance"] == pytest.approx((IDEAL_M1 + IDEAL_M2) / run)
    assert s["quality"] == pytest.approx(34_520 / 35_000)
    assert s["oee"] == pytest.approx((IDEAL_M1 + IDEAL_M2) / PLANNED * 34_520 / 35_000)
    assert s["oee_excluding_external"] == pytest.approx(s["oee"])  # no external losses
    assert s["planned_min"] == pytest.approx(960)
    assert s["run_min"] == pytest.approx(run / 60)
    assert (s["total"], s["good"], s["rejects"]) == (35_000, 34_520, 480)
    machines = {m["asset"]: m for m in body["machines"]}
    assert machines[M1]["oee"] == pytest.approx(23_520 / 28_800)
    assert machines[M2]["availability"] == pytest.approx(RUN_M2 / 28_800)
    assert machines[M2]["performance"] == pytest.approx(IDEAL_M2 / RUN_M2)


def test_waterfall_steps_from_planned_to_fully_productive_time(manager: TestClient) -> None:
    steps = {w["name"]: w for w in report(manager)["waterfall"]}
    expected_s = {
        "planned time": PLANNED,
        "breakdowns": 1800,
        "setup": 1200,
        "other stops": 3600,
        "external: power_outage": 0,  # the loss tree always lists power outages
        "small stops": 60,
        "reduced speed": (RUN_M1 - 60 - IDEAL_M1) + (RUN_M2 - IDEAL_M2),
        "startup rejects": 0,
        "production rejects": 480 * 1.0,
        # the ideal time of the good units
        "fully productive time": 23_520 * 1.0 + 11_000 * 2.0,
    }
    assert set(steps) == set(expected_s)
    for name, seconds in expected_s.items():
        assert steps[name]["minutes"] == pytest.approx(seconds / 60), name
        assert steps[name]["points"] == pytest.approx(seconds / PLANNED * 100), name


def test_pareto_by_reason_equals_the_downtime_route(manager: TestClient) -> None:
    pareto = report(manager)["pareto"]
    # not coded: setup 1200 s + short stop 60 s + m2's stop 3600 s; coded: the fault.
    assert [(p["reason"], p["minutes"], p["count"]) for p in pareto] == [
        (None, pytest.approx(4860 / 60), 3),
        ("belt-break", pytest.approx(30), 1),
    ]
    response = manager.get("/api/v1/downtime/pareto", params={**SHIFT, "asset": LINE})
    assert response.status_code == 200, response.text
    assert [(b["reason"], b["seconds"] / 60) for b in response.json()] == [
        (p["reason"], p["minutes"]) for p in pareto
    ]


def test_trend_per_hour_equals_the_kpi_api(manager: TestClient) -> None:
    trend = report(manager, bucket="hour")["trend"]
    assert len(trend) == 8
    availability = [t["availability"] for t in trend]
    assert availability[:4] == pytest.approx([1.0, 1.0, 5400 / 7200, 3600 / 7200])
    kpi = manager.get(
        "/api/v1/kpi/oee", params={**SHIFT, "asset": LINE, "group_by": "line", "bucket": "hour"}
    )
    assert kpi.status_code == 200, kpi.text
    assert [(k["period"], k["oee"], k["quality"]) for k in kpi.json()] == [
        (t["period"], t["oee"], t["quality"]) for t in trend
    ]
    by_shift = report(manager, bucket="shift")["trend"]
    assert [t["period"] for t in by_shift] == ["2024-05-06/day"]


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_csv_parses_back_to_the_json_numbers(manager: TestClient) -> None:
    body = report(manager)
    response = manager.get("/api/v1/reports/oee", params={**SHIFT, "asset": LINE, "format": "csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    cells = {(r["section"], r["item"], r["field"]): r["value"] for r in rows}
    expected: dict[tuple[str, str, str], Any] = {}
    for field, value in body["summary"].items():
        expected[("summary", LINE, field)] = value
    sections = (
        ("trend", "period", body["trend"]),
        ("waterfall", "name", body["waterfall"]),
        ("pareto", "reason", body["pareto"]),
        ("machine", "asset", body["machines"]),
    )
    for section, key, items in sections:
        for item in items:
            for field, value in item.items():
                expected[(section, item[key] or "uncoded", field)] = value
    assert set(cells) == set(expected)
    for where, value in expected.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        assert _number(cells[where]) == value, where
    assert cells[("summary", LINE, "timezone")] == "UTC"
    assert cells[("pareto", "uncoded", "reason")] == ""


def test_roles(settings: ApiSettings) -> None:
    app = create_app(settings)
    with api_client(app, Role.VIEWER) as viewer:
        refused = viewer.get("/api/v1/reports/oee", params={**SHIFT, "asset": LINE})
        assert refused.status_code == 403, refused.text
        assert "manager" in refused.text
        anonymous = TestClient(app).get("/api/v1/reports/oee", params={**SHIFT, "asset": LINE})
        assert anonymous.status_code == 401
    with api_client(app, Role.MANAGER) as manager:
        assert report(manager)["summary"]["machines"] == 2


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"format": "xlsx"}, 422, "format"),
        ({"from": "2024-05-06T06:00:00Z", "to": "2024-06-07T06:00:00Z"}, 422, "at most 31 days"),
        ({"from": "2024-05-06T14:00:00Z", "to": "2024-05-06T06:00:00Z"}, 422, "before"),
        ({"from": "2024-05-06", "to": "2024-05-06T14:00:00Z"}, 422, "timezone"),
        ({"from": "2024-05-01T00:00:00Z", "to": "2024-05-06T00:00:00Z"}, 422, "trend points"),
        ({"from": "2024-05-06T06:05:00Z"}, 422, "grid"),
        ({"bucket": "month"}, 422, "bucket"),
        ({"asset": "plant/assembly/line-9"}, 404, "line-9"),
        ({"asset": "not a path!"}, 422, "path"),
    ],
)
def test_bad_parameters_are_refused_with_a_message(
    manager: TestClient, params: dict[str, str], status: int, message: str
) -> None:
    response = manager.get("/api/v1/reports/oee", params={**SHIFT, "asset": LINE, **params})
    assert response.status_code == status, response.text
    assert message in response.text
