"""examples/edge.yaml and edge_config_for() must describe the same devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices import edge_config_for
from karkhana.config.factory import load_factory
from karkhana.config.loading import read_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


Coverage = tuple[set[tuple[str, ...]], set[tuple[str, ...]], set[tuple[Any, ...]]]


def _coverage(cfg: dict[str, Any]) -> Coverage:
    nodes: set[tuple[str, ...]] = set()
    topics: set[tuple[str, ...]] = set()
    registers: set[tuple[Any, ...]] = set()
    for src in cfg["sources"]:
        if src["type"] == "opcua":
            for n in src["nodes"]:
                nodes.add(
                    (src["endpoint"], n["node_id"], n["asset"], n["signal"], n.get("unit") or "")
                )
        elif src["type"] == "modbus":
            for r in src["registers"]:
                ts = r.get("timestamp") or {}
                registers.add(
                    (
                        f"{src['host']}:{src['port']}",
                        src["poll_interval_ms"],
                        r["asset"],
                        r["signal"],
                        r["table"],
                        r["address"],
                        r["type"],
                        r.get("unit") or "",
                        tuple(sorted(ts.items())),
                    )
                )
        else:
            for t in src["topics"]:
                fields = ("topic", "asset", "signal", "format", "value_path", "ts_path")
                topics.add((src["broker"] or "", *(t[f] for f in fields)))
    return nodes, topics, registers


def test_example_edge_yaml_matches_the_generated_config() -> None:
    factory = load_factory(EXAMPLES / "factory.yaml")
    example = read_yaml(EXAMPLES / "edge.yaml")
    generated = edge_config_for(
        factory,
        agent_id=example["agent_id"],
        broker=example["uplink"]["broker"],
        buffer_path=example["buffer"]["path"],
        source=EXAMPLES / "factory.yaml",
    )
    assert _coverage(example) == _coverage(generated)
    assert example["uplink"] == generated["uplink"]
    assert example["buffer"] == generated["buffer"]
    assert [s["name"] for s in example["sources"]] == [s["name"] for s in generated["sources"]]


def test_generated_config_reads_every_device_signal() -> None:
    factory = load_factory(EXAMPLES / "factory.yaml")
    cfg = edge_config_for(
        factory, agent_id="a", broker="mqtt://127.0.0.1:1883", buffer_path="b.sqlite"
    )
    nodes, topics, registers = _coverage(cfg)
    # 3 looms x 8 OPC UA variables, written out by hand from the device contract.
    expected_nodes = {
        f"ns=2;s=loom-0{i}.{name}"
        for i in (1, 2, 3)
        for name in (
            "StateCode",
            "Mode",
            "TotalCount",
            "RejectCount",
            "Speed",
            "Temperature",
            "Power",
            "Energy",
        )
    }
    assert {n[1] for n in nodes} == expected_nodes
    assert ("opc.tcp://127.0.0.1:4843/karkhana/sim/", "ns=2;s=loom-03.StateCode") in {
        (n[0], n[1]) for n in nodes
    }
    assert {(t[1], t[2]) for t in topics} == {
        ("sensors/dyeing/dryer-01/{signal}", "lahore/dyeing/line-1/dryer-01"),
        ("sensors/dyeing/stenter-01/{signal}", "lahore/dyeing/line-1/stenter-01"),
    }
    # The Modbus loom: its value registers, each with its uint64 ms "changed at" timestamp,
    # written out by hand from the register map in docs/simulator.md.
    loom4 = "lahore/weaving/line-1/loom-04"
    assert {(r[3], r[5], r[6], r[7], dict(r[8])["address"]) for r in registers} == {
        ("state", 0, "uint16", "", 14),
        ("mode", 1, "uint16", "", 18),
        ("count_total", 2, "uint32", "", 22),
        ("count_reject", 4, "uint32", "", 26),
        ("speed", 6, "float32", "units/min", 30),
        ("temperature", 8, "float32", "degC", 34),
        ("power", 10, "float32", "kW", 38),
        ("energy", 12, "float32", "kWh", 42),
    }
    assert {(r[0], r[2], r[4]) for r in registers} == {("127.0.0.1:5021", loom4, "holding")}
    assert {r[8] for r in registers} == {
        (("address", a), ("type", "uint64"), ("unit", "ms"), ("word_order", "big"))
        for a in range(14, 46, 4)
    }
