"""Value mapping end to end: an in-process OPC UA server and an MQTT sensor through the
agent to a real mosquitto."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from edge import EdgeAgent
from karkhana.topics import EDGE_SAMPLES_FILTER
from tests.helpers.servers import Mosquitto, async_wait_until
from tests.integration.test_edge_agent import (
    LOOM,
    MQTT_SOURCE,
    T0,
    collecting,
    edge_config,
    plc,
    publish,
    sensor,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def mapped_opcua_source(endpoint: str) -> dict[str, Any]:
    return {
        "type": "opcua",
        "name": "loom-01",
        "endpoint": endpoint,
        "publishing_interval_ms": 100,
        "nodes": [
            {
                "node_id": "ns=2;s=loom-01.StateCode",
                "asset": LOOM,
                "signal": "state",
                "state_map": {1: "running", 3: "fault"},
            },
            {
                "node_id": "ns=2;s=loom-01.Temperature",
                "asset": LOOM,
                "signal": "temperature",
                "unit": "degC",
                "scale": 0.1,
                "deadband": 0.5,
            },
        ],
    }


async def test_opcua_node_is_scaled_deadbanded_and_state_mapped(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with plc() as p:
        await p.write("StateCode", 1, ua.VariantType.Int32, T0)
        await p.write("Temperature", 200.0, ua.VariantType.Double, T0)
        cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [mapped_opcua_source(p.endpoint)])
        async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col, EdgeAgent(cfg) as agent:
            await async_wait_until(
                lambda: bool(col.samples(LOOM, "state") and col.samples(LOOM, "temperature")),
                15,
                "initial values",
            )

            def at(seconds: int) -> Any:
                return T0 + timedelta(seconds=seconds)

            # raw tenths of a degree: 203 -> 20.3 (0.3 from 20.0: held), 206 -> 20.6
            # (0.6: passes), 208 -> 20.8 (0.2 from 20.6: held), 208 uncertain (quality
            # changed: passes)
            await p.write("Temperature", 203.0, ua.VariantType.Double, at(1))
            await p.write("Temperature", 206.0, ua.VariantType.Double, at(2))
            await p.write("Temperature", 208.0, ua.VariantType.Double, at(3))
            await p.write(
                "Temperature",
                208.0,
                ua.VariantType.Double,
                at(4),
                ua.StatusCodes.UncertainLastUsableValue,
            )
            # codes: 3 -> fault, 4 has no entry -> passes as 4
            await p.write("StateCode", 3, ua.VariantType.Int32, at(5))
            await p.write("StateCode", 4, ua.VariantType.Int32, at(6))
            await async_wait_until(
                lambda: (
                    len(col.samples(LOOM, "state")) >= 3
                    and len(col.samples(LOOM, "temperature")) >= 3
                    and agent.stats.sources["loom-01"].suppressed >= 2
                ),
                15,
                "the mapped changes",
            )
            assert col.samples(LOOM, "state") == [(T0, "running"), (at(5), "fault"), (at(6), 4)]
            temps = [s for e in col.envelopes() for s in e.samples if s.signal == "temperature"]
            assert [s.value for s in temps] == pytest.approx([20.0, 20.6, 20.8])
            assert [(s.unit, s.quality) for s in temps] == [
                ("degC", "good"),
                ("degC", "good"),
                ("degC", "uncertain"),
            ]
            assert agent.stats.sources["loom-01"].suppressed == 2
            assert agent.stats.unmapped_states == 1


async def test_mqtt_template_topic_is_mapped_per_machine(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    source = {
        **MQTT_SOURCE,
        "topics": [{**MQTT_SOURCE["topics"][0], "scale": 2.0, "offset": 1.0, "deadband": 4.0}],
    }
    cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [source])
    dyer1, dyer2 = "lahore/dyeing/line-1/dyer-01", "lahore/dyeing/line-1/dyer-02"
    async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col, EdgeAgent(cfg) as agent:
        await async_wait_until(lambda: agent.ready, 10, "agent ready")
        # each machine has its own deadband reference:
        # dyer-01: 10 -> 21 passes; 11 -> 23 held (2 <= 4); 13 -> 27 passes (6)
        # dyer-02: 11 -> 23 passes (first of its own)
        await publish(
            mosquitto,
            [
                ("sensors/dyeing/dyer-01/speed", sensor(T0, 10)),
                ("sensors/dyeing/dyer-01/speed", sensor(T0 + timedelta(seconds=1), 11)),
                ("sensors/dyeing/dyer-02/speed", sensor(T0 + timedelta(seconds=1), 11)),
                ("sensors/dyeing/dyer-01/speed", sensor(T0 + timedelta(seconds=2), 13)),
            ],
        )
        await async_wait_until(
            lambda: len(col.samples(dyer1, "speed")) >= 2 and len(col.samples(dyer2, "speed")) >= 1,
            15,
            "mapped sensor values",
        )
        await async_wait_until(
            lambda: agent.stats.sources["dyeing-sensors"].suppressed == 1, 10, "one suppressed"
        )
        assert col.samples(dyer1, "speed") == [(T0, 21.0), (T0 + timedelta(seconds=2), 27.0)]
        assert col.samples(dyer2, "speed") == [(T0 + timedelta(seconds=1), 23.0)]
