"""The agent's Prometheus counters move with the events they count.

One agent on a real mosquitto reads JSON sensors (a deadbanded speed, a state code with a
state map) and a Sparkplug B group, and has an OPC UA source whose PLC is not there. The
expected counts follow from what the test publishes and configures; the rebirth requests
are also counted on the broker.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sparkplub_b_packets.core.sparkplug_b import MetricDataType as T

from edge import EdgeAgent, EdgeConfig
from tests.helpers.servers import Mosquitto, async_wait_until, free_port
from tests.integration.test_edge_agent import T0, publish, sensor
from tests.integration.test_edge_faults import metric
from tests.integration.test_edge_sparkplug import T0_MS, collecting, rebirths, spb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

AGENT = "metrics-edge"
DYER = "lahore/dyeing/line-1/dyer-01"
NCMD = "spBv1.0/textile/NCMD/gw-9"

SENSORS: dict[str, Any] = {
    "type": "mqtt",
    "name": "sensors",
    "topics": [
        {
            "topic": "sensors/dyeing/{machine}/speed",
            "asset": "lahore/dyeing/line-1/{machine}",
            "signal": "speed",
            "value_path": "value",
            "ts_path": "ts",
            "deadband": 5.0,
        },
        {
            "topic": "sensors/dyeing/{machine}/state",
            "asset": "lahore/dyeing/line-1/{machine}",
            "signal": "state",
            "value_path": "value",
            "ts_path": "ts",
            "state_map": {1: "running", 2: "stopped"},
        },
    ],
}
SPARKPLUG: dict[str, Any] = {
    "type": "mqtt",
    "name": "spb",
    "topics": [
        {
            "topic": "spBv1.0/textile/#",
            "format": "sparkplug_b",
            "asset": "lahore/dyeing/line-1/{device}",
            "signal": "{metric}",
        }
    ],
}


async def test_counters_move_with_suppressed_unmapped_rebirth_and_failed_connects(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    absent_plc = {
        "type": "opcua",
        "name": "absent-plc",
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/nobody/",
        "keepalive_ms": 500,
        "nodes": [{"node_id": "ns=2;s=x", "asset": DYER, "signal": "x"}],
    }
    cfg = EdgeConfig.model_validate(
        {
            "agent_id": AGENT,
            "uplink": {"broker": mosquitto.url, "keepalive_s": 5},
            "buffer": {"path": str(tmp_path / "b.sqlite"), "flush_interval_s": 0.05},
            "metrics": {"port": 0},
            "sources": [SENSORS, SPARKPLUG, absent_plc],
        }
    )
    async with (
        collecting(mosquitto, NCMD) as messages,
        EdgeAgent(cfg) as agent,
        httpx.AsyncClient(timeout=5) as http,
    ):
        assert agent.metrics is not None
        url = f"http://127.0.0.1:{agent.metrics.port}/metrics"

        async def scrape() -> str:
            response = await http.get(url)
            assert response.status_code == 200
            return response.text

        def value(text: str, name: str, **labels: str) -> float:
            return metric(text, f"karkhana_edge_{name}", agent=AGENT, **labels)

        await async_wait_until(
            lambda: (
                agent.stats.sources["sensors"].connected and agent.stats.sources["spb"].connected
            ),
            10,
            "the MQTT sources",
        )
        before = await scrape()
        assert value(before, "samples_suppressed_total", source="sensors") == 0
        assert value(before, "unmapped_states_total") == 0
        assert value(before, "sparkplug_rebirth_requests_total", source="spb") == 0

        def at(seconds: int) -> Any:
            return T0 + timedelta(seconds=seconds)

        # speed, deadband 5: 100 passes, 102 and 96 are within 5 of 100 (held), 106 passes
        # state: 1 and 2 are mapped, 7 and 9 have no entry (forwarded as they are)
        await publish(
            mosquitto,
            [
                ("sensors/dyeing/dyer-01/speed", sensor(at(0), 100)),
                ("sensors/dyeing/dyer-01/speed", sensor(at(1), 102)),
                ("sensors/dyeing/dyer-01/speed", sensor(at(2), 96)),
                ("sensors/dyeing/dyer-01/speed", sensor(at(3), 106)),
                ("sensors/dyeing/dyer-01/state", sensor(at(0), 1)),
                ("sensors/dyeing/dyer-01/state", sensor(at(1), 7)),
                ("sensors/dyeing/dyer-01/state", sensor(at(2), 2)),
                ("sensors/dyeing/dyer-01/state", sensor(at(3), 9)),
                # DATA from a node never born: the agent asks it for a rebirth
                ("spBv1.0/textile/NDATA/gw-9", spb(3, [(None, 1, T.Double, 1.0)], T0_MS)),
            ],
        )
        await async_wait_until(lambda: bool(rebirths(messages, NCMD)), 10, "the rebirth NCMD")
        await async_wait_until(
            lambda: (
                agent.stats.sources["sensors"].samples_read == 8
                and agent.stats.sources["absent-plc"].connect_failures >= 2
            ),
            10,
            "eight readings and two failed connects",
        )
        after = await scrape()
        assert value(after, "samples_suppressed_total", source="sensors") == 2
        assert value(after, "samples_suppressed_total", source="spb") == 0
        assert value(after, "unmapped_states_total") == 2
        assert value(after, "sparkplug_rebirth_requests_total", source="spb") == len(
            rebirths(messages, NCMD)
        )
        assert value(after, "sparkplug_rebirth_requests_total", source="spb") == 1
        assert value(after, "samples_read_total", source="sensors") == 8  # held ones too
        assert value(after, "source_connect_failures_total", source="absent-plc") >= 2
        assert value(after, "source_connect_failures_total", source="sensors") == 0
        assert value(after, "source_connected", source="absent-plc") == 0
        assert value(after, "source_dropped_total", source="sensors") == 0
