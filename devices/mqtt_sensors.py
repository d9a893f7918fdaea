"""Simulated MQTT sensor sets: JSON ``{"value": v, "ts": "...Z"}`` on ``{prefix}/{signal}``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from types import TracebackType

import aiomqtt

from devices.updates import SignalUpdate
from karkhana.errors import ConnectionFailed
from karkhana.models import MachineState, iso_utc
from karkhana.mqtt_url import parse_broker_url

log = logging.getLogger(__name__)

_BATCH = 8
MQTT_SIGNALS = ("state", "count_total", "count_reject", "speed", "temperature", "power", "energy")


class MqttHub:
    """One MQTT connection shared by every simulated sensor set (QoS 1, retained)."""

    def __init__(self, broker: str, client_id: str = "karkhana-sim") -> None:
        self.broker = broker
        url = parse_broker_url(broker)
        host, port = url.host, url.port
        self._client = aiomqtt.Client(host, port, identifier=client_id, keepalive=30)
        # One batch in flight at a time across all sensor sets (bounded, ordered).
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> MqttHub:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise ConnectionFailed(
                f"cannot connect to the MQTT broker {self.broker}: {exc}"
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish in order and wait for every PUBACK.

        Messages go out in small concurrent batches: paho sends them in call order, and a
        batch is acknowledged before the next one starts, which bounds what is in flight.
        """
        try:
            for i in range(0, len(messages), _BATCH):
                async with self._lock:
                    await asyncio.gather(
                        *(
                            self._client.publish(t, p, qos=1, retain=True)
                            for t, p in messages[i : i + _BATCH]
                        )
                    )
        except aiomqtt.MqttError as exc:
            raise ConnectionFailed(f"publishing to {self.broker} failed: {exc}") from exc


class MqttSensorSet:
    """The sensors of one machine, publishing under ``topic_prefix``."""

    def __init__(
        self, hub: MqttHub, topic_prefix: str, state_codes: dict[MachineState, int | str]
    ) -> None:
        self._hub = hub
        self.topic_prefix = topic_prefix
        self._state_codes = state_codes

    @property
    def endpoint(self) -> str:
        return f"{self._hub.broker} {self.topic_prefix}/+"

    def encode(self, update: SignalUpdate) -> tuple[str, bytes] | None:
        if update.signal not in MQTT_SIGNALS:
            return None
        value = update.value
        if update.signal == "state":
            assert isinstance(value, MachineState)
            value = self._state_codes[value]
        payload = json.dumps({"value": value, "ts": iso_utc(update.ts)})
        return f"{self.topic_prefix}/{update.signal}", payload.encode()

    async def publish(self, updates: Sequence[SignalUpdate]) -> None:
        messages = [m for m in (self.encode(u) for u in updates) if m is not None]
        if messages:
            await self._hub.publish_many(messages)
