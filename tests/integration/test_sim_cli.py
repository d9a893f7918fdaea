"""``karkhana sim`` as a process: bad input exits 2 with one line; a short run writes files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from karkhana.config.loading import read_yaml
from tests.helpers.servers import free_port

pytestmark = pytest.mark.integration

KARKHANA = str(Path(sys.executable).with_name("karkhana"))

FACTORY = """
version: 1
sites:
  - id: demo
    timezone: UTC
    calendar: {{ shifts: [{{ name: a, start: "06:00", end: "14:00" }}] }}
    areas:
      - id: hall
        lines:
          - id: line-1
            machines: [{{ id: press-01, ideal_cycle_s: 1.0 }}]
simulation:
  machines:
    demo/hall/line-1/press-01: {{ device: opcua, port: {port}{extra} }}
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KARKHANA, "sim", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize(
    ("extra", "options", "expected"),
    [
        (", speedfactor: 1", [], "simulation.machines.demo/hall/line-1/press-01.speedfactor"),
        ("", ["--speed", "fast"], "--speed"),
        ("", ["--speed", "0"], "--speed"),
        ("", ["--start", "2024-05-06T06:00"], "--start"),
        ("", ["--broker", "http://x"], "--broker"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, extra: str, options: list[str], expected: str
) -> None:
    cfg = tmp_path / "factory.yaml"
    cfg.write_text(FACTORY.format(port=free_port(), extra=extra))
    result = _run("-c", str(cfg), *options, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_short_run_writes_truth_and_edge_config(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "factory.yaml"
    cfg.write_text(FACTORY.format(port=port, extra=""))
    result = _run(
        "-c",
        str(cfg),
        "--speed",
        "600",
        "--duration",
        "1",
        "--start",
        "2024-05-06T06:00:00Z",
        "--seed",
        "5",
        "--truth-out",
        "truth.json",
        "--edge-config-out",
        "edge.yaml",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[0]
    assert f"opc.tcp://127.0.0.1:{port}/karkhana/sim/" in summary
    assert "2024-05-06T06:00:00+00:00 -> 2024-05-06T06:10:00+00:00" in summary
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["from"] == "2024-05-06T06:00:00Z" and truth["to"] == "2024-05-06T06:10:00Z"
    assert truth["seed"] == 5
    press = truth["machines"]["demo/hall/line-1/press-01"]
    assert press["calendar_planned_s"] == 600.0
    assert 0 < press["total"] < 600  # at most one unit per ideal second
    edge = read_yaml(tmp_path / "edge.yaml")
    (source,) = edge["sources"]
    assert source["endpoint"] == f"opc.tcp://127.0.0.1:{port}/karkhana/sim/"
    assert len(source["nodes"]) == 8
