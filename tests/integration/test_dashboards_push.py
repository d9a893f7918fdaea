"""``karkhana dashboards push`` against a local server that checks every request against
Grafana's documented HTTP API (tests/helpers/grafana_api.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.grafana_api import GrafanaState, run_grafana_api
from tests.helpers.servers import free_port

ADMIN_TOKEN = "glsa_admin-token-written-by-the-test"
VIEWER_TOKEN = "glsa_viewer-token-written-by-the-test"
INFLUX_TOKEN = "influx-token-written-by-the-test"

# A dashboard with its own uid, and one exported "for sharing" (no uid, a data-source input).
OEE_DASHBOARD = {
    "uid": "karkhana-oee",
    "title": "OEE by line",
    "id": 17,
    "version": 4,
    "panels": [{"type": "timeseries", "title": "OEE", "datasource": {"uid": "karkhana-influxdb"}}],
}
SHARED_DASHBOARD = {
    "__inputs": [
        {"name": "DS_INFLUX", "type": "datasource", "pluginId": "influxdb", "label": "InfluxDB"}
    ],
    "__requires": [{"type": "datasource", "id": "influxdb"}],
    "title": "Machine states",
    "panels": [{"type": "state-timeline", "title": "State", "datasource": {"uid": "${DS_INFLUX}"}}],
}


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaState]]:
    with run_grafana_api(ADMIN_TOKEN, VIEWER_TOKEN) as server:
        yield server


@pytest.fixture
def dashboards_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "dashboards"
    directory.mkdir()
    (directory / "oee.json").write_text(json.dumps(OEE_DASHBOARD))
    (directory / "machine-states.json").write_text(json.dumps(SHARED_DASHBOARD))
    (directory / "README.md").write_text("not a dashboard")
    return directory


def push(url: str, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFANA_TOKEN", "INFLUXDB_TOKEN")}
    env["GRAFANA_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "karkhana", "dashboards", "push", "--url", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_push_creates_everything_then_changes_nothing(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    first = push(
        url,
        "--dashboards",
        str(dashboards_dir),
        "--datasource-url",
        "http://influx.plant:8086",
        "--influx-db",
        "plant",
        "--influx-token",
        INFLUX_TOKEN,
    )
    assert first.returncode == 0, first.stderr
    assert state.violations == []
    assert all(r.authorization == f"Bearer {ADMIN_TOKEN}" for r in state.requests[1:])

    assert state.folders["karkhana"]["title"] == "karkhana"
    source = state.datasources["karkhana-influxdb"]
    assert (source["type"], source["access"], source["url"]) == (
        "influxdb",
        "proxy",
        "http://influx.plant:8086",
    )
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["dbName"] == "plant"
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert state.secure["karkhana-influxdb"] == {"httpHeaderValue1": f"Token {INFLUX_TOKEN}"}

    assert set(state.dashboards) == {"karkhana-oee", "machine-states"}
    assert {e["folder"] for e in state.dashboards.values()} == {"karkhana"}
    oee = state.dashboards["karkhana-oee"]["model"]
    assert oee["title"] == "OEE by line" and oee["panels"] == OEE_DASHBOARD["panels"]
    shared = state.dashboards["machine-states"]["model"]
    assert shared["panels"][0]["datasource"] == {"uid": "karkhana-influxdb"}
    assert "__inputs" not in shared and "__requires" not in shared
    assert "folder karkhana: created" in first.stdout
    assert "dashboard karkhana-oee: created" in first.stdout

    writes_before = len(state.writes())
    second = push(
        url,
        "--dashboards",
        str(dashboards_dir),
        "--datasource-url",
        "http://influx.plant:8086",
        "--influx-db",
        "plant",
    )
    assert second.returncode == 0, second.stderr
    assert len(state.writes()) == writes_before  # nothing changed on the second run
    assert second.stdout.count(": unchanged") == 4
    assert state.violations == []


def test_changed_dashboard_is_updated_in_place(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    assert (
        push(url, "--dashboards", str(dashboards_dir), "--influx-token", INFLUX_TOKEN).returncode
        == 0
    )
    first_id = state.dashboards["karkhana-oee"]["model"]["id"]
    (dashboards_dir / "oee.json").write_text(json.dumps({**OEE_DASHBOARD, "title": "OEE (shift)"}))

    writes_before = len(state.writes())
    result = push(url, "--dashboards", str(dashboards_dir))
    assert result.returncode == 0, result.stderr
    new_writes = state.writes()[writes_before:]
    assert [(r.method, r.path) for r in new_writes] == [("POST", "/api/dashboards/db")]
    assert new_writes[0].body["overwrite"] is True
    assert new_writes[0].body["folderUid"] == "karkhana"
    stored = state.dashboards["karkhana-oee"]["model"]
    assert (stored["title"], stored["id"], stored["version"]) == ("OEE (shift)", first_id, 2)
    assert len(state.dashboards) == 2
    assert "dashboard karkhana-oee: updated" in result.stdout
    assert state.violations == []


def test_new_influx_token_replaces_the_datasource_token(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    assert (
        push(url, "--dashboards", str(dashboards_dir), "--influx-token", INFLUX_TOKEN).returncode
        == 0
    )
    result = push(url, "--dashboards", str(dashboards_dir), "--influx-token", "rotated-token")
    assert result.returncode == 0, result.stderr
    assert state.secure["karkhana-influxdb"] == {"httpHeaderValue1": "Token rotated-token"}
    assert len(state.datasources) == 1
    assert state.violations == []


def test_missing_datasource_needs_an_influx_token(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    result = push(url, "--dashboards", str(dashboards_dir))
    assert result.returncode == 2
    assert "--influx-token" in result.stderr
    assert state.datasources == {} and state.dashboards == {}


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unreachable_grafana_is_one_line_and_exit_1(dashboards_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = push(url, "--dashboards", str(dashboards_dir), "--timeout", "5")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert f"cannot reach Grafana at {url}" in line


def test_wrong_token_is_401_one_line_and_exit_1(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    result = push(url, "--dashboards", str(dashboards_dir), token="glsa_not-a-valid-token")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "401" in line and "glsa_not-a-valid-token" not in line
    assert state.writes() == []


def test_viewer_token_is_403_one_line_and_exit_1(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    result = push(url, "--dashboards", str(dashboards_dir), token=VIEWER_TOKEN)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "403" in line and "create folder" in line
    assert state.folders == {}


def test_bad_dashboard_file_is_a_config_error(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, state = grafana
    (dashboards_dir / "broken.json").write_text('{"title": "half')
    result = push(url, "--dashboards", str(dashboards_dir))
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "broken.json" in line and "not valid JSON" in line
    assert state.requests == []  # nothing is sent before every file is read


def test_duplicate_uids_are_refused(
    grafana: tuple[str, GrafanaState], dashboards_dir: Path
) -> None:
    url, _state = grafana
    (dashboards_dir / "copy.json").write_text(json.dumps({**OEE_DASHBOARD, "title": "Copy"}))
    result = push(url, "--dashboards", str(dashboards_dir))
    assert result.returncode == 2
    assert "karkhana-oee" in _one_error_line(result)


REPO_DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
BUILTIN_SOURCES = {"grafana", "-- Grafana --", "-- Dashboard --", "-- Mixed --"}


def _datasource_uids(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and isinstance(source.get("uid"), str):
            yield source["uid"]
        for value in node.values():
            yield from _datasource_uids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_uids(item)


def test_repository_dashboards_use_the_pushed_datasource() -> None:
    from services.dashboards_push import DATASOURCE_UID, load_dashboards

    dashboards = load_dashboards(REPO_DASHBOARDS)
    assert dashboards, "dashboards/ holds no dashboard JSON"
    for dashboard in dashboards:
        uids = set(_datasource_uids(dashboard.model)) - BUILTIN_SOURCES
        uids = {u for u in uids if not u.startswith("$")}  # template variables
        assert uids <= {DATASOURCE_UID}, f"{dashboard.path.name} refers to {uids}"


def test_repository_dashboards_push_and_stay_unchanged(grafana: tuple[str, GrafanaState]) -> None:
    url, state = grafana
    names = sorted(p.name for p in REPO_DASHBOARDS.glob("*.json"))
    first = push(url, "--dashboards", str(REPO_DASHBOARDS), "--influx-token", INFLUX_TOKEN)
    assert first.returncode == 0, first.stderr
    assert len(state.dashboards) == len(names)
    writes = len(state.writes())
    second = push(url, "--dashboards", str(REPO_DASHBOARDS))
    assert second.returncode == 0, second.stderr
    assert len(state.writes()) == writes
    assert state.violations == []


def test_silent_grafana_times_out_with_one_line_and_exit_1(dashboards_dir: Path) -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = push(url, "--dashboards", str(dashboards_dir), "--timeout", "0.5")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "did not answer within 0.5 s" in line


@pytest.mark.parametrize(
    ("url", "api"),
    [
        ("http://grafana:3000", "http://grafana:3000/api"),
        ("https://example.com/grafana", "https://example.com/grafana/api"),
        ("https://example.com/grafana/", "https://example.com/grafana/api"),
    ],
)
def test_url_with_a_path_prefix_reaches_the_api_below_it(url: str, api: str) -> None:
    from services.dashboards_push import GrafanaPusher

    assert GrafanaPusher(url, "t")._api.client.url == api


@pytest.mark.parametrize(
    "url", ["ftp://grafana", "http://admin:admin@grafana:3000", "http://grafana?x=1", "grafana"]
)
def test_bad_url_is_a_config_error(url: str, dashboards_dir: Path) -> None:
    result = push(url, "--dashboards", str(dashboards_dir))
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "--url" in line and "admin:admin" not in line
