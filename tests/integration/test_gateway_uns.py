"""The UNS mirror against a real mosquitto: retained last values for a fresh subscriber."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway, GatewaySettings, NormalizedSample
from gateway.uns import UnsMirror
from tests.helpers.servers import Mosquitto, async_wait_until, wait_until

pytestmark = pytest.mark.integration

ASSET = "lahore/weaving/line-1/loom-03"
OTHER = "lahore/dyeing/line-2/jet-1"
UNS = "karkhana/v1/uns/"
TIMEOUT = 15.0


class Subscriber:
    """Collects the retained messages of ``karkhana/v1/uns/#`` (a fresh subscription)."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.retained: dict[str, list[dict[str, Any]]] = {}
        self.live: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(UNS + "#", qos=1)
        assert self._subscribed.wait(TIMEOUT)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.retain:
                self.retained.setdefault(msg.topic, []).append(json.loads(msg.payload))
            else:
                self.live.append(msg.topic)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {topic: list(values) for topic, values in self.retained.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscriber(broker: Mosquitto, client_id: str) -> Iterator[Subscriber]:
    client = Subscriber(broker, client_id)
    try:
        yield client
    finally:
        client.close()


def fresh_view(broker: Mosquitto, topics: int, name: str) -> dict[str, list[dict[str, Any]]]:
    """What a client subscribing now receives as retained messages."""
    with subscriber(broker, name) as view:
        wait_until(lambda: len(view.snapshot()) >= topics, TIMEOUT, f"{topics} retained topics")
        return view.snapshot()


def envelope(agent: str, seq: int, samples: list[dict[str, Any]]) -> bytes:
    body = {"v": 1, "agent": agent, "seq": seq, "sent": "2024-05-01T10:00:05Z", "samples": samples}
    return json.dumps(body).encode()


def sample(asset: str, signal: str, ts: str, value: object, **extra: Any) -> dict[str, Any]:
    return {"asset": asset, "signal": signal, "ts": ts, "value": value, **extra}


@asynccontextmanager
async def running(config: GatewaySettings) -> AsyncIterator[Gateway]:
    async with Gateway(config) as gateway:
        task = asyncio.create_task(gateway.run())
        try:
            await asyncio.wait_for(gateway.wait_subscribed(), TIMEOUT)
            yield gateway
        finally:
            assert not task.done(), "gateway.run() ended on its own"
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="uns-edge")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(TIMEOUT)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_gateway_mirrors_the_last_value_of_each_series(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = GatewaySettings(
        broker=mosquitto.url, db=tmp_path / "s.sqlite", client_id="gw-uns", uns_mirror=True
    )
    topic = "karkhana/v1/edge/edge-1/samples"
    async with running(config) as gateway:
        await asyncio.to_thread(
            publish,
            mosquitto,
            [
                (
                    topic,
                    envelope(
                        "edge-1",
                        1,
                        [
                            sample(ASSET, "state", "2024-05-01T10:00:00Z", 1),
                            sample(ASSET, "state", "2024-05-01T10:00:02Z", 4),
                            sample(ASSET, "temperature", "2024-05-01T10:00:01Z", 41.5, unit="degC"),
                            sample(OTHER, "state", "2024-05-01T10:00:00Z", "RUN"),
                        ],
                    ),
                ),
                # Later message, older sample: the UNS keeps the newer value.
                (topic, envelope("edge-1", 2, [sample(ASSET, "state", "2024-05-01T10:00:01Z", 2)])),
                (
                    topic,
                    envelope(
                        "edge-1",
                        3,
                        [
                            sample(
                                OTHER, "state", "2024-05-01T10:00:09Z", "ALARM", quality="uncertain"
                            )
                        ],
                    ),
                ),
            ],
        )
        await async_wait_until(lambda: gateway.stats.messages == 3, TIMEOUT, "3 messages")
        mirror = gateway.uns
        assert mirror is not None
        await async_wait_until(
            lambda: (
                mirror.stats().acknowledged == mirror.stats().published
                and mirror.stats().published >= 3
            ),
            TIMEOUT,
            "the mirror's publishes acknowledged",
        )
        view = await asyncio.to_thread(fresh_view, mosquitto, 3, "fresh-view")
    # Exactly one retained message per series, holding its newest value.
    assert view == {
        f"{UNS}{ASSET}/state": [
            {"ts": "2024-05-01T10:00:02Z", "value": 4, "quality": "good", "unit": None}
        ],
        f"{UNS}{ASSET}/temperature": [
            {"ts": "2024-05-01T10:00:01Z", "value": 41.5, "quality": "good", "unit": "degC"}
        ],
        f"{UNS}{OTHER}/state": [
            {"ts": "2024-05-01T10:00:09Z", "value": "ALARM", "quality": "uncertain", "unit": None}
        ],
    }


def test_values_offered_while_the_broker_is_down_arrive_latest_only(
    mosquitto: Mosquitto,
) -> None:
    settings = GatewaySettings(broker=mosquitto.url, client_id="gw-uns-outage")
    mirror = UnsMirror(settings, max_in_flight=1)
    mosquitto.stop()
    mirror.start()
    try:
        t0 = 1_714_557_600 * 1_000_000_000  # 2024-05-01T10:00:00Z
        for second in range(50):
            mirror.committed(
                [
                    NormalizedSample(ASSET, "power", t0 + second * 1_000_000_000, float(second)),
                    NormalizedSample(ASSET, "state", t0 + second * 1_000_000_000, second % 3),
                ]
            )
        assert mirror.stats().superseded > 90  # one publish in flight; the rest replaced
        mosquitto.start_again()
        wait_until(
            lambda: mirror.stats().acknowledged == mirror.stats().published >= 2,
            30,
            "the mirror to reconnect and publish",
        )
        view = fresh_view(mosquitto, 2, "after-outage")
    finally:
        mirror.stop()
    assert view[f"{UNS}{ASSET}/power"][-1]["value"] == 49.0
    assert view[f"{UNS}{ASSET}/state"][-1]["value"] == 49 % 3
    assert mirror.stats().published <= 4  # never one message per committed value
