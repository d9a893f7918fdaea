"""deploy/edge/run_edge.py: how the compose deployment completes an edge.yaml."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from edge.config import load_edge_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "EDGE_UPLINK_BROKER": "mqtt://mosquitto:1883",
    "KARKHANA_EDGE_AGENT_ID": "lahore-edge-1",
    "MQTT_EDGE_PASSWORD": "edge-password-from-test",
    "EDGE_SENSOR_BROKER": "",
}


def run_edge() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_edge", ROOT / "deploy/edge/run_edge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "edge.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_example_config_gets_the_uplink_login_and_stays_valid(tmp_path: Path) -> None:
    rendered = run_edge().render(example(), ENV, "examples/edge.yaml")
    assert rendered["uplink"]["broker"] == "mqtt://mosquitto:1883"
    assert rendered["uplink"]["username"] == "lahore-edge-1"  # the ACL's user name
    assert rendered["uplink"]["password"] == "edge-password-from-test"
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(rendered))
    config = load_edge_config(path)  # the agent's own validation
    assert config.agent_id == "lahore-edge-1"
    assert len(config.sources) == len(example()["sources"])


def test_sensor_broker_replaces_only_sources_that_read_the_uplink() -> None:
    config = example()
    config["sources"].append(
        {"type": "mqtt", "name": "other", "broker": "mqtt://10.0.0.5:1883", "topics": []}
    )
    env = {**ENV, "EDGE_SENSOR_BROKER": "mqtt://127.0.0.1:1883"}
    rendered = run_edge().render(config, env, "edge.yaml")
    brokers = {s["name"]: s.get("broker") for s in rendered["sources"] if s["type"] == "mqtt"}
    assert brokers == {"sim-sensors": "mqtt://127.0.0.1:1883", "other": "mqtt://10.0.0.5:1883"}
    without = run_edge().render(example(), ENV, "edge.yaml")
    assert [s.get("broker") for s in without["sources"] if s["type"] == "mqtt"] == [None]


def test_agent_id_other_than_the_broker_user_is_refused() -> None:
    with pytest.raises(SystemExit, match="agent_id: 'lahore-edge-1' differs from"):
        run_edge().render(example(), {**ENV, "KARKHANA_EDGE_AGENT_ID": "edge-9"}, "edge.yaml")
