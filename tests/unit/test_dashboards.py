"""The committed Grafana dashboards: up to date with their generator, loadable into Grafana's
dashboard model (grafana-foundation-sdk), and wired to the provisioned InfluxQL data source.

That every query runs against the store schema is checked against a real InfluxDB fed by
the platform in ``tests/e2e/test_dashboards.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from karkhana.grafana import DASHBOARDS, DATASOURCE_UID, render

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboards"
PROVISIONING = DASHBOARD_DIR / "provisioning"
ASSET_BOARDS = {"karkhana-overview", "karkhana-machine", "karkhana-losses", "karkhana-energy"}


def committed(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return board


def test_the_committed_files_are_what_the_generator_writes() -> None:
    on_disk = {p.name for p in DASHBOARD_DIR.glob("*.json")}
    assert on_disk == set(DASHBOARDS), "run: python -m karkhana.grafana"
    for name, build in DASHBOARDS.items():
        text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert text == render(build), f"{name} is stale; run: python -m karkhana.grafana"


def lost_keys(original: Any, loaded: Any, path: str = "") -> list[str]:
    """Keys and values of ``original`` that the model did not keep."""
    if isinstance(original, dict):
        if not isinstance(loaded, dict):
            return [f"{path}: {type(loaded).__name__} instead of an object"]
        out: list[str] = []
        for key, value in original.items():
            if key not in loaded:
                out.append(f"{path}/{key}")
            else:
                out += lost_keys(value, loaded[key], f"{path}/{key}")
        return out
    if isinstance(original, list):
        if not isinstance(loaded, list) or len(loaded) != len(original):
            return [f"{path}: list changed"]
        return [m for i, (a, b) in enumerate(zip(original, loaded, strict=True)) for m in
                lost_keys(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if original == loaded else [f"{path}: {original!r} -> {loaded!r}"]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.to_json()))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_dashboard_loads_into_grafanas_dashboard_model(name: str) -> None:
    register_default_plugins()
    board = committed(name)
    model = Dashboard.from_json(board)
    assert not lost_keys(board, _plain(model.to_json()))
    assert model.schema_version == board["schemaVersion"] >= 36
    assert model.uid == name.removesuffix(".json")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_are_placed_and_query_the_provisioned_influxql_source(name: str) -> None:
    board = committed(name)
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        assert panel["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["rawQuery"] is True
            assert target["resultFormat"] in ("time_series", "table")
            query = target["query"]
            assert query.startswith("SELECT ") and "$timeFilter" in query, query
            if "GROUP BY time(" in query:
                assert "time($__interval)" in query, query


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_asset_dashboards_filter_on_site_line_and_machine(name: str) -> None:
    board = committed(name)
    uid = board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for v in variables.values():
        assert v["query"].startswith("SHOW TAG VALUES FROM ")
        assert v["datasource"]["uid"] == DATASOURCE_UID
    if uid not in ASSET_BOARDS:
        return
    expected = ["site", "area", "line"] + ([] if uid == "karkhana-overview" else ["machine"])
    assert list(variables) == expected
    if uid == "karkhana-machine":
        assert variables["machine"]["multi"] is False
    for panel in board["panels"]:
        for target in panel["targets"]:
            for level in expected:
                assert re.search(rf'"{level}" =~ /\^\${level}\$/', target["query"]), (
                    f"{panel['title']} does not filter on ${level}"
                )


def test_provisioning_names_the_datasource_the_dashboards_use_and_holds_no_secret() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert (ds["uid"], ds["type"], ds["jsonData"]["version"]) == (
        DATASOURCE_UID,
        "influxdb",
        "InfluxQL",
    )
    # Every connection value comes from the environment.
    assert ds["url"] == "${KARKHANA_INFLUX_URL}"
    assert ds["jsonData"]["dbName"] == "${KARKHANA_INFLUX_DB}"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${KARKHANA_INFLUX_TOKEN}"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "karkhana.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
