"""One full simulated shift through real Mosquitto, real OPC UA servers, the edge agent, the
gateway and SQLite; the API's OEE must match the simulator's ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices.config import load_simulation
from karkhana.config.factory import load_factory
from services.api.main import ApiSettings, create_app
from tests.e2e.truth_check import differences, startup_reject_slack
from tests.helpers.api import api_client
from tests.helpers.servers import Mosquitto, free_port

pytestmark = pytest.mark.e2e

# Monday 2026-11-23, shift "a" of the example factory: 06:00-14:00 Asia/Karachi, with a tea
# break, a lunch break and the site-wide power outage at 11:40.
SHIFT_START = "2026-11-23T01:00:00Z"
SHIFT_END = "2026-11-23T09:00:00Z"
SPEED = 480.0  # 8 h in 60 s
DURATION_S = 8 * 3600 / SPEED


def test_full_shift_oee_matches_ground_truth(
    tmp_path: Path, mosquitto: Mosquitto, factory_on_free_ports: Path
) -> None:
    truth_path = tmp_path / "truth.json"
    data_dir = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "karkhana", "demo",
        "--factory", str(factory_on_free_ports),
        "--broker", mosquitto.url,
        "--port", str(free_port()),
        "--data-dir", str(data_dir),
        "--start", SHIFT_START,
        "--speed", str(SPEED),
        "--duration", str(DURATION_S),
        "--truth-out", str(truth_path),
        "--no-live",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    truth = json.loads(truth_path.read_text())
    assert truth["from"].replace("+00:00", "Z") == SHIFT_START
    assert truth["to"].replace("+00:00", "Z") == SHIFT_END

    app = create_app(ApiSettings(factory=factory_on_free_ports, db=data_dir / "karkhana.sqlite"))
    with api_client(app, "viewer") as client:
        response = client.get(
            "/api/v1/kpi/oee",
            params={"asset": "lahore", "from": SHIFT_START, "to": SHIFT_END, "group_by": "machine"},
        )
        assert response.status_code == 200, response.text
        machines = response.json()
        lines = client.get(
            "/api/v1/kpi/oee",
            params={"asset": "lahore", "from": SHIFT_START, "to": SHIFT_END, "group_by": "line"},
        ).json()
        site = client.get(
            "/api/v1/kpi/oee",
            params={"asset": "lahore", "from": SHIFT_START, "to": SHIFT_END, "group_by": "site"},
        ).json()

    for expected in truth["machines"].values():
        # The scenario must exercise the platform: every machine ran, produced and stopped.
        assert expected["total"] > 0 and expected["run_s"] > 0
        assert expected["availability"] < 0.99 and expected["quality"] < 1
    slack = startup_reject_slack(truth, factory_on_free_ports, data_dir / "karkhana.sqlite")
    # Devices that report every change carry each reject at its own time, so startup and
    # production rejects are exact there; only the polled Modbus PLC can merge rejects.
    devices = load_simulation(load_factory(factory_on_free_ports), factory_on_free_ports).machines
    for path in truth["machines"]:
        if devices[path].device != "modbus":
            assert slack[path] == 0, path
    for path, expected in truth["machines"].items():
        # The new components are exercised too: startups with rejects, an external loss.
        assert expected["startup_rejects"] > 0, path
        assert expected["losses"]["external_s"]["power_outage"] > 0, path
    assert truth["machines"]["lahore/weaving/line-1/loom-02"]["maintenance_s"] == 1800
    # The reliability and automation KPIs are exercised: breakdowns and manual setups happen.
    kpis = truth["sites"]["lahore"]["kpis"]
    assert kpis["failures"] > 0 and kpis["manual_interventions"] > 0
    assert kpis["energy_kwh"] > 0 and kpis["automation_rate"] is not None
    problems = (
        differences(machines, truth, "machine", slack)
        + differences(lines, truth, "line", slack)
        + differences(site, truth, "site", slack)
    )
    assert not problems, "\n".join(problems)
