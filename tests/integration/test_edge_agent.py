"""The edge agent against a real mosquitto and in-process asyncua servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from asyncua import Node, Server, ua

from edge import EdgeAgent, EdgeConfig
from karkhana.envelope import WireEnvelope
from karkhana.topics import DEADLETTER, EDGE_SAMPLES_FILTER, edge_status
from tests.helpers.servers import Mosquitto, async_wait_until, free_port, run_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
LOOM = "lahore/weaving/line-1/loom-01"
AGENT = "test-edge"


# --- helpers ------------------------------------------------------------------------


@dataclass
class Collector:
    """Records every message on some topic filters; reconnects if the broker restarts.

    With ``persistent=True`` the broker keeps the subscription and queues messages while
    the collector is disconnected (needs a broker with persistence across restarts)."""

    host: str
    port: int
    filters: tuple[str, ...]
    persistent: bool = False
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"collector-{id(self)}",
                    clean_session=not self.persistent,
                ) as client:
                    for f in self.filters:
                        await client.subscribe(f, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # broker down: retry

    def envelopes(self) -> list[WireEnvelope]:
        return [
            msgspec.json.decode(p, type=WireEnvelope)
            for t, p in self.messages
            if t.endswith("/samples")
        ]

    def samples(self, asset: str, signal: str) -> list[tuple[datetime, Any]]:
        return [
            (datetime.fromisoformat(s.ts), s.value)
            for env in self.envelopes()
            for s in env.samples
            if (s.asset, s.signal) == (asset, signal)
        ]

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.messages if t == topic]


@contextlib.asynccontextmanager
async def collecting(
    broker: Mosquitto, *filters: str, persistent: bool = False
) -> AsyncIterator[Collector]:
    collector = Collector(broker.host, broker.port, filters, persistent)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(collector.subscribed.wait(), 10)
        yield collector
    finally:
        # aiomqtt on Python 3.11 can swallow a cancellation; repeat it until the task ends.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)


@dataclass
class Plc:
    endpoint: str
    nodes: dict[str, Node]
    server: Server
    running: bool = True

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.server.stop()

    async def write(
        self,
        name: str,
        value: Any,
        vtype: ua.VariantType,
        ts: datetime,
        status: int = ua.StatusCodes.Good,
    ) -> None:
        await self.nodes[name].write_value(
            ua.DataValue(
                ua.Variant(value, vtype), StatusCode=ua.StatusCode(status), SourceTimestamp=ts
            )
        )


@contextlib.asynccontextmanager
async def plc(machine: str = "loom-01", port: int | None = None) -> AsyncIterator[Plc]:
    """A simulated PLC as in the device contract: ns=2 'urn:karkhana:sim', string ids."""
    port = port or free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/karkhana/sim/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    idx = await server.register_namespace("urn:karkhana:sim")
    assert idx == 2
    obj = await server.nodes.objects.add_object(ua.NodeId(machine, idx), machine)
    nodes = {
        "StateCode": await obj.add_variable(
            ua.NodeId(f"{machine}.StateCode", idx), "StateCode", ua.Variant(0, ua.VariantType.Int32)
        ),
        "Temperature": await obj.add_variable(
            ua.NodeId(f"{machine}.Temperature", idx),
            "Temperature",
            ua.Variant(0.0, ua.VariantType.Double),
        ),
    }
    await server.start()
    p = Plc(endpoint, nodes, server)
    try:
        yield p
    finally:
        await p.stop()


def opcua_source(p: Plc, publishing_interval_ms: float = 500) -> dict[str, Any]:
    return {
        "type": "opcua",
        "name": "loom-01",
        "endpoint": p.endpoint,
        "publishing_interval_ms": publishing_interval_ms,
        "nodes": [
            {"node_id": "ns=2;s=loom-01.StateCode", "asset": LOOM, "signal": "state"},
            {
                "node_id": "ns=2;s=loom-01.Temperature",
                "asset": LOOM,
                "signal": "temperature",
                "unit": "degC",
            },
        ],
    }


MQTT_SOURCE: dict[str, Any] = {
    "type": "mqtt",
    "name": "dyeing-sensors",
    "broker": None,
    "topics": [
        {
            "topic": "sensors/dyeing/{machine}/{signal}",
            "asset": "lahore/dyeing/line-1/{machine}",
            "signal": "{signal}",
            "format": "json",
            "value_path": "value",
            "ts_path": "ts",
        }
    ],
}


def edge_config(
    broker: Mosquitto, buffer: Path, sources: list[dict[str, Any]], **buffer_opts: Any
) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": AGENT,
            "uplink": {"broker": broker.url, "keepalive_s": 5},
            "buffer": {"path": str(buffer), "flush_interval_s": 0.05, **buffer_opts},
            "sources": sources,
        }
    )


async def publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def sensor(ts: datetime, value: Any) -> bytes:
    return json.dumps({"value": value, "ts": ts.isoformat().replace("+00:00", "Z")}).encode()


# --- tests --------------------------------------------------------------------------


async def test_opcua_changes_arrive_in_order_with_source_timestamps(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with plc() as p:
        await p.write("StateCode", 1, ua.VariantType.Int32, T0)
        await p.write("Temperature", 20.5, ua.VariantType.Double, T0)
        cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [opcua_source(p, 500)])
        async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col, EdgeAgent(cfg) as agent:
            # The subscription first reports the current values.
            await async_wait_until(
                lambda: bool(col.samples(LOOM, "state") and col.samples(LOOM, "temperature")),
                15,
                "initial values",
            )
            # Three state changes back to back: far inside one 500 ms publishing interval.
            changes = [
                (T0 + timedelta(seconds=60), 3),
                (T0 + timedelta(seconds=60, milliseconds=125), 1),
                (T0 + timedelta(seconds=61, microseconds=7), 4),
            ]
            for ts, code in changes:
                await p.write("StateCode", code, ua.VariantType.Int32, ts)
            await p.write(
                "Temperature",
                21.25,
                ua.VariantType.Double,
                T0 + timedelta(seconds=62),
                ua.StatusCodes.UncertainLastUsableValue,
            )
            await async_wait_until(
                lambda: (
                    len(col.samples(LOOM, "state")) >= 4
                    and len(col.samples(LOOM, "temperature")) >= 2
                ),
                15,
                "the changes",
            )
            assert col.samples(LOOM, "state") == [(T0, 1), *changes]
            assert col.samples(LOOM, "temperature") == [
                (T0, 20.5),
                (T0 + timedelta(seconds=62), 21.25),
            ]
            temps = [s for e in col.envelopes() for s in e.samples if s.signal == "temperature"]
            assert [(s.unit, s.quality) for s in temps] == [
                ("degC", "good"),
                ("degC", "uncertain"),
            ]
            envelopes = col.envelopes()
            assert {e.agent for e in envelopes} == {AGENT}
            assert {t for t, _ in col.messages} == {f"karkhana/v1/edge/{AGENT}/samples"}
            assert agent.stats.sources["loom-01"].connected


async def test_mqtt_sensors_are_mapped_and_bad_payloads_become_dead_letters(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [MQTT_SOURCE])
    async with collecting(mosquitto, EDGE_SAMPLES_FILTER, DEADLETTER) as col:
        async with EdgeAgent(cfg) as agent:
            await async_wait_until(
                lambda: agent.stats.sources["dyeing-sensors"].connected, 10, "sensor subscription"
            )
            await publish(
                mosquitto,
                [
                    ("sensors/dyeing/dyer-01/temperature", sensor(T0, 71.5)),
                    ("sensors/dyeing/dyer-01/state", sensor(T0 + timedelta(seconds=1), "RUN")),
                    ("sensors/dyeing/dyer-02/count_total", sensor(T0, 1200)),
                    ("sensors/dyeing/dyer-01/speed", b'{"value": 1'),
                    ("sensors/dyeing/dyer-02/speed", b'{"speed": 3, "ts": "2024-05-01T06:00:00Z"}'),
                    ("sensors/dyeing/dyer-02/power", b'{"value": 3, "ts": "noon"}'),
                ],
            )
            await async_wait_until(
                lambda: (
                    len(col.on(DEADLETTER)) >= 3
                    and sum(len(e.samples) for e in col.envelopes()) >= 3
                ),
                10,
                "samples and dead letters",
            )
            assert agent.stats.parse_errors == 3
            assert agent.stats.sources["dyeing-sensors"].parse_errors == 3
        dyer1, dyer2 = "lahore/dyeing/line-1/dyer-01", "lahore/dyeing/line-1/dyer-02"
        assert col.samples(dyer1, "temperature") == [(T0, 71.5)]
        assert col.samples(dyer1, "state") == [(T0 + timedelta(seconds=1), "RUN")]
        assert col.samples(dyer2, "count_total") == [(T0, 1200)]
        assert not col.samples(dyer1, "speed") and not col.samples(dyer2, "power")
        letters = {d["topic"]: d for d in col.on(DEADLETTER)}
        assert set(letters) == {
            "sensors/dyeing/dyer-01/speed",
            "sensors/dyeing/dyer-02/speed",
            "sensors/dyeing/dyer-02/power",
        }
        bad_json = letters["sensors/dyeing/dyer-01/speed"]
        assert bad_json["source"] == "dyeing-sensors"
        assert bad_json["payload"] == '{"value": 1'
        assert bad_json["reason"].startswith("bad JSON")
        assert "missing value at 'value'" in letters["sensors/dyeing/dyer-02/speed"]["reason"]
        assert "bad timestamp" in letters["sensors/dyeing/dyer-02/power"]["reason"]
        assert set(bad_json) == {"source", "topic", "reason", "received", "payload"}


async def test_clean_shutdown_flushes_the_buffer(mosquitto: Mosquitto, tmp_path: Path) -> None:
    buffer = tmp_path / "b.sqlite"
    # A flush interval far longer than the test: only the shutdown flush can send these.
    cfg = edge_config(mosquitto, buffer, [MQTT_SOURCE], flush_interval_s=60)
    dyer = "lahore/dyeing/line-1/dyer-01"
    sent = [(T0 + timedelta(seconds=i), float(i)) for i in range(3)]
    async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col:
        async with EdgeAgent(cfg) as agent:
            await async_wait_until(
                lambda: agent.stats.sources["dyeing-sensors"].connected, 10, "subscription"
            )
            await publish(
                mosquitto, [("sensors/dyeing/dyer-01/speed", sensor(ts, v)) for ts, v in sent]
            )
            await async_wait_until(lambda: agent.stats.samples_buffered == 3, 10, "3 buffered")
            assert col.envelopes() == []
        assert agent.stats.samples_pending == 0
        await async_wait_until(lambda: len(col.envelopes()) == 1, 10, "the flushed envelope")
    assert col.samples(dyer, "speed") == sent
    with sqlite3.connect(buffer) as db:
        assert db.execute("SELECT count(*) FROM samples").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


async def test_seq_increases_and_continues_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    buffer = tmp_path / "b.sqlite"
    cfg = edge_config(mosquitto, buffer, [MQTT_SOURCE], max_batch_samples=2)
    dyer = "lahore/dyeing/line-1/dyer-01"
    async with collecting(mosquitto, EDGE_SAMPLES_FILTER) as col:
        for run in range(2):
            async with EdgeAgent(cfg) as agent:
                await async_wait_until(
                    lambda: agent.stats.sources["dyeing-sensors"].connected, 10, "subscription"
                )
                await publish(
                    mosquitto,
                    [
                        (
                            "sensors/dyeing/dyer-01/speed",
                            sensor(T0 + timedelta(seconds=10 * run + i), float(i)),
                        )
                        for i in range(5)
                    ],
                )
                await async_wait_until(
                    lambda: len(col.samples(dyer, "speed")) == 5 * (run + 1),  # noqa: B023
                    10,
                    f"run {run} samples",
                )
                await async_wait_until(
                    lambda: agent.stats.samples_pending == 0, 10, "all acknowledged"
                )
    seqs = [e.seq for e in col.envelopes()]
    assert len(seqs) >= 6  # at most 2 samples per envelope, 5 samples per run
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[0] == 1
    expected = [T0 + timedelta(seconds=10 * run + i) for run in range(2) for i in range(5)]
    assert [ts for ts, _ in col.samples(dyer, "speed")] == expected


async def test_samples_buffer_on_disk_while_the_broker_is_down(tmp_path: Path) -> None:
    # A broker that keeps sessions across restarts, so the collector misses nothing.
    store = tmp_path / "mosquitto-db"
    store.mkdir()
    extra = f"persistence true\npersistence_location {store}/\nuser root"
    with run_mosquitto(tmp_path / "mq", extra_config=extra) as broker:
        buffer = tmp_path / "b.sqlite"
        async with plc() as p:
            await p.write("Temperature", 20.0, ua.VariantType.Double, T0)
            cfg = edge_config(broker, buffer, [opcua_source(p, 100)], max_batch_samples=7)
            async with (
                collecting(broker, EDGE_SAMPLES_FILTER, persistent=True) as col,
                EdgeAgent(cfg) as agent,
            ):
                await async_wait_until(
                    lambda: (
                        len(col.samples(LOOM, "temperature")) == 1
                        and agent.stats.samples_pending == 0
                    ),
                    15,
                    "the initial value acknowledged",
                )
                await asyncio.to_thread(broker.stop)
                await async_wait_until(
                    lambda: not agent.stats.uplink_connected, 10, "the uplink to notice"
                )
                outage = [(T0 + timedelta(seconds=1 + i), 20.0 + i / 4) for i in range(40)]
                for ts, value in outage:
                    await p.write("Temperature", value, ua.VariantType.Double, ts)
                await async_wait_until(
                    lambda: agent.stats.samples_buffered == 40, 15, "40 samples buffered"
                )
                with sqlite3.connect(buffer) as db:
                    assert db.execute("SELECT count(*) FROM samples").fetchone() == (40,)
                assert agent.pending == 40 and not agent.ready
                await asyncio.to_thread(broker.start_again)
                await async_wait_until(
                    lambda: len({ts for ts, _ in col.samples(LOOM, "temperature")}) == 41,
                    20,
                    "every buffered sample",
                )
                await async_wait_until(
                    lambda: agent.stats.samples_pending == 0, 10, "all acknowledged"
                )
                assert agent.stats.uplink_connections == 2
                assert agent.pending == 0 and agent.ready
        # An envelope may be delivered twice (at least once) but then with the same seq and
        # bytes; after dedup on seq every sample arrives exactly once, in order.
        by_seq: dict[int, bytes] = {}
        for _topic, payload in col.messages:
            env = msgspec.json.decode(payload, type=WireEnvelope)
            assert by_seq.setdefault(env.seq, payload) == payload
        unique = [
            (s.asset, s.signal, s.ts, s.value)
            for seq in sorted(by_seq)
            for s in msgspec.json.decode(by_seq[seq], type=WireEnvelope).samples
            if s.signal == "temperature"
        ]
        expected = [(T0, 20.0), *outage]
        assert unique == [
            (LOOM, "temperature", ts.isoformat().replace("+00:00", "Z"), v) for ts, v in expected
        ]
        # Buffered samples went out in full batches once the broker was back.
        sizes = [len(msgspec.json.decode(b, type=WireEnvelope).samples) for b in by_seq.values()]
        assert max(sizes) == 7


async def test_opcua_source_reconnects_and_resubscribes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    async with plc(port=port) as p:
        await p.write("Temperature", 20.0, ua.VariantType.Double, T0)
        cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [opcua_source(p, 100)])
        status = edge_status(AGENT)

        def last_status() -> dict[str, Any]:
            seen = col.on(status)
            return seen[-1] if seen else {}

        async with (
            collecting(mosquitto, EDGE_SAMPLES_FILTER, status) as col,
            EdgeAgent(cfg) as agent,
        ):
            await async_wait_until(
                lambda: (T0, 20.0) in col.samples(LOOM, "temperature"), 15, "first value"
            )
            # The retained status says which sources are connected.
            await async_wait_until(lambda: last_status().get("ready") is True, 10, "ready")
            assert last_status()["sources"] == {"loom-01": "connected"}
            await p.stop()
            await async_wait_until(
                lambda: not agent.stats.sources["loom-01"].connected, 10, "the source to go down"
            )
            await async_wait_until(
                lambda: last_status().get("sources") == {"loom-01": "disconnected"},
                10,
                "the status to show the source down",
            )
            assert last_status()["state"] == "online" and last_status()["ready"] is False
            async with plc(port=port) as again:
                await async_wait_until(
                    lambda: agent.stats.sources["loom-01"].connected, 20, "the reconnect"
                )
                await async_wait_until(
                    lambda: last_status().get("ready") is True, 10, "ready again"
                )
                later = T0 + timedelta(minutes=5)
                await again.write("Temperature", 25.5, ua.VariantType.Double, later)
                await async_wait_until(
                    lambda: (later, 25.5) in col.samples(LOOM, "temperature"),
                    10,
                    "a value written after the reconnect",
                )
            stats = agent.stats.sources["loom-01"]
            assert (stats.connections, stats.reconnects) == (2, 1)


async def test_status_is_retained_online_then_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = edge_config(mosquitto, tmp_path / "b.sqlite", [])
    async with EdgeAgent(cfg) as agent:
        await async_wait_until(lambda: agent.stats.uplink_connected, 10, "uplink")
        async with collecting(mosquitto, edge_status(AGENT)) as col:
            await async_wait_until(lambda: bool(col.on(edge_status(AGENT))), 10, "status")
            (online,) = col.on(edge_status(AGENT))
    assert (online["state"], online["agent"]) == ("online", AGENT)
    async with collecting(mosquitto, edge_status(AGENT)) as col:
        await async_wait_until(lambda: bool(col.on(edge_status(AGENT))), 10, "retained status")
        (offline,) = col.on(edge_status(AGENT))
    assert (offline["state"], offline["agent"]) == ("offline", AGENT)
    assert datetime.fromisoformat(offline["ts"]) >= datetime.fromisoformat(online["ts"])
