"""The edge.yaml mapping that reads every simulated device of a factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.config import load_simulation
from devices.modbus_plc import REGISTER_MAP, TIMESTAMP_MAP, TIMESTAMP_TYPE, TIMESTAMP_UNIT
from devices.opcua_plc import VARIABLES, endpoint_url, node_id
from karkhana.config.factory import FactoryConfig

# How often the edge polls a simulated Modbus PLC. Values carry the PLC's "changed at"
# timestamps (simulated time), but a register shows only the latest value: polling twice per
# simulator tick (10 Hz by default) sees every value a tick writes, so a state that lasts
# two ticks or more is never missed, whatever the speed of the simulated clock.
MODBUS_POLL_INTERVAL_MS = 50


def _source_names(paths: list[str]) -> dict[str, str]:
    """Machine id as the source name, the full path (with '-') where ids repeat."""
    ids = [p.rsplit("/", 1)[1] for p in paths]
    return {
        p: (i if ids.count(i) == 1 else p.replace("/", "-"))
        for p, i in zip(paths, ids, strict=True)
    }


def edge_config_for(
    factory: FactoryConfig,
    *,
    agent_id: str,
    broker: str,
    buffer_path: str,
    source: str | Path = "factory.yaml",
    sensor_broker: str | None = None,
) -> dict[str, Any]:
    """edge.yaml content reading every simulated device of ``factory``.

    OPC UA machines get one source each with all eight nodes, Modbus machines one source each
    with all eight value registers, each with its "changed at" timestamp; MQTT machines share
    one MQTT source with one topic template per machine. ``sensor_broker`` is the broker the
    sensors publish to when it is not the uplink broker.
    """
    sim = load_simulation(factory, source)
    refs = [r for r in factory.machines() if r.path in sim.machines]
    names = _source_names([r.path for r in refs])
    sources: list[dict[str, Any]] = []
    topics: list[dict[str, Any]] = []
    for ref in refs:
        entry = sim.machines[ref.path]
        if entry.device == "opcua":
            assert entry.port is not None
            nodes: list[dict[str, Any]] = []
            for name, signal, _vtype, unit in VARIABLES:
                node: dict[str, Any] = {
                    "node_id": node_id(ref.machine.id, name),
                    "asset": ref.path,
                    "signal": signal,
                }
                if unit is not None:
                    node["unit"] = unit
                nodes.append(node)
            sources.append(
                {
                    "type": "opcua",
                    "name": names[ref.path],
                    "endpoint": endpoint_url(sim.opcua_host, entry.port),
                    "publishing_interval_ms": 100,
                    "nodes": nodes,
                }
            )
        elif entry.device == "modbus":
            assert entry.port is not None
            registers: list[dict[str, Any]] = []
            for signal, (address, value_type, unit) in REGISTER_MAP.items():
                register: dict[str, Any] = {
                    "asset": ref.path,
                    "signal": signal,
                    "table": "holding",
                    "address": address,
                    "type": value_type,
                    "timestamp": {
                        "address": TIMESTAMP_MAP[signal],
                        "type": TIMESTAMP_TYPE,
                        "unit": TIMESTAMP_UNIT,
                        "word_order": "big",
                    },
                }
                if unit is not None:
                    register["unit"] = unit
                registers.append(register)
            sources.append(
                {
                    "type": "modbus",
                    "name": names[ref.path],
                    "host": sim.modbus_host,
                    "port": entry.port,
                    "unit_id": 1,
                    "poll_interval_ms": MODBUS_POLL_INTERVAL_MS,
                    "timeout_ms": 1000,
                    "registers": registers,
                }
            )
        else:
            topics.append(
                {
                    "topic": f"{entry.topic_prefix}/{{signal}}",
                    "asset": ref.path,
                    "signal": "{signal}",
                    "format": "json",
                    "value_path": "value",
                    "ts_path": "ts",
                    "quality_path": None,
                    "unit": None,
                }
            )
    if topics:
        sources.append(
            {
                "type": "mqtt",
                "name": "sim-sensors",
                "broker": sensor_broker if sensor_broker not in (None, broker) else None,
                "topics": topics,
            }
        )
    return {
        "agent_id": agent_id,
        "uplink": {
            "broker": broker,
            "client_id": None,
            "username": None,
            "password": None,
            "keepalive_s": 30,
        },
        "buffer": {"path": buffer_path, "max_batch_samples": 500, "flush_interval_s": 0.2},
        "sources": sources,
    }
