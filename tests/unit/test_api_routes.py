"""The HTTP API over a real SQLite store in a tmp dir (in-process client)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from karkhana.errors import ConfigError
from services.api import ApiSettings, create_app
from tests.helpers.api import api_client
from tests.helpers.store_builders import Row, write_factory, write_samples

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
M3 = "plant/assembly/line-2/m3"
DAY = datetime(2024, 5, 6, tzinfo=UTC)
SHIFT_START, SHIFT_END = "2024-05-06T06:00:00Z", "2024-05-06T14:00:00Z"


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm, second=ss)


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml",
        site_name="Test plant",
        machines={
            M1: {"ideal_cycle_s": 1.0, "name": "Press 1"},
            M2: {"ideal_cycle_s": 1.0, "short_stop_threshold_s": 30},
            M3: {"ideal_cycle_s": 2.0},
        },
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )


def _client(factory: Path, db: Path, max_window_days: float = 93) -> TestClient:
    settings = ApiSettings(factory=factory, db=db, max_window_days=max_window_days)
    return api_client(create_app(settings), "viewer")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """m1 runs the whole shift at ideal speed without rejects; m2 is in planned maintenance
    until 12:00, runs an hour at half speed with half the units rejected, then faults."""
    rows: list[Row] = [
        (M1, "state", at(6), 1),
        (M1, "count_total", at(6), 0),
        (M1, "count_total", at(13, 59, 59), 28_800),
        (M2, "state", at(5), "off"),
        (M2, "state", at(6), "planned_stop"),
        (M2, "state", at(12), "running"),
        (M2, "state", at(13), "fault"),
        (M2, "state", at(13, 30), 4),  # the same canonical state again, as a code
        (M2, "count_total", at(12), 0),
        (M2, "count_total", at(12, 59), 1_800),
        (M2, "count_reject", at(12), 0),
        (M2, "count_reject", at(12, 59), 900),
    ]
    path = tmp_path / "store.sqlite"
    write_samples(path, rows)
    return path


@pytest.fixture
def client(factory: Path, db: Path) -> Iterator[TestClient]:
    with _client(factory, db) as c:
        yield c


def oee(client: TestClient, **params: str) -> list[dict[str, object]]:
    query = {"from": SHIFT_START, "to": SHIFT_END, **params}
    response = client.get("/api/v1/kpi/oee", params=query)
    assert response.status_code == 200, response.text
    body: list[dict[str, object]] = response.json()
    return body


# --- health and assets -------------------------------------------------------------------


def test_health_without_store_file(factory: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-yet.sqlite"
    with _client(factory, missing) as c:
        body = c.get("/health").json()
    assert body == {"status": "ok", "store": {"path": str(missing), "exists": False, "samples": 0}}
    assert not missing.exists()  # a reader never creates the store


def test_health_with_store(client: TestClient, db: Path) -> None:
    body = client.get("/health").json()
    assert body == {"status": "ok", "store": {"path": str(db), "exists": True, "samples": 12}}


def test_asset_tree_with_latest_state(client: TestClient) -> None:
    response = client.get("/api/v1/assets")
    assert response.status_code == 200
    (site,) = response.json()["sites"]
    assert (site["id"], site["name"], site["path"], site["timezone"]) == (
        "plant",
        "Test plant",
        "plant",
        "UTC",
    )
    (area,) = site["areas"]
    assert (area["id"], area["path"]) == ("assembly", "plant/assembly")
    assert [line["path"] for line in area["lines"]] == [
        "plant/assembly/line-1",
        "plant/assembly/line-2",
    ]
    machines = {m["path"]: m for line in area["lines"] for m in line["machines"]}
    assert list(machines) == [M1, M2, M3]
    assert machines[M1]["id"] == "m1"
    assert machines[M1]["name"] == "Press 1"
    assert machines[M1]["ideal_cycle_s"] == 1.0
    assert (machines[M1]["state"], machines[M1]["state_since"]) == (
        "running",
        "2024-05-06T06:00:00Z",
    )
    # fault since 13:00, although the latest sample (13:30) repeats it
    assert (machines[M2]["state"], machines[M2]["state_since"]) == (
        "fault",
        "2024-05-06T13:00:00Z",
    )
    assert machines[M2]["short_stop_threshold_s"] == 30
    assert (machines[M3]["state"], machines[M3]["state_since"]) == (None, None)


def test_asset_tree_without_store(factory: Path, tmp_path: Path) -> None:
    with _client(factory, tmp_path / "none.sqlite") as c:
        body = c.get("/api/v1/assets").json()
    states = [
        m["state"] for line in body["sites"][0]["areas"][0]["lines"] for m in line["machines"]
    ]
    assert states == [None, None, None]


# --- OEE -----------------------------------------------------------------------------------


def test_oee_per_machine(client: TestClient) -> None:
    items = {i["asset"]: i for i in oee(client, asset="plant/assembly/line-1")}
    assert list(items) == [M1, M2]
    m1 = items[M1]
    assert (m1["availability"], m1["performance"], m1["quality"], m1["oee"]) == (1, 1, 1, 1)
    assert m1["level"] == "machine"
    assert m1["machines"] == 1
    m2 = items[M2]
    assert m2["components"] == {
        "planned_s": 7200.0,
        "run_s": 3600.0,
        "short_stop_s": 0.0,
        "down_s": {"idle": 0.0, "stopped": 0.0, "fault": 3600.0, "setup": 0.0, "off": 0.0},
        "no_data_s": 0.0,
        "planned_stop_s": 21600.0,
        "ideal_s": 1800.0,
        "total": 1800.0,
        "good": 900.0,
        "covered_s": pytest.approx(m2["components"]["covered_s"]),  # type: ignore[index]
        "window_s": 28800.0,
        "external_s": {"power_outage": 0.0},
        "maintenance_s": 0.0,
        "startup_rejects": 0,
        "failures": 1,  # the one hour in fault
        "energy_kwh": 0.0,  # no energy meter in this factory
        "mode_run_s": 0.0,  # no mode signal either
        "auto_run_s": 0.0,
        "manual_interventions": 0,
    }
    assert (m2["availability"], m2["performance"], m2["quality"]) == (0.5, 0.5, 0.5)
    assert m2["oee"] == 0.125


def test_line_rolls_up_summed_components_not_averaged_ratios(client: TestClient) -> None:
    items = oee(client, asset="plant/assembly/line-1", group_by="line")
    (line,) = items
    assert line["asset"] == "plant/assembly/line-1"
    assert line["level"] == "line"
    assert line["machines"] == 2
    # sums: planned 28800 + 7200, run 28800 + 3600, ideal 28800 + 1800, good 28800 + 900
    assert line["availability"] == pytest.approx(32_400 / 36_000)  # 0.9
    assert line["performance"] == pytest.approx(30_600 / 32_400)
    assert line["quality"] == pytest.approx(29_700 / 30_600)
    assert line["oee"] == pytest.approx(0.825)
    # the average of the machines' OEEs, (1 + 0.125) / 2, would be wrong
    assert line["oee"] != pytest.approx(0.5625)
    assert line["components"]["planned_s"] == 36_000  # type: ignore[index]


def test_site_grouped_by_line(client: TestClient) -> None:
    items = oee(client, asset="plant", group_by="line")
    assert [i["asset"] for i in items] == ["plant/assembly/line-1", "plant/assembly/line-2"]
    empty = items[1]
    # m3 has no data at all: its planned time is all no-data time, nothing is covered
    assert empty["availability"] == 0.0
    assert empty["performance"] is None
    assert empty["quality"] is None
    assert empty["oee"] is None
    assert empty["coverage"] == 0.0
    assert "no_data" in empty["flags"]  # type: ignore[operator]


def test_oee_before_the_store_exists(factory: Path, tmp_path: Path) -> None:
    with _client(factory, tmp_path / "later.sqlite") as c:
        items = oee(c, asset=M1)
    (item,) = items
    assert item["coverage"] == 0.0
    assert item["availability"] == 0.0
    assert item["components"]["no_data_s"] == 28_800  # type: ignore[index]


def test_to_defaults_to_now(client: TestClient) -> None:
    before = datetime.now(UTC)
    start = (before - timedelta(hours=1)).isoformat()
    response = client.get("/api/v1/kpi/oee", params={"asset": M1, "from": start})
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    to = datetime.fromisoformat(response.json()[0]["to"])
    assert before - timedelta(seconds=1) <= to <= after


def test_offsets_are_accepted_even_with_an_unencoded_plus(client: TestClient) -> None:
    # '+' in a raw query string decodes to a space
    url = f"/api/v1/kpi/oee?asset={M1}&from=2024-05-06T11:00:00+05:00&to=2024-05-06T19:00+05:00"
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.json()[0]["from"] == SHIFT_START
    assert response.json()[0]["to"] == SHIFT_END


# --- errors --------------------------------------------------------------------------------


def _error(client: TestClient, status: int, **params: str) -> str:
    response = client.get("/api/v1/kpi/oee", params=params)
    assert response.status_code == status, response.text
    return str(response.json()["detail"])


def test_missing_from_is_422(client: TestClient) -> None:
    detail = _error(client, 422, asset=M1)
    assert "from" in detail and "required" in detail.lower()


def test_missing_asset_is_422(client: TestClient) -> None:
    detail = _error(client, 422, **{"from": SHIFT_START})
    assert "asset" in detail


def test_invalid_timestamp_is_422(client: TestClient) -> None:
    detail = _error(client, 422, asset=M1, **{"from": "yesterday", "to": SHIFT_END})
    assert "'from'" in detail and "ISO 8601" in detail
    detail = _error(client, 422, asset=M1, **{"from": SHIFT_START, "to": "2024-13-01T00:00Z"})
    assert "'to'" in detail


def test_timestamp_without_timezone_is_422(client: TestClient) -> None:
    detail = _error(client, 422, asset=M1, **{"from": "2024-05-06T06:00:00", "to": SHIFT_END})
    assert "timezone" in detail


def test_from_not_before_to_is_422(client: TestClient) -> None:
    detail = _error(client, 422, asset=M1, **{"from": SHIFT_END, "to": SHIFT_START})
    assert "before" in detail
    detail = _error(client, 422, asset=M1, **{"from": SHIFT_START, "to": SHIFT_START})
    assert "before" in detail


def test_window_too_long_is_422(client: TestClient) -> None:
    detail = _error(
        client, 422, asset=M1, **{"from": "2024-01-01T00:00Z", "to": "2024-06-01T00:00Z"}
    )
    assert "93 days" in detail


def test_window_limit_comes_from_settings(factory: Path, db: Path) -> None:
    with _client(factory, db, max_window_days=0.25) as c:
        response = c.get(
            "/api/v1/kpi/oee", params={"asset": M1, "from": SHIFT_START, "to": SHIFT_END}
        )
    assert response.status_code == 422
    assert "0.25 days" in response.json()["detail"]


def test_bad_group_by_is_422(client: TestClient) -> None:
    detail = _error(
        client, 422, asset=M1, group_by="plant", **{"from": SHIFT_START, "to": SHIFT_END}
    )
    assert "group_by" in detail and "machine" in detail and "line" in detail


def test_group_by_line_on_a_machine_is_422(client: TestClient) -> None:
    detail = _error(
        client, 422, asset=M1, group_by="line", **{"from": SHIFT_START, "to": SHIFT_END}
    )
    assert "machine" in detail


@pytest.mark.parametrize(
    "asset", ["Plant", "plant//line-1", "plant/assembly/line-1/m1/x", "plant/", "", "pl ant"]
)
def test_malformed_asset_is_422(client: TestClient, asset: str) -> None:
    detail = _error(client, 422, asset=asset, **{"from": SHIFT_START, "to": SHIFT_END})
    assert "asset path" in detail


@pytest.mark.parametrize("asset", ["elsewhere", "plant/paint", "plant/assembly/line-1/m9"])
def test_unknown_asset_is_404(client: TestClient, asset: str) -> None:
    detail = _error(client, 404, asset=asset, **{"from": SHIFT_START, "to": SHIFT_END})
    assert asset in detail


def test_bad_factory_fails_startup_with_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "factory.yaml"
    bad.write_text("version: 1\nsites: []\n", encoding="utf-8")
    app = create_app(ApiSettings(factory=bad, db=tmp_path / "db.sqlite"))
    with pytest.raises(ConfigError, match="sites"), api_client(app):
        pass
