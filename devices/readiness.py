"""Hold the simulated clock until an edge agent reports every source connected, so a run
started from separate processes loses nothing to start-up order."""

from __future__ import annotations

import json
import logging

import aiomqtt

from karkhana.errors import ConnectionFailed
from karkhana.mqtt_url import parse_broker_url
from karkhana.topics import edge_status

log = logging.getLogger(__name__)


def _ready(payload: bytes | bytearray) -> bool:
    try:
        status = json.loads(payload)
    except ValueError:
        return False
    return (
        isinstance(status, dict) and status.get("state") == "online" and status.get("ready") is True
    )


async def wait_for_agent(broker: str, agent_id: str) -> None:
    """Return once the agent's retained status says online with all sources connected."""
    url = parse_broker_url(broker)
    host, port = url.host, url.port
    topic = edge_status(agent_id)
    log.info("waiting for edge agent %r to report ready on %s", agent_id, topic)
    try:
        async with aiomqtt.Client(host, port, identifier=f"karkhana-sim-wait-{agent_id}") as client:
            await client.subscribe(topic, qos=1)
            async for message in client.messages:
                if isinstance(message.payload, bytes | bytearray) and _ready(message.payload):
                    log.info("edge agent %r is ready; starting the clock", agent_id)
                    return
    except aiomqtt.MqttError as exc:
        raise ConnectionFailed(f"cannot watch {topic} on {broker}: {exc}") from exc
