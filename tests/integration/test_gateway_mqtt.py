"""The gateway against a real mosquitto, envelopes published by a plain paho client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway, GatewaySettings, GatewayStats
from services.store import StoredDeadLetter, open_reader
from tests.helpers.servers import Mosquitto, async_wait_until, free_port, wait_until
from tests.helpers.stored import stored_samples

pytestmark = pytest.mark.integration

ASSET = "lahore/weaving/line-1/loom-03"
SAMPLES_TOPIC = "karkhana/v1/edge/{agent}/samples"
DEADLETTER_TOPIC = "karkhana/v1/deadletter"
# 2024-05-01T10:00:00Z = 1714521600 s (2024-05-01T00:00Z) + 10 h.
T10_NS = (1_714_521_600 + 10 * 3600) * 1_000_000_000
TIMEOUT = 15.0


def envelope(agent: str, seq: int, samples: list[dict[str, Any]]) -> bytes:
    body = {"v": 1, "agent": agent, "seq": seq, "sent": "2024-05-01T10:00:05Z", "samples": samples}
    return json.dumps(body).encode()


def sample(signal: str, value: object, ts: str = "2024-05-01T10:00:00Z", **extra: Any) -> dict:
    return {"asset": ASSET, "signal": signal, "ts": ts, "value": value, **extra}


class Client:
    """A plain paho client: publishes QoS 1 and collects messages of its subscriptions."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT), "subscription not confirmed"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def paho_client(broker: Mosquitto, client_id: str = "test-publisher") -> Iterator[Client]:
    client = Client(broker, client_id)
    try:
        yield client
    finally:
        client.close()


