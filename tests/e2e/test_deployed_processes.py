"""The platform deployed as separate processes, as the README's commands run it:
`karkhana sim`, `karkhana edge run`, `karkhana gateway run` and `karkhana api run` on a real
Mosquitto. Half a simulated shift later the API's OEE equals the simulator's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.truth_check import differences, startup_reject_slack
from tests.helpers.processes import edge_config_written, karkhana_process
from tests.helpers.servers import Mosquitto, free_port, wait_for_port, wait_until

pytestmark = pytest.mark.e2e

# Tuesday 2026-11-24 06:00-10:00 Asia/Karachi: the tea break at 08:30 falls inside.
START = "2026-11-24T01:00:00Z"
END = "2026-11-24T05:00:00Z"
SPEED = 480.0
DURATION_S = 4 * 3600 / SPEED
AGENT = "lahore-edge-1"  # the agent id `karkhana sim --edge-config-out` writes


def test_separate_processes_deliver_the_ground_truth(
    tmp_path: Path, mosquitto: Mosquitto, factory_on_free_ports: Path
) -> None:
    db = tmp_path / "store.sqlite"
    api_port = free_port()
    edge_yaml = tmp_path / "edge.yaml"
    truth_path = tmp_path / "truth.json"
    gateway_args = ["gateway", "run", "--broker", mosquitto.url, "--db", str(db)]
    api_args = ["api", "run", "-c", str(factory_on_free_ports), "--db", str(db)]
    api_args += ["--port", str(api_port)]
    sim_args = [
        "sim", "-c", str(factory_on_free_ports), "--broker", mosquitto.url,
        "--start", START, "--speed", str(SPEED), "--duration", str(DURATION_S),
        "--truth-out", str(truth_path), "--edge-config-out", str(edge_yaml),
        "--wait-for-agent", AGENT,
    ]  # fmt: skip

    # The README's way to get a key: the CLI prints the secret on stdout.
    key_args = ["api", "keys", "create", "--role", "viewer", "--name", "e2e", "--db", str(db)]
    key = subprocess.run(
        [sys.executable, "-m", "karkhana", *key_args],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}

    with (
        karkhana_process(gateway_args, tmp_path, "gateway.log"),
        karkhana_process(api_args, tmp_path, "api.log"),
        karkhana_process(sim_args, tmp_path, "sim.log") as sim,
    ):
        wait_until(lambda: edge_config_written(edge_yaml), 60, "the simulator's edge.yaml")
        with karkhana_process(["edge", "run", "-c", str(edge_yaml)], tmp_path, "edge.log"):
            # The simulator holds its clock until the agent reports every source connected.
            sim.wait(timeout=240)
            assert sim.returncode == 0, (tmp_path / "sim.log").read_text()[-3000:]
            wait_for_port(api_port)
            api_url = f"http://127.0.0.1:{api_port}"
            with httpx.Client(base_url=api_url, timeout=10, headers=headers) as api:
                _wait_until_store_settles(api)
                window = {"asset": "lahore", "from": START, "to": END}
                machines = api.get("/api/v1/kpi/oee", params=window).json()
                lines = api.get("/api/v1/kpi/oee", params={**window, "group_by": "line"}).json()

    truth = json.loads(truth_path.read_text())
    assert all(m["total"] > 0 for m in truth["machines"].values())
    slack = startup_reject_slack(truth, factory_on_free_ports, db)
    problems = differences(machines, truth, "machine", slack) + differences(
        lines, truth, "line", slack
    )
    assert not problems, "\n".join(problems)


def _wait_until_store_settles(api: httpx.Client, quiet_s: float = 2.0) -> None:
    """The edge forwards its last samples after the simulator ends: wait until the store's
    sample count has stopped changing for ``quiet_s``."""
    deadline = time.monotonic() + 60
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = api.get("/health").json()["store"]["samples"]
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError("the store kept changing for 60 s")
