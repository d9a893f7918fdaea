"""The simulation block of factory.yaml: every problem is one ConfigError naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from devices import SimSettings, load_simulation
from devices.config import device_state_codes
from karkhana.config.factory import FactoryConfig
from karkhana.config.loading import read_yaml
from karkhana.errors import ConfigError
from karkhana.models import MachineState

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "factory.yaml"
LOOM1 = "lahore/weaving/line-1/loom-01"


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = read_yaml(EXAMPLE)
    return data


def _load(raw: dict[str, Any]) -> None:
    load_simulation(FactoryConfig.model_validate(raw), "f.yaml")


def test_example_is_valid_with_defaults() -> None:
    raw = _raw()
    sim = load_simulation(FactoryConfig.model_validate(raw), "f.yaml")
    assert sim.seed == 7
    assert sim.machines[LOOM1].speed_factor == 0.95
    assert sim.machines["lahore/weaving/line-1/loom-02"].speed_factor == 0.9
    assert sim.power_outages[0].start.hour == 11 and sim.power_outages[0].duration_min == 12


@pytest.mark.parametrize(
    ("change", "key_path", "problem"),
    [
        (lambda s: s.update(sed=1), "simulation.sed", "unknown key"),
        (
            lambda s: s["machines"][LOOM1].update(speedfactor=1),
            f"simulation.machines.{LOOM1}.speedfactor",
            "unknown key",
        ),
        (
            lambda s: s["machines"][LOOM1].update(reject_rate=2),
            f"simulation.machines.{LOOM1}.reject_rate",
            "less than or equal to 1",
        ),
        (
            lambda s: s["machines"][LOOM1].pop("port"),
            f"simulation.machines.{LOOM1}",
            "needs a 'port'",
        ),
        (
            lambda s: s["machines"][LOOM1].update(device="profinet"),
            f"simulation.machines.{LOOM1}.device",
            "opcua",
        ),
        (
            lambda s: s["power_outages"].append({"start": "25:00", "duration_min": 5}),
            "simulation.power_outages[1].start",
            "HH:MM",
        ),
        (lambda s: s.update(broker="tcp://x"), "simulation.broker", "mqtt://"),
        (
            lambda s: s["machines"]["lahore/weaving/line-1/loom-02"].update(port=4841),
            "simulation",
            "port 4841",
        ),
    ],
)
def test_bad_values_name_the_key(change: Any, key_path: str, problem: str) -> None:
    raw = _raw()
    change(raw["simulation"])
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert info.value.key_path == key_path
    assert problem in info.value.problem
    assert str(info.value).startswith("f.yaml: ")


def test_missing_machine_is_named() -> None:
    raw = _raw()
    del raw["simulation"]["machines"]["lahore/dyeing/line-1/dryer-01"]
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert "lahore/dyeing/line-1/dryer-01" in info.value.problem


def test_unknown_machine_is_refused() -> None:
    raw = _raw()
    raw["simulation"]["machines"]["lahore/weaving/line-1/loom-09"] = {
        "device": "opcua",
        "port": 4849,
    }
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert info.value.key_path == "simulation.machines.lahore/weaving/line-1/loom-09"


def test_short_stops_must_stay_below_the_threshold() -> None:
    raw = _raw()
    # loom-03 has short_stop_threshold_s 90: stops up to 1.5 x 60 s = 90 s are not short.
    raw["simulation"]["machines"]["lahore/weaving/line-1/loom-03"]["short_stop_s"] = 60
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert info.value.key_path.endswith("loom-03.short_stop_s")


def test_state_map_without_a_needed_code_is_refused() -> None:
    raw = _raw()
    raw["state_maps"]["loom-plc"] = {1: "running", 2: "idle", 0: "off"}
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert "fault" in info.value.problem and "setup" in info.value.problem


def test_no_simulation_block() -> None:
    raw = _raw()
    del raw["simulation"]
    with pytest.raises(ConfigError) as info:
        _load(raw)
    assert info.value.key_path == "simulation"


def test_device_codes_are_the_inverted_state_map() -> None:
    factory = FactoryConfig.model_validate(_raw())
    loom = factory.machine(LOOM1)
    dryer = factory.machine("lahore/dyeing/line-1/dryer-01")
    assert device_state_codes(loom, "opcua")[MachineState.FAULT] == 4
    assert device_state_codes(dryer, "mqtt")[MachineState.RUNNING] == "RUN"
    assert device_state_codes(dryer, "mqtt")[MachineState.SETUP] == "CHANGEOVER"


def test_settings_refuse_naive_start_and_bad_speed() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        SimSettings.model_validate({"start": "2024-05-06T01:00:00"})
    with pytest.raises(ValueError):
        SimSettings(speed=0)
    ok = SimSettings.model_validate({"start": "2024-05-06T01:00:00Z", "speed": 480})
    assert ok.start is not None and ok.start.utcoffset() is not None


def test_raw_dict_not_mutated() -> None:
    raw = _raw()
    before = copy.deepcopy(raw)
    _load(raw)
    assert raw == before