def settings(broker: Mosquitto, db: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {"broker": broker.url, "db": db, "client_id": "gw-test"}
    values.update(overrides)
    return GatewaySettings(**values)


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


def stored(db: Path) -> list[tuple[str, int, object, int, str | None]]:
    """(signal, ts_ns, value, quality, unit) rows, read independently of the gateway."""
    rows = sorted(stored_samples(db), key=lambda r: (r.signal, r.ts_ns))
    return [(r.signal, r.ts_ns, r.value, r.quality, r.unit) for r in rows]


def agent_seq(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT agent, last_seq FROM agent_seq").fetchall())
    finally:
        conn.close()


async def test_envelopes_are_stored_with_values_types_and_quality(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "store.sqlite"
    async with running(settings(mosquitto, db)) as gateway:
        with paho_client(mosquitto) as publisher:
            publisher.publish(
                SAMPLES_TOPIC.format(agent="edge-1"),
                envelope(
                    "edge-1",
                    1,
                    [
                        sample("count", 42),
                        sample("speed", 12.5, unit="m/min", quality="uncertain"),
                        sample("auto", False, quality="bad"),
                        sample("state", "running", ts="2024-05-01T15:00:01.25+05:00"),
                    ],
                ),
            )
            publisher.publish(
                SAMPLES_TOPIC.format(agent="edge-2"),
                envelope("edge-2", 17, [sample("count", 43, ts="2024-05-01T10:00:01Z")]),
            )
            await async_wait_until(
                lambda: gateway.stats.messages == 2, TIMEOUT, "two messages committed"
            )
        assert gateway.stats.samples_written == 5
        assert gateway.stats.dead_letters == 0
    second = 1_000_000_000
    # quality 0 good, 1 uncertain, 2 bad.
    rows = stored(db)
    assert rows == [
        ("auto", T10_NS, False, 2, None),
        ("count", T10_NS, 42, 0, None),
        ("count", T10_NS + second, 43, 0, None),
        ("speed", T10_NS, 12.5, 1, "m/min"),
        ("state", T10_NS + second + second // 4, "running", 0, None),
    ]
    assert [type(row[2]) for row in rows] == [bool, int, int, float, str]
    assert agent_seq(db) == {"edge-1": 1, "edge-2": 17}


async def test_tiny_queue_and_batches_store_everything_in_order(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """With a one-message inbox the network thread blocks (backpressure); nothing is lost."""
    db = tmp_path / "store.sqlite"
    config = settings(mosquitto, db, queue_max_messages=1, batch_max_samples=1)
    count = 200
    async with running(config) as gateway:
        with paho_client(mosquitto) as publisher:
            for seq in range(1, count + 1):
                ts = f"2024-05-01T10:{seq // 60:02d}:{seq % 60:02d}Z"
                publisher.publish(
                    SAMPLES_TOPIC.format(agent="edge-1"),
                    envelope("edge-1", seq, [sample("count", seq, ts=ts)]),
                )
            await async_wait_until(
                lambda: gateway.stats.messages == count, TIMEOUT, f"{count} messages"
            )
        stats = gateway.stats
    assert (stats.samples_written, stats.envelopes_duplicate) == (count, 0)
    assert [row[2] for row in stored(db)] == list(range(1, count + 1))
    assert agent_seq(db) == {"edge-1": count}


async def test_same_envelope_twice_is_stored_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    payload = envelope(
        "edge-1", 5, [sample("count", 1), sample("count", 2, ts="2024-05-01T10:00:01Z")]
    )
    async with running(settings(mosquitto, db)) as gateway:
        with paho_client(mosquitto) as publisher:
            topic = SAMPLES_TOPIC.format(agent="edge-1")
            publisher.publish(topic, payload)
            publisher.publish(topic, payload)  # same agent + seq
            await async_wait_until(lambda: gateway.stats.messages == 2, TIMEOUT, "2 messages")
            assert gateway.stats.envelopes_duplicate == 1
            assert gateway.stats.samples_written == 2
            # Same samples under a new seq: the (series, ts) key keeps them single.
            publisher.publish(topic, payload.replace(b'"seq": 5', b'"seq": 6'))
            await async_wait_until(lambda: gateway.stats.messages == 3, TIMEOUT, "3 messages")
        stats = gateway.stats
    assert stats.samples_written == 2
    assert stats.samples_duplicate == 2
    assert stats.envelopes_duplicate == 1
    assert [(row[1], row[2]) for row in stored(db)] == [(T10_NS, 1), (T10_NS + 1_000_000_000, 2)]
    assert agent_seq(db) == {"edge-1": 6}


async def test_malformed_payloads_become_dead_letters(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    topic = SAMPLES_TOPIC.format(agent="edge-1")
    bad_type = envelope("edge-1", 1, [sample("count", 1)]).replace(b'"seq": 1', b'"seq": "one"')
    mixed = envelope(
        "edge-1",
        2,
        [sample("count", 10), sample("count", 11, ts="1970-01-01T00:00:00Z"), sample("speed", 3.5)],
    )
    good = envelope("edge-1", 3, [sample("count", 12, ts="2024-05-01T10:00:02Z")])
    with paho_client(mosquitto, "deadletter-listener") as listener:
        listener.subscribe(DEADLETTER_TOPIC)
        async with running(settings(mosquitto, db, deadletter_payload_max=16)) as gateway:
            with paho_client(mosquitto) as publisher:
                publisher.publish(topic, b"this is not json")
                publisher.publish(topic, bad_type)
                publisher.publish(topic, mixed)
                publisher.publish(topic, good)
                await async_wait_until(lambda: gateway.stats.messages == 4, TIMEOUT, "4 messages")
            assert gateway.stats.dead_letters == 3
            await async_wait_until(
                lambda: len(listener.received()) == 3, TIMEOUT, "3 published dead letters"
            )
    # Valid samples (of the mixed message and of the message after the bad ones) are stored.
    assert [(row[0], row[1], row[2]) for row in stored(db)] == [
        ("count", T10_NS, 10),
        ("count", T10_NS + 2_000_000_000, 12),
        ("speed", T10_NS, 3.5),
    ]
    letters = list(reversed(dead_letters(db, limit=10)))
    assert letters[0].reason.startswith("payload is not JSON: JSON is malformed")
    assert [d.reason for d in letters[1:]] == [
        "seq: expected `int`, got `str`",
        "1 of 3 samples rejected: samples[1].ts: timestamp 1970-01-01T00:00:00Z before 2000-01-01",
    ]
    assert [d.topic for d in letters] == [topic] * 3
    assert letters[0].payload == b"this is not json"[:16]
    assert letters[0].payload_size == len(b"this is not json")
    assert letters[2].payload == mixed[:16]
    published = [json.loads(payload) for _, payload in listener.received()]
    assert [p["reason"] for p in published] == [d.reason for d in letters]
    assert published[0]["topic"] == topic
    assert published[0]["payload"] == "this is not json"
    assert published[0]["truncated"] is False
    assert published[2]["payload"] == mixed[:16].decode()
    assert published[2]["truncated"] is True
    assert {"topic", "reason", "received", "payload"} <= set(published[1])
    assert agent_seq(db) == {"edge-1": 3}


async def test_restart_receives_messages_published_while_down(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "store.sqlite"
    config = settings(mosquitto, db, client_id="gw-restart")
    topic = SAMPLES_TOPIC.format(agent="edge-1")
    async with running(config) as gateway:
        with paho_client(mosquitto) as publisher:
            publisher.publish(topic, envelope("edge-1", 1, [sample("count", 1)]))
            await async_wait_until(lambda: gateway.stats.messages == 1, TIMEOUT, "1 message")
    # The gateway is down; the broker keeps its session and queues these.
    with paho_client(mosquitto) as publisher:
        for seq in (2, 3, 4):
            ts = f"2024-05-01T10:00:0{seq}Z"
            publisher.publish(topic, envelope("edge-1", seq, [sample("count", seq, ts=ts)]))
    async with running(config) as gateway:
        await async_wait_until(
            lambda: gateway.stats.messages >= 3, TIMEOUT, "queued messages committed"
        )
        with paho_client(mosquitto) as publisher:
            # A marker published after the restart proves everything before it was handled.
            publisher.publish(
                topic, envelope("edge-1", 5, [sample("count", 5, ts="2024-05-01T10:00:05Z")])
            )
        await async_wait_until(lambda: gateway.stats.messages == 4, TIMEOUT, "seq 5 committed")
    stats = gateway.stats  # final totals, after the clean shutdown
    assert stats.messages == 4
    assert agent_seq(db) == {"edge-1": 5}
    assert stats.envelopes_duplicate == 0
    assert stats.samples_duplicate == 0
    second = 1_000_000_000
    assert [(row[1], row[2]) for row in stored(db)] == [
        (T10_NS, 1),
        (T10_NS + 2 * second, 2),
        (T10_NS + 3 * second, 3),
        (T10_NS + 4 * second, 4),
        (T10_NS + 5 * second, 5),
    ]
    wait_until(
        lambda: "as gw-restart (p2, c0" in mosquitto.log_path.read_text(errors="replace"),
        TIMEOUT,
        "mosquitto to log the gateway's MQTT 3.1.1 persistent-session connection",
    )


async def test_uncommitted_messages_are_not_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A message whose batch could not be committed is redelivered by the broker later."""
    db = tmp_path / "store.sqlite"
    config = settings(mosquitto, db, client_id="gw-uncommitted")
    topic = SAMPLES_TOPIC.format(agent="edge-1")
    async with running(config) as gateway:
        # Waits for the lock if the retention thread's first (compaction) pass holds it.
        blocker = sqlite3.connect(db, timeout=10)
        try:
            blocker.execute("BEGIN EXCLUSIVE")  # every write of the gateway fails now
            with paho_client(mosquitto) as publisher:
                publisher.publish(topic, envelope("edge-1", 1, [sample("count", 1)]))
            await async_wait_until(
                lambda: gateway.stats.write_errors >= 1, TIMEOUT, "a failed write"
            )
        finally:
            blocker.rollback()
            blocker.close()
        # Leaving the block stops the gateway while the batch is still uncommitted.
    assert gateway.stats.messages == 0
    assert stored(db) == []
    async with running(config) as gateway:
        await async_wait_until(lambda: gateway.stats.messages == 1, TIMEOUT, "redelivery")
    assert [(row[1], row[2]) for row in stored(db)] == [(T10_NS, 1)]


async def test_shared_subscription_uses_mqtt_v5(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    config = settings(mosquitto, db, share_group="ingest", client_id="gw-shared")
    async with running(config) as gateway:
        with paho_client(mosquitto) as publisher:
            publisher.publish(
                SAMPLES_TOPIC.format(agent="edge-9"), envelope("edge-9", 1, [sample("count", 7)])
            )
            await async_wait_until(lambda: gateway.stats.messages == 1, TIMEOUT, "1 message")
    assert [(row[0], row[2]) for row in stored(db)] == [("count", 7)]
    # mosquitto logs each client's protocol (p5: MQTT v5, p2: 3.1.1) and c0: session kept.
    wait_until(
        lambda: "as gw-shared (p5, c0" in mosquitto.log_path.read_text(errors="replace"),
        TIMEOUT,
        "mosquitto to log the gateway's MQTT v5 connection",
    )


async def test_stops_cleanly_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    config = GatewaySettings(broker=f"mqtt://127.0.0.1:{free_port()}", db=tmp_path / "s.sqlite")

    async def start_and_stop() -> GatewayStats:
        async with Gateway(config) as gateway:
            task = asyncio.create_task(gateway.run())
            await asyncio.sleep(0)
            assert not task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return gateway.stats

    stats = await asyncio.wait_for(start_and_stop(), TIMEOUT)
    assert stats.messages == 0


def karkhana_command() -> list[str]:
    script = Path(sys.executable).with_name("karkhana")
    assert script.exists(), f"console script missing at {script}"
    return [str(script)]


def test_cli_runs_until_sigterm(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite"
    env = {**os.environ, "KARKHANA_GATEWAY_CLIENT_ID": "gw-cli"}
    process = subprocess.Popen(
        [*karkhana_command(), "gateway", "run", "--broker", mosquitto.url, "--db", str(db)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        topic = SAMPLES_TOPIC.format(agent="edge-cli")
        with paho_client(mosquitto) as publisher:
            # Publish until one envelope is stored (the gateway may not be subscribed yet;
            # every publish has a new seq and a new timestamp).
            seq = 0

            def committed() -> bool:
                nonlocal seq
                try:
                    if db.exists() and agent_seq(db):
                        return True
                except sqlite3.OperationalError:
                    pass  # the gateway is still creating the schema
                seq += 1
                publisher.publish(topic, envelope("edge-cli", seq, [sample("count", seq)]))
                return False

            wait_until(committed, TIMEOUT, "the CLI gateway to store an envelope")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output.decode(errors="replace")
    assert b"gateway stopped" in output


def test_cli_rejects_bad_settings_with_exit_code_2() -> None:
    result = subprocess.run(
        [*karkhana_command(), "gateway", "run", "--broker", "http://localhost"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert b"must start with mqtt:// or mqtts://" in result.stderr


def dead_letters(db: Path, limit: int, before_id: int | None = None) -> list[StoredDeadLetter]:
    """Dead letters newest first, read as the API reads them."""
    with open_reader(db) as reader:
        return reader.dead_letters(limit, before_id)
