"""edge.yaml validation: good files load with documented defaults, bad ones name the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import EdgeConfig, load_edge_config
from edge.config import MqttSourceConfig, OpcUaSourceConfig
from karkhana.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD: dict[str, Any] = {
    "agent_id": "lahore-edge-1",
    "uplink": {"broker": "mqtt://127.0.0.1:1883"},
    "sources": [
        {
            "type": "opcua",
            "name": "loom-01",
            "endpoint": "opc.tcp://127.0.0.1:4841/karkhana/sim/",
            "nodes": [
                {
                    "node_id": "ns=2;s=loom-01.StateCode",
                    "asset": "lahore/weaving/line-1/loom-01",
                    "signal": "state",
                }
            ],
        },
        {
            "type": "mqtt",
            "name": "dyeing-sensors",
            "topics": [
                {
                    "topic": "sensors/dyeing/{machine}/{signal}",
                    "asset": "lahore/dyeing/line-1/{machine}",
                    "signal": "{signal}",
                }
            ],
        },
    ],
}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def broken(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        node: Any = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return data


_DELETE = object()


def test_good_file_loads_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_edge_config(write(tmp_path, GOOD))
    assert isinstance(cfg, EdgeConfig)
    assert cfg.client_id == "karkhana-edge-lahore-edge-1"
    assert cfg.uplink.keepalive_s == 30
    assert cfg.buffer.max_batch_samples == 500
    assert cfg.buffer.flush_interval_s == 0.2
    assert cfg.buffer_path == tmp_path / "karkhana-data" / "edge" / "lahore-edge-1.sqlite"
    opcua, mqtt = cfg.sources
    assert isinstance(opcua, OpcUaSourceConfig) and opcua.publishing_interval_ms == 100
    assert isinstance(mqtt, MqttSourceConfig) and mqtt.broker is None
    topic = mqtt.topics[0]
    assert (topic.format, topic.value_path, topic.ts_path, topic.quality_path) == (
        "json",
        "value",
        "ts",
        None,
    )


def test_relative_buffer_path_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_edge_config(write(tmp_path, broken(buffer={"path": "data/b.sqlite"})))
    assert cfg.buffer_path == tmp_path / "data" / "b.sqlite"


def test_example_edge_yaml_is_valid() -> None:
    cfg = load_edge_config(EXAMPLES / "edge.yaml")
    assert cfg.agent_id == "lahore-edge-1"
    assert cfg.sources


@pytest.mark.parametrize(
    ("data", "key_path", "problem"),
    [
        (broken(uplink={"broker": "mqtt://h:1", "brokr": "x"}), "uplink.brokr", "unknown key"),
        (broken(buffer={"max_batch_samples": "many"}), "buffer.max_batch_samples", "integer"),
        (broken(sources__0__endpoint=_DELETE), "sources[0].endpoint", "missing"),
        (
            broken(sources__1__topics__0__topic="sensors/{machine}x/{signal}"),
            "sources[1].topics[0].topic",
            "whole level",
        ),
        (
            broken(sources__1__topics__0__topic="sensors/#/{machine}/{signal}"),
            "sources[1].topics[0].topic",
            "last level",
        ),
        (
            broken(sources__1__topics__0__topic="sensors//{machine}/{signal}"),
            "sources[1].topics[0].topic",
            "empty level",
        ),
        (
            broken(sources__1__topics__0__asset="lahore/dyeing/{line}/{machine}"),
            "sources[1].topics[0].asset",
            "{line} does not appear in topic",
        ),
        (
            broken(sources__1__topics__0__signal="{sig}"),
            "sources[1].topics[0].signal",
            "{sig} does not appear in topic",
        ),
        (
            broken(sources__1__topics__0__asset="lahore/dyeing/{machine}"),
            "sources[1].topics[0].asset",
            "site/area/line/machine",
        ),
        (
            broken(sources__1__topics__0__format="number", sources__1__topics__0__ts_path="t"),
            "sources[1].topics[0].ts_path",
            "only used with format: json",
        ),
        (broken(uplink={"broker": "tcp://127.0.0.1:1883"}), "uplink.broker", "mqtt://"),
        (broken(sources__1__broker="mqtt://:1883"), "sources[1].broker", "no host"),
        (broken(agent_id="Lahore Edge"), "agent_id", "pattern"),
        (broken(sources__0__type="profinet"), "sources[0]", "opcua, mqtt"),
        (
            broken(sources__0__nodes__0__asset="lahore/weaving/loom-01"),
            "sources[0].nodes[0].asset",
            "pattern",
        ),
        (broken(sources__0__nodes__0__node_id="ns=2;q=nope"), "sources[0].nodes[0].node_id", ""),
        (broken(sources__1__name="loom-01"), "", "used twice"),
    ],
)
def test_bad_config_names_the_key(
    tmp_path: Path, data: dict[str, Any], key_path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_edge_config(write(tmp_path, data))
    assert caught.value.key_path == key_path
    assert problem in caught.value.problem
    assert "\n" not in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_edge_config(tmp_path / "nope.yaml")
