"""Backpressure: the consumer never holds more than its bounds unacknowledged.

The writer thread takes messages from the consumer and commits them; until a batch is
committed its messages count against ``queue_max_messages`` and ``queue_max_bytes``, and the
consumer reads nothing more from the socket (the broker keeps the rest). A real mosquitto
delivers what a plain paho client published.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.consumer import MqttConsumer
from gateway.settings import GatewaySettings
from gateway.stores.base import Batch
from gateway.writer import Inbound
from tests.helpers.servers import Mosquitto, run_mosquitto

pytestmark = pytest.mark.integration

TOPIC = "karkhana/v1/edge/edge-1/samples"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as broker:
        yield broker


@contextmanager
def publisher(broker: Mosquitto) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bounds-publisher")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: mqtt.Client, payloads: list[bytes]) -> None:
    for payload in payloads:
        info = client.publish(TOPIC, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()


@asynccontextmanager
async def consumer(
    broker: Mosquitto, tmp_path: Path, early: list[Inbound] | None = None, **bounds: int
) -> AsyncIterator[MqttConsumer]:
    """A started consumer, subscribed; messages taken meanwhile (a session's redelivery
    starts right after the CONNACK) are appended to ``early`` and held."""
    settings = GatewaySettings(
        broker=broker.url, db=tmp_path / "unused.sqlite", client_id="bounds-gateway", **bounds
    )
    c = MqttConsumer(settings)
    await c.start()
    subscribed = asyncio.ensure_future(c.wait_subscribed())
    taken: list[Inbound] = []
    while not subscribed.done():  # the writer thread's part: take() connects and subscribes
        taken += await asyncio.to_thread(c.take, 0.2)
    if early is not None:
        early += taken
    else:
        assert not taken
    try:
        yield c
    finally:
        await asyncio.to_thread(c.finish)
        await c.close()


async def take_as_writer(c: MqttConsumer, rounds: int) -> list[Inbound]:
    """What a writer that never commits would hold after ``rounds`` takes."""
    held: list[Inbound] = []
    for _ in range(rounds):
        held += await asyncio.to_thread(c.take, 0.3)
    return held


async def release(c: MqttConsumer, held: list[Inbound]) -> None:
    """What the writer does after committing ``held``."""
    c.release(held)
    await asyncio.to_thread(c.acknowledge, held, Batch())


async def test_reading_stops_at_the_message_bound_until_a_commit(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    payloads = [f"message {i:02d}".encode() for i in range(12)]
    async with consumer(mosquitto, tmp_path, queue_max_messages=5) as c:
        with publisher(mosquitto) as client:
            publish(client, payloads)
        first = await take_as_writer(c, rounds=5)
        assert [m.payload for m in first] == payloads[:5]
        assert c.queued() == (5, sum(len(p) for p in payloads[:5]))
        await release(c, first)
        second = await take_as_writer(c, rounds=5)
        assert [m.payload for m in second] == payloads[5:10]
        await release(c, second)
        third = await take_as_writer(c, rounds=3)
        assert [m.payload for m in third] == payloads[10:]
        assert c.queued() == (2, sum(len(p) for p in payloads[10:]))


async def test_the_byte_bound_applies_and_one_large_message_still_passes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    large = b"L" * 5000
    payloads = [large, b"a" * 400, b"b" * 400, b"c" * 400, b"d" * 400]
    async with consumer(mosquitto, tmp_path, queue_max_bytes=1000) as c:
        with publisher(mosquitto) as client:
            publish(client, payloads)
        # Alone, a message larger than the bound is read (it cannot wait for room forever).
        first = await take_as_writer(c, rounds=3)
        assert [m.payload for m in first] == [large]
        await release(c, first)
        # 400 + 400 + 400 reaches 1000: the third is read, then reading stops.
        second = await take_as_writer(c, rounds=3)
        assert [m.payload for m in second] == payloads[1:4]
        await release(c, second)
        third = await take_as_writer(c, rounds=2)
        assert [m.payload for m in third] == payloads[4:]


async def test_unacknowledged_messages_return_to_the_next_session(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    payloads = [f"message {i}".encode() for i in range(4)]
    async with consumer(mosquitto, tmp_path, queue_max_messages=2) as c:
        with publisher(mosquitto) as client:
            publish(client, payloads)
        held = await take_as_writer(c, rounds=3)
        assert [m.payload for m in held] == payloads[:2]
        await release(c, held[:1])  # the second is never committed
    again: list[Inbound] = []
    async with consumer(mosquitto, tmp_path, again) as c:
        again += await take_as_writer(c, rounds=3)
    assert sorted(m.payload for m in again) == payloads[1:]
