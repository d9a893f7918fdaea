"""Sparkplug B through the edge agent on a real mosquitto: BIRTH/DATA become samples in
envelopes, a seq gap and DATA before BIRTH make the agent publish a rebirth NCMD.

Payloads are built with the independent ``sparkplug_b_packets`` implementation."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from sparkplub_b_packets.core import sparkplug_b_pb2 as pb
from sparkplub_b_packets.core.sparkplug_b import MetricDataType as T
from sparkplub_b_packets.core.sparkplug_b import addMetric

from edge import EdgeAgent, EdgeConfig
from edge.sources.mqtt import MqttSourceStats
from karkhana.envelope import WireEnvelope
from karkhana.topics import DEADLETTER
from tests.helpers.servers import Mosquitto, async_wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0_MS = 1_714_543_200_000  # 2024-05-01T06:00:00Z
DYER = "lahore/dyeing/line-1/dyer-01"


def spb(seq: int | None, metrics: list[tuple[str | None, int, int, Any]], ts_ms: int) -> bytes:
    """(name, alias, datatype, value) metrics, all stamped ``ts_ms``."""
    p = pb.Payload()
    p.timestamp = ts_ms
    if seq is not None:
        p.seq = seq
    for name, alias, datatype, value in metrics:
        addMetric(p, name, alias, datatype, value, timestamp=ts_ms)
    return p.SerializeToString()


@contextlib.asynccontextmanager
async def collecting(broker: Mosquitto, *filters: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    messages: list[tuple[str, bytes]] = []
    subscribed = asyncio.Event()

    async def run() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="spb-collector") as c:
            for topic_filter in filters:
                await c.subscribe(topic_filter, qos=1)
            subscribed.set()
            async for message in c.messages:
                messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        yield messages
    finally:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)


def samples(messages: list[tuple[str, bytes]]) -> list[tuple[str, str, datetime, Any]]:
    out = []
    for topic, raw in messages:
        if topic.endswith("/samples"):
            env = msgspec.json.decode(raw, type=WireEnvelope)
            out += [(s.asset, s.signal, datetime.fromisoformat(s.ts), s.value) for s in env.samples]
    return out


def rebirths(messages: list[tuple[str, bytes]], topic: str) -> list[tuple[str, int, bool]]:
    found = []
    for t, raw in messages:
        if t == topic:
            p = pb.Payload()
            p.ParseFromString(raw)
            found += [(m.name, m.datatype, m.boolean_value) for m in p.metrics]
    return found


async def test_sparkplug_births_data_and_rebirth_requests(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = EdgeConfig.model_validate(
        {
            "agent_id": "spb-edge",
            "uplink": {"broker": mosquitto.url, "keepalive_s": 5},
            "buffer": {"path": str(tmp_path / "buffer.sqlite"), "flush_interval_s": 0.05},
            "sources": [
                {
                    "type": "mqtt",
                    "name": "spb",
                    "topics": [
                        {
                            "topic": "spBv1.0/textile/#",
                            "format": "sparkplug_b",
                            "asset": "lahore/dyeing/line-1/{device}",
                            "signal": "{metric}",
                            "metrics": {"Bath/Temp": "temperature"},
                        }
                    ],
                }
            ],
        }
    )
    filters = ("karkhana/v1/edge/+/samples", DEADLETTER, "spBv1.0/textile/NCMD/+")
    async with (
        collecting(mosquitto, *filters) as messages,
        EdgeAgent(config) as agent,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gw-1") as node,
    ):
        await async_wait_until(lambda: agent.ready, 10, "agent ready")
        birth = [("bdSeq", 0, T.Int64, 0), ("Uptime", 1, T.UInt32, 5)]
        await node.publish("spBv1.0/textile/NBIRTH/gw-1", spb(0, birth, T0_MS), qos=1)
        dbirth = [("Bath/Temp", 10, T.Float, 60.5), ("Running", 11, T.Boolean, True)]
        await node.publish("spBv1.0/textile/DBIRTH/gw-1/dyer-01", spb(1, dbirth, T0_MS), qos=1)
        ddata = [(None, 10, T.Float, 61.25), (None, 11, T.Boolean, False)]
        await node.publish(
            "spBv1.0/textile/DDATA/gw-1/dyer-01", spb(2, ddata, T0_MS + 1_000), qos=1
        )
        t0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
        t1 = datetime(2024, 5, 1, 6, 0, 1, tzinfo=UTC)
        expected = [
            ("lahore/dyeing/line-1/gw-1", "uptime", t0, 5),
            (DYER, "temperature", t0, 60.5),
            (DYER, "running", t0, True),
            (DYER, "temperature", t1, 61.25),
            (DYER, "running", t1, False),
        ]
        await async_wait_until(lambda: len(samples(messages)) >= 5, 10, "five samples")
        assert samples(messages) == expected
        assert rebirths(messages, "spBv1.0/textile/NCMD/gw-1") == []

        # seq 3 and 4 lost: the next DDATA (seq 5) still counts, and a rebirth is requested
        gap = [(None, 10, T.Float, 62.0)]
        await node.publish("spBv1.0/textile/DDATA/gw-1/dyer-01", spb(5, gap, T0_MS + 2_000), qos=1)
        await async_wait_until(
            lambda: bool(rebirths(messages, "spBv1.0/textile/NCMD/gw-1")),
            10,
            "rebirth NCMD for gw-1",
        )
        assert rebirths(messages, "spBv1.0/textile/NCMD/gw-1") == [
            ("Node Control/Rebirth", T.Boolean, True)
        ]
        await async_wait_until(lambda: len(samples(messages)) >= 6, 10, "sample after gap")
        assert samples(messages)[5] == (
            DYER,
            "temperature",
            datetime(2024, 5, 1, 6, 0, 2, tzinfo=UTC),
            62.0,
        )

        # a node the agent has never seen born: rebirth request and a dead letter
        unborn = [(None, 3, T.Double, 1.0)]
        await node.publish("spBv1.0/textile/NDATA/gw-2", spb(7, unborn, T0_MS), qos=1)
        await async_wait_until(
            lambda: bool(rebirths(messages, "spBv1.0/textile/NCMD/gw-2")),
            10,
            "rebirth NCMD for gw-2",
        )
        await async_wait_until(lambda: any(t == DEADLETTER for t, _ in messages), 10, "dead letter")
        (letter,) = [json.loads(raw) for t, raw in messages if t == DEADLETTER]
        assert letter["topic"] == "spBv1.0/textile/NDATA/gw-2"
        assert letter["reason"] == "metric alias 3 is unknown (no BIRTH seen)"

        stats = agent.stats.sources["spb"]
        assert isinstance(stats, MqttSourceStats)
        assert stats.rebirth_requests == 2
        assert stats.samples_read == 6 and stats.parse_errors == 1
