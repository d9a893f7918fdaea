"""edge.yaml ``type: modbus`` sources: defaults, and one clear error naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import load_edge_config
from edge.modbus_config import ModbusSourceConfig
from karkhana.errors import ConfigError

LOOM = "lahore/weaving/line-1/loom-01"


def good() -> dict[str, Any]:
    return {
        "agent_id": "lahore-edge-1",
        "uplink": {"broker": "mqtt://127.0.0.1:1883"},
        "sources": [
            {
                "type": "modbus",
                "name": "loom-01",
                "host": "192.168.1.20",
                "registers": [
                    {"asset": LOOM, "signal": "state", "table": "holding", "address": 0},
                    {
                        "asset": LOOM,
                        "signal": "temperature",
                        "table": "input",
                        "address": 8,
                        "type": "float32",
                        "word_order": "little",
                        "unit": "degC",
                    },
                    {
                        "asset": LOOM,
                        "signal": "running",
                        "table": "coil",
                        "address": 3,
                        "type": "bool",
                    },
                ],
            }
        ],
    }


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_edge_config(path)


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, good())
    src = cfg.sources[0]
    assert isinstance(src, ModbusSourceConfig)
    assert (src.port, src.unit_id, src.poll_interval_ms, src.timeout_ms) == (502, 1, 1000, 1000)
    assert src.heartbeat is None
    state, temperature, running = src.registers
    assert (state.type, state.byte_order, state.word_order) == ("uint16", "big", "big")
    assert (state.scale, state.offset, state.unit) == (1.0, 0.0, None)
    assert (temperature.type, temperature.word_order, temperature.count) == ("float32", "little", 2)
    assert running.is_bit


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = data
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "key_path", "reason"),
    [
        ("sources.0.registers.0.address", 65536, "sources[0].registers[0].address", "65535"),
        ("sources.0.registers.0.address", -1, "sources[0].registers[0].address", "0"),
        ("sources.0.registers.0.type", "bool", "sources[0].registers[0].type", "coil and discrete"),
        ("sources.0.registers.2.type", "uint16", "sources[0].registers[2].type", "must be bool"),
        ("sources.0.registers.0.table", "holdings", "sources[0].registers[0].table", "holding"),
        ("sources.0.registers.0.type", "int64", "sources[0].registers[0].type", "int16"),
        ("sources.0.registers.0.byte_order", "middle", "sources[0].registers[0].byte_order", "big"),
        ("sources.0.registers.0.scale", 0, "sources[0].registers[0].scale", "must not be 0"),
        ("sources.0.registers.0.signal", "State", "sources[0].registers[0].signal", "pattern"),
        ("sources.0.registers.0.asset", "loom-01", "sources[0].registers[0].asset", "pattern"),
        ("sources.0.registers.0.bit", 3, "sources[0].registers[0].bit", "unknown key"),
        ("sources.0.unit_id", 256, "sources[0].unit_id", "255"),
        ("sources.0.port", 0, "sources[0].port", "1"),
        ("sources.0.poll_interval_ms", 1, "sources[0].poll_interval_ms", "10"),
        ("sources.0.heartbeat", 0, "sources[0].heartbeat", "1"),
        ("sources.0.host", "modbus://plc:502", "sources[0].host", "no URL"),
        ("sources.0.registers", [], "sources[0].registers", "at least 1"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, path: str, value: Any, key_path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, _set(good(), path, value))
    err = info.value
    assert err.key_path == key_path
    assert reason in err.problem
    assert str(tmp_path / "edge.yaml") in str(err)


def test_32_bit_value_at_the_last_address(tmp_path: Path) -> None:
    data = good()
    _set(data, "sources.0.registers.1.address", 65535)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert info.value.key_path == "sources[0].registers[1].type"
    assert "two registers" in info.value.problem
    _set(data, "sources.0.registers.1.address", 65534)  # 65534 + 65535: fits
    load(tmp_path, data)


def test_bool_takes_no_scale(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, _set(good(), "sources.0.registers.2.scale", 2.0))
    assert info.value.key_path == "sources[0].registers[2]"
    assert "do not apply to bool" in info.value.problem


def test_signal_mapped_twice_in_one_source(tmp_path: Path) -> None:
    data = good()
    data["sources"][0]["registers"].append(
        {"asset": LOOM, "signal": "state", "table": "input", "address": 40}
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert info.value.key_path == "sources[0]"
    assert "registers[0] and registers[3]" in info.value.problem


def test_signal_mapped_by_modbus_and_opcua(tmp_path: Path) -> None:
    data = good()
    data["sources"].append(
        {
            "type": "opcua",
            "name": "loom-01-ua",
            "endpoint": "opc.tcp://127.0.0.1:4841/karkhana/sim/",
            "nodes": [{"node_id": "ns=2;s=loom-01.StateCode", "asset": LOOM, "signal": "state"}],
        }
    )
    data["sources"].reverse()
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert "mapped twice" in info.value.problem
    assert "loom-01 holding 0" in info.value.problem


def test_unknown_source_type_lists_modbus(tmp_path: Path) -> None:
    data = copy.deepcopy(good())
    data["sources"][0]["type"] = "profinet"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert "modbus" in info.value.problem


# --- timestamp blocks ---------------------------------------------------------------------


def _with_timestamp(index: int, timestamp: dict[str, Any]) -> dict[str, Any]:
    data = good()
    data["sources"][0]["registers"][index]["timestamp"] = timestamp
    return data


def test_timestamp_defaults_and_sharing(tmp_path: Path) -> None:
    data = _with_timestamp(0, {"address": 20})
    data["sources"][0]["registers"][1]["table"] = "holding"
    data["sources"][0]["registers"][1]["timestamp"] = {"address": 20}  # one device clock
    src = load(tmp_path, data).sources[0]
    state, temperature, running = src.registers
    assert state.timestamp is not None and temperature.timestamp == state.timestamp
    ts = state.timestamp
    assert (ts.address, ts.type, ts.unit, ts.word_order, ts.count) == (20, "uint32", "s", "big", 2)
    assert running.timestamp is None


def test_timestamp_in_input_registers(tmp_path: Path) -> None:
    data = _with_timestamp(1, {"address": 0, "type": "uint64", "unit": "us"})
    (src,) = load(tmp_path, data).sources
    ts = src.registers[1].timestamp
    assert ts is not None and (ts.type, ts.unit, ts.count) == ("uint64", "us", 4)


@pytest.mark.parametrize(
    ("index", "timestamp", "key_path", "reason"),
    [
        (2, {"address": 10}, "", "only holding and input"),
        (0, {"address": 10, "type": "uint16"}, ".timestamp.type", "uint32"),
        (0, {"address": 10, "unit": "ns"}, ".timestamp.unit", "'ms'"),
        (0, {"address": 10, "word_order": "middle"}, ".timestamp.word_order", "big"),
        (0, {"address": 65535}, ".timestamp", "last Modbus address"),
        (0, {"address": 65533, "type": "uint64"}, ".timestamp", "65533 to 65536"),
        (0, {"address": -1}, ".timestamp.address", "0"),
        (0, {"address": 10, "table": "input"}, ".timestamp.table", "unknown key"),
        (0, {"unit": "ms"}, ".timestamp.address", "missing"),
        (0, {"address": 0}, "", "overlap the value's own registers 0-0"),
        (1, {"address": 9}, "", "overlap the value's own registers 8-9"),
        (1, {"address": 6, "type": "uint64"}, "", "6-9 overlap"),
    ],
)
def test_bad_timestamps_name_the_key(
    tmp_path: Path, index: int, timestamp: dict[str, Any], key_path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, _with_timestamp(index, timestamp))
    err = info.value
    assert err.key_path == f"sources[0].registers[{index}]{key_path}"
    assert reason in err.problem
    assert str(tmp_path / "edge.yaml") in str(err)


def test_a_shared_timestamp_must_be_described_once(tmp_path: Path) -> None:
    data = _with_timestamp(0, {"address": 20, "unit": "ms", "type": "uint64"})
    data["sources"][0]["registers"][1]["table"] = "holding"
    data["sources"][0]["registers"][1]["timestamp"] = {"address": 20, "unit": "s"}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data)
    assert info.value.key_path == "sources[0]"
    assert "holding 20" in info.value.problem
    assert "registers[0] and registers[1]" in info.value.problem
    # The same address in another table is another timestamp.
    data["sources"][0]["registers"][1]["table"] = "input"
    load(tmp_path, data)
