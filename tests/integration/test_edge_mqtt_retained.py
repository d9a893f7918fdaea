"""An MQTT source with several topic filters on a broker that delivers retained messages
before it answers the next SUBSCRIBE (amqtt, the demo's embedded broker).

amqtt sends a filter's retained messages right after its SUBACK and handles the client's
next packet only once they are acknowledged (or after 5 s). The source acknowledges a
message once its sample is in the disk buffer, which starts after subscribing; one
SUBSCRIBE per filter therefore stalled for amqtt's 5 s timeout, and the broker logged a
"Timeout waiting for PUBACK" traceback per retained message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiomqtt
import pytest

from edge import EdgeAgent, EdgeConfig
from karkhana.demo.broker import EmbeddedBroker
from tests.helpers.servers import async_wait_until, free_port

pytestmark = pytest.mark.integration

AMQTT_PUBACK_TIMEOUT_S = 5.0
"""amqtt's fixed wait for a PUBACK (amqtt/mqtt/protocol/handler.py)."""


async def test_retained_messages_of_every_filter_are_read_and_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="amqtt")
    retained = {
        "sensors/dryer-01/speed": 12.5,
        "sensors/dryer-01/temperature": 81.0,
        "plant/dryer-01/power": 40.25,
        "plant/dryer-01/energy": 1200.0,
    }
    async with EmbeddedBroker(port=free_port()) as broker:
        async with aiomqtt.Client(broker.host, broker.port, identifier="retained-sensors") as c:
            for topic, value in retained.items():
                body = {"value": value, "ts": "2024-05-01T06:00:00Z"}
                await c.publish(topic, json.dumps(body), qos=1, retain=True)
        config = EdgeConfig.model_validate(
            {
                "agent_id": "retained-edge",
                "uplink": {"broker": broker.url},
                "buffer": {"path": str(tmp_path / "buffer.sqlite")},
                "sources": [
                    {
                        "type": "mqtt",
                        "name": "sensors",
                        "broker": broker.url,
                        "topics": [
                            {
                                "topic": "sensors/{machine}/{signal}",
                                "asset": "lahore/dyeing/line-1/{machine}",
                                "signal": "{signal}",
                            },
                            {
                                "topic": "plant/{machine}/{signal}",
                                "asset": "lahore/dyeing/line-1/{machine}",
                                "signal": "{signal}",
                            },
                        ],
                    }
                ],
            }
        )
        async with EdgeAgent(config) as agent:
            await async_wait_until(
                lambda: agent.stats.sources["sensors"].samples_read == len(retained),
                30,
                "every retained message read",
            )
            # Long enough for amqtt to give up on any PUBACK it still waits for.
            await asyncio.sleep(AMQTT_PUBACK_TIMEOUT_S + 1)
            assert agent.stats.sources["sensors"].connected
    timeouts = [
        r.getMessage() for r in caplog.records if "Timeout waiting for PUBACK" in r.getMessage()
    ]
    assert not timeouts
