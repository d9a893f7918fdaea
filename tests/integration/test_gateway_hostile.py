"""Acceptance: 10,000 random and hostile messages through mosquitto into a running gateway.

The messages come from a seeded generator (``tests.helpers.hostile``) that knows, for each
one, whether it must become a dead letter, what its reason must say and which samples must
be stored. One publisher connection and QoS 1 keep the broker's delivery order, and the
gateway commits in arrival order, so the n-th dead letter belongs to the n-th hostile message.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway, GatewaySettings
from tests.helpers.hostile import Case, Expected, HostileGenerator, topic_of
from tests.helpers.servers import Mosquitto, async_wait_until
from tests.helpers.stored import stored_samples

pytestmark = pytest.mark.integration

SEED = 20261123
MESSAGES = 10_000
MAX_PAYLOAD = 100_000
PAYLOAD_KEPT = 4096
DEADLETTER_TOPIC = "karkhana/v1/deadletter"
TIMEOUT = 30.0
DRAIN_TIMEOUT = 300.0
QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}


class Publisher:
    """QoS 1 publisher (many messages in flight) that also records the dead-letter topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.dead_letters: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-publisher")
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(DEADLETTER_TOPIC, qos=1)
        assert self._subscribed.wait(TIMEOUT), "dead-letter subscription not confirmed"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.dead_letters.append(bytes(msg.payload))

    def received(self) -> int:
        with self._lock:
            return len(self.dead_letters)

    def publish_all(self, cases: list[Case]) -> None:
        infos = [self.client.publish(c.topic, c.payload, qos=1) for c in cases]
        for info in infos:
            info.wait_for_publish(DRAIN_TIMEOUT)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    client = Publisher(broker)
    try:
        yield client
    finally:
        client.close()


@asynccontextmanager
async def running(config: GatewaySettings) -> AsyncIterator[tuple[Gateway, asyncio.Task[None]]]:
    async with Gateway(config) as gateway:
        task = asyncio.create_task(gateway.run())
        try:
            await asyncio.wait_for(gateway.wait_subscribed(), TIMEOUT)
            yield gateway, task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def stored_rows(db: Path) -> list[tuple[str, str, int, object, int]]:
    return [(r.asset, r.signal, r.ts_ns, r.value, r.quality) for r in stored_samples(db)]


def dead_letter_rows(db: Path) -> list[tuple[str, str, bytes, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT topic, reason, payload, payload_size FROM dead_letters ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def as_row(e: Expected) -> tuple[str, str, int, object, int]:
    """How the store keeps a sample: its value with its type, quality 0 good, 1 uncertain,
    2 bad."""
    return (e.asset, e.signal, e.ts_ns, e.value, QUALITY_CODES[e.quality])


def comparable(row: tuple[str, str, int, object, int]) -> tuple[object, ...]:
    """Tells -0.0 from 0.0 and 1 from 1.0."""
    return (*row[:3], type(row[3]).__name__, repr(row[3]), *row[4:])


async def test_ten_thousand_random_and_hostile_messages(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    generator = HostileGenerator(random.Random(SEED), max_payload_bytes=MAX_PAYLOAD)
    cases = [generator.case() for _ in range(MESSAGES)]
    hostile = [c for c in cases if c.reason is not None]
    expected = [as_row(e) for c in cases for e in c.stored]
    kinds = Counter(c.kind for c in hostile)
    assert set(kinds) == set(HostileGenerator.kinds_of())  # every kind is in the run
    assert len(hostile) > MESSAGES // 3 and len(expected) > MESSAGES

    db = tmp_path / "store.sqlite"
    config = GatewaySettings(
        broker=mosquitto.url,
        db=db,
        client_id="gw-hostile",
        max_payload_bytes=MAX_PAYLOAD,
        deadletter_payload_max=PAYLOAD_KEPT,
    )
    async with running(config) as (gateway, task):
        with publisher(mosquitto) as client:
            await asyncio.to_thread(client.publish_all, cases)
            await async_wait_until(
                lambda: gateway.stats.messages == MESSAGES, DRAIN_TIMEOUT, "every message"
            )
            assert not task.done(), "the gateway stopped"
            # Still ingesting after the storm: one more valid envelope is stored.
            last = generator.valid()
            await asyncio.to_thread(client.publish_all, [last])
            await async_wait_until(
                lambda: gateway.stats.messages == MESSAGES + 1, TIMEOUT, "the last message"
            )
            # The broker was up all along: every dead letter reaches the topic too (a burst
            # waits for room in the gateway's outgoing queue instead of skipping it).
            await async_wait_until(
                lambda: client.received() == len(hostile),
                TIMEOUT,
                "every dead letter published on karkhana/v1/deadletter",
            )
            published = [json.loads(p) for p in client.dead_letters]
        assert not task.done(), "the gateway stopped"
        stats = gateway.stats

    assert stats.dead_letters == len(hostile)
    assert stats.write_errors == 0
    letters = dead_letter_rows(db)
    assert len(letters) == len(hostile)
    for case, (topic, reason, payload, size) in zip(hostile, letters, strict=True):
        what = f"{case.kind}: {case.payload[:200]!r}"
        assert topic == case.topic, what
        assert case.reason is not None and case.reason in reason, f"{what}\n{reason}"
        for problem in case.problems:
            assert problem in reason, f"{what}\n{problem!r} not in {reason}"
        assert payload == case.payload[:PAYLOAD_KEPT], what
        assert size == len(case.payload), what
    # What was published is the stored dead letters, in order (gaps where logged).
    stored_reasons = iter(reason for _, reason, _, _ in letters)
    assert all(p["reason"] in stored_reasons for p in published)
    assert published
    assert {p["topic"] for p in published} <= {
        topic_of(a) for a in ("edge-1", "edge-2", "lahore_edge-3")
    }

    # Every valid sample, also those next to bad ones, is stored exactly once.
    expected.extend(as_row(e) for e in last.stored)
    rows = stored_rows(db)
    assert len(rows) == len(expected)
    assert sorted(map(comparable, rows)) == sorted(map(comparable, expected))
    assert stats.samples_written == len(expected)
    assert (stats.samples_duplicate, stats.envelopes_duplicate) == (0, 0)
