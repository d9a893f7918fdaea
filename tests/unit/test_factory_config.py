"""factory.yaml: the example loads, and every kind of mistake gives one clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from karkhana.config import load_factory
from karkhana.config.factory import map_state
from karkhana.errors import ConfigError
from karkhana.models import MachineState

MINIMAL = """
version: 1
sites:
  - id: plant
    timezone: Asia/Karachi
    calendar:
      shifts:
        - {name: day, start: "08:00", end: "16:00"}
    areas:
      - id: area
        lines:
          - id: line
            machines:
              - {id: m1, ideal_cycle_s: 1.0}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "factory.yaml"
    path.write_text(text)
    return path


def test_example_factory_loads(example_factory_path: Path) -> None:
    factory = load_factory(example_factory_path)
    paths = [m.path for m in factory.machines()]
    assert paths == [
        "lahore/weaving/line-1/loom-01",
        "lahore/weaving/line-1/loom-02",
        "lahore/weaving/line-1/loom-03",
        "lahore/weaving/line-1/loom-04",
        "lahore/dyeing/line-1/dryer-01",
        "lahore/dyeing/line-1/stenter-01",
    ]
    loom3 = factory.machine("lahore/weaving/line-1/loom-03")
    assert loom3.short_stop_threshold_s == 90
    assert factory.machine("lahore/weaving/line-1/loom-01").short_stop_threshold_s == 120
    # YAML 1.1 would read OFF as a boolean; state names must stay strings.
    dryer = factory.machine("lahore/dyeing/line-1/dryer-01")
    assert map_state("OFF", dryer.state_map) is MachineState.OFF
    assert map_state(4, loom3.state_map) is MachineState.FAULT
    assert map_state(4.0, loom3.state_map) is MachineState.FAULT
    assert map_state(99, loom3.state_map) is None


@pytest.mark.parametrize(
    ("mutation", "key_path", "problem"),
    [
        (("ideal_cycle_s: 1.0", "ideal_cycle_s: fast"), "ideal_cycle_s", "valid number"),
        (("ideal_cycle_s: 1.0", "ideal_cycle_s: -1"), "ideal_cycle_s", "greater than 0"),
        (("{id: m1, ", "{id: m1, colour: red, "), "colour", "unknown key"),
        (("timezone: Asia/Karachi", "timezone: Mars/Olympus"), "timezone", "unknown IANA"),
        (('start: "08:00"', 'start: "25:00"'), "start", "HH:MM"),
        (("{id: m1, ", "{id: M 1, "), "machines[0].id", "should match pattern"),
        (("    timezone: Asia/Karachi\n", ""), "sites[0].timezone", "missing"),
    ],
)
def test_bad_config_names_file_key_and_problem(
    tmp_path: Path, mutation: tuple[str, str], key_path: str, problem: str
) -> None:
    text = MINIMAL.replace(*mutation)
    assert text != MINIMAL
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_factory(path)
    message = str(info.value)
    assert str(path) in message
    assert key_path in message
    assert problem in message


def test_unknown_state_map_reference(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.replace("ideal_cycle_s: 1.0}", "ideal_cycle_s: 1, state_map: plc}")
    )
    with pytest.raises(ConfigError, match="state_map 'plc'"):
        load_factory(path)


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  - [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_factory(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_factory(tmp_path / "nope.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("ideal_cycle_s: 1.0", "ideal_cycle_s: fast"))
    result = subprocess.run(
        [sys.executable, "-m", "karkhana", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: ")
    assert "Traceback" not in result.stderr


def test_cli_accepts_good_config(example_factory_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "karkhana", "config", "check", "-c", str(example_factory_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "6 machine(s)" in result.stdout
