"""``karkhana edge check`` against a real mosquitto and in-process OPC UA servers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.check import check_connections
from edge.config import EdgeConfig
from tests.helpers.servers import Mosquitto, free_port
from tests.integration.test_edge_agent import LOOM, MQTT_SOURCE, opcua_source, plc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KARKHANA = Path(sys.executable).parent / "karkhana"


def write_config(tmp_path: Path, broker: str, sources: list[dict[str, Any]]) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agent_id": "check-edge",
                "uplink": {"broker": broker},
                "buffer": {"path": str(tmp_path / "buffer.sqlite")},
                "sources": sources,
            }
        )
    )
    return path


async def run_check(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(KARKHANA),
        "edge",
        "check",
        "-c",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=config.parent,
    )
    out, err = await asyncio.wait_for(process.communicate(), 45)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def row(output: str, name: str) -> str:
    (line,) = [line for line in output.splitlines() if f" {name} " in line]
    return line


async def test_all_connections_ok_exit_0(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with plc() as p:
        config = write_config(tmp_path, mosquitto.url, [opcua_source(p, 100), MQTT_SOURCE])
        code, out, err = await run_check(config, "--timeout", "10")
    assert code == 0, out + err
    assert " ok " in row(out, "uplink")
    assert " ok " in row(out, "loom-01") and "read 2 node(s)" in row(out, "loom-01")
    assert " ok " in row(out, "dyeing-sensors")
    assert not (tmp_path / "buffer.sqlite").exists()  # a check forwards nothing


async def test_failures_are_reported_per_connection_exit_1(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    down = {
        "type": "opcua",
        "name": "plc-down",
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/",
        "nodes": [{"node_id": "ns=2;s=x", "asset": LOOM, "signal": "x"}],
    }
    async with plc() as p:
        wrong_node = opcua_source(p, 100)
        wrong_node["nodes"][1]["node_id"] = "ns=2;s=loom-01.NoSuchNode"
        config = write_config(tmp_path, mosquitto.url, [wrong_node, down])
        code, out, err = await run_check(config, "--timeout", "3")
        details = {
            r.name: r.detail
            for r in await check_connections(
                EdgeConfig.model_validate(yaml.safe_load(config.read_text())), timeout_s=3
            )
        }
    assert code == 1, out + err
    assert " ok " in row(out, "uplink")
    assert " error " in row(out, "loom-01")
    assert " error " in row(out, "plc-down")
    assert details["uplink"] == "connected"
    assert details["loom-01"] == (f"connected, but no value within 3 s for {LOOM} temperature")
    assert "refused" in details["plc-down"].lower()


async def test_unreachable_uplink_and_sensor_broker(tmp_path: Path) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    config = EdgeConfig.model_validate(
        {"agent_id": "check-edge", "uplink": {"broker": dead}, "sources": [MQTT_SOURCE]}
    )
    results = await check_connections(config, timeout_s=3)
    assert [(r.name, r.ok) for r in results] == [("uplink", False), ("dyeing-sensors", False)]
    assert all(r.target == dead and r.detail for r in results)


async def test_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        "agent_id: check-edge\nuplink: {broker: 'mqtt://127.0.0.1:1883'}\nbuffer: {max_bytes: 10}\n"
    )
    code, _out, err = await run_check(config)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(config) in line and "buffer.max_bytes" in line
