"""Downtime over HTTP: list events, code reasons as an operator, Pareto, and bad requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from karkhana.models import to_ns
from services.api import ApiSettings, create_app
from services.downtime import event_id
from services.keys import Role
from tests.helpers.api import api_client
from tests.helpers.store_builders import write_factory, write_samples
from tests.unit.test_downtime import M1, M2, ROWS, add_reasons, at

LINE = "plant/assembly/line-1"
SHIFT = {"from": "2024-05-06T06:00:00Z", "to": "2024-05-06T14:00:00Z"}
B = event_id(M1, to_ns(at(7)))  # fault then idle, 07:00-07:35
D = event_id(M1, to_ns(at(9, 50)))  # setup across the break, 09:50-10:40
F = event_id(M2, to_ns(at(12)))  # stopped 12:00-12:02


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    factory = write_factory(
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
    )
    add_reasons(factory)
    db = tmp_path / "data" / "store.sqlite"
    db.parent.mkdir()
    write_samples(db, ROWS)
    return ApiSettings(factory=factory, db=db)


@pytest.fixture
def operator(settings: ApiSettings) -> Iterator[TestClient]:
    with api_client(create_app(settings), Role.OPERATOR) as client:
        yield client


def get(client: TestClient, path: str, **params: str) -> list[dict[str, object]]:
    response = client.get(path, params={**SHIFT, **params})
    assert response.status_code == 200, response.text
    body: list[dict[str, object]] = response.json()
    return body


def test_events_of_a_line_with_their_times(operator: TestClient) -> None:
    events = get(operator, "/api/v1/downtime", asset=LINE)
    assert [(e["asset"], e["start"], e["end"], e["duration_s"]) for e in events] == [
        (M1, "2024-05-06T05:50:00Z", "2024-05-06T06:10:00Z", 1200),
        (M1, "2024-05-06T07:00:00Z", "2024-05-06T07:35:00Z", 2100),
        (M1, "2024-05-06T08:00:00Z", "2024-05-06T08:01:00Z", 60),
        (M1, "2024-05-06T09:50:00Z", "2024-05-06T10:40:00Z", 3000),
        (M2, "2024-05-06T12:00:00Z", "2024-05-06T12:02:00Z", 120),
        (M1, "2024-05-06T13:50:00Z", None, 600),
    ]
    assert events[-1]["open"] is True
    assert events[1]["id"] == B and events[1]["state"] == "fault"
    assert events[3]["planned_s"] == 1200  # 50 min minus the 30 min break
    assert all(e["reason"] is None for e in events)
    long_only = get(operator, "/api/v1/downtime", asset=LINE, min_s="120")
    assert [e["duration_s"] for e in long_only] == [1200, 2100, 3000, 120, 600]


def test_operator_codes_a_reason_and_reads_it_back(
    operator: TestClient, settings: ApiSettings
) -> None:
    put = operator.put(f"/api/v1/downtime/{B}", json={"reason": "belt-break", "comment": "belt 3"})
    assert put.status_code == 200, put.text
    assert put.json()["reason"]["code"] == "belt-break"
    # Coding again replaces the first answer.
    again = operator.put(f"/api/v1/downtime/{B}", json={"reason": "12", "comment": "no yarn"})
    assert again.status_code == 200, again.text
    # A new app over the same files (e.g. after a restart) reads the coding back.
    with api_client(create_app(settings), Role.VIEWER) as viewer:
        events = {e["id"]: e for e in get(viewer, "/api/v1/downtime", asset=M1)}
    reason = events[B]["reason"]
    assert isinstance(reason, dict)
    assert (reason["code"], reason["name"], reason["category"]) == ("12", "No yarn", "external")
    assert reason["comment"] == "no yarn"
    assert reason["coded_by"] == "test-operator"
    assert sum(1 for e in events.values() if e["reason"] is not None) == 1


def test_pareto_totals_equal_the_events(operator: TestClient) -> None:
    for eid, reason in ((B, "belt-break"), (D, "changeover"), (F, "belt-break")):
        assert operator.put(f"/api/v1/downtime/{eid}", json={"reason": reason}).status_code == 200
    buckets = get(operator, "/api/v1/downtime/pareto", asset=LINE)
    assert [(b["reason"], b["seconds"], b["count"]) for b in buckets] == [
        ("changeover", 3000, 1),
        ("belt-break", 2100 + 120, 2),
        (None, 600 + 60 + 600, 3),
    ]
    events = get(operator, "/api/v1/downtime", asset=LINE)
    assert sum(float(str(b["seconds"])) for b in buckets) == sum(
        float(str(e["window_s"])) for e in events
    )
    assert sum(int(str(b["count"])) for b in buckets) == len(events)


def test_catalogue_is_listed(operator: TestClient) -> None:
    response = operator.get("/api/v1/downtime/reasons", params={"site": "plant"})
    assert response.status_code == 200, response.text
    assert {r["code"]: r["category"] for r in response.json()} == {
        "belt-break": "breakdown",
        "changeover": "setup",
        "12": "external",
    }
    assert operator.get("/api/v1/downtime/reasons", params={"site": "elsewhere"}).status_code == 404


@pytest.mark.parametrize(
    ("event", "body", "status", "message"),
    [
        (event_id(M1, to_ns(at(7, 30))), {"reason": "belt-break"}, 404, "no stop event"),
        ("plant.assembly.line-1.m9@1", {"reason": "belt-break"}, 404, "no machine"),
        ("not-an-id", {"reason": "belt-break"}, 404, "not a downtime event id"),
        (B, {"reason": "gremlins"}, 422, "not in the reason catalogue"),
        (B, {"comment": "why?"}, 422, "reason"),
        (B, {"reason": "belt-break", "who": "me"}, 422, "who"),
    ],
)
def test_bad_codings_are_refused_with_a_message(
    operator: TestClient, event: str, body: dict[str, str], status: int, message: str
) -> None:
    response = operator.put(f"/api/v1/downtime/{event}", json=body)
    assert response.status_code == status, response.text
    assert message in response.text


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"asset": "plant/assembly/line-9"}, 404, "no line"),
        ({"asset": "Plant"}, 422, "asset path"),
        ({"asset": LINE, "from": "yesterday"}, 422, "ISO 8601"),
        ({"asset": LINE, "min_s": "-1"}, 422, "min_s"),
        ({"asset": LINE, "from": SHIFT["to"], "to": SHIFT["from"]}, 422, "must be before"),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/downtime", "/api/v1/downtime/pareto"])
def test_bad_queries_are_refused_with_a_message(
    operator: TestClient, path: str, params: dict[str, str], status: int, message: str
) -> None:
    response = operator.get(path, params={**SHIFT, **params})
    assert response.status_code == status, response.text
    assert message in response.text


def test_a_viewer_reads_but_cannot_code(settings: ApiSettings) -> None:
    with api_client(create_app(settings), Role.VIEWER) as viewer:
        assert viewer.get("/api/v1/downtime", params={**SHIFT, "asset": LINE}).status_code == 200
        response = viewer.put(f"/api/v1/downtime/{B}", json={"reason": "belt-break"})
    assert response.status_code == 403, response.text
    assert "operator" in response.json()["detail"]
