"""OPC UA source spreading its nodes over several subscriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import pytest
from asyncua import Server, ua
from pydantic import ValidationError

from edge.config import OpcUaSourceConfig
from edge.sources.base import DeadLetter
from edge.sources.opcua import OpcUaSource
from karkhana.models import Sample
from tests.helpers.servers import async_wait_until, free_port

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 2, 6, 0, 1, tzinfo=UTC)
N = 5


@dataclass
class ListSink:
    samples: list[Sample] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)

    async def put(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def source_state_changed(self) -> None:
        pass

    def ticket(self) -> int:
        return len(self.samples)

    async def wait_stored(self, ticket: int) -> None:
        return None  # a list stores at once


def value(v: float, ts: datetime) -> ua.DataValue:
    stamp = cast(ua.DateTime, ts)  # ua.DateTime is a datetime
    return ua.DataValue(
        ua.Variant(v, ua.VariantType.Double), SourceTimestamp=stamp, ServerTimestamp=stamp
    )


@asynccontextmanager
async def plc(port: int) -> AsyncIterator[Server]:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc/")
    idx = await server.register_namespace("urn:test:plc")
    folder = await server.nodes.objects.add_object(ua.NodeId.from_string(f"ns={idx};s=f"), "f")
    for i in range(N):
        node_id = ua.NodeId.from_string(f"ns={idx};s=v{i}")
        await folder.add_variable(node_id, f"v{i}", 0.0)
        await server.write_attribute_value(node_id, value(float(i), T0))
    async with server:
        yield server


def config(port: int, **opts: object) -> OpcUaSourceConfig:
    return OpcUaSourceConfig.model_validate(
        {
            "type": "opcua",
            "name": "plc",
            "endpoint": f"opc.tcp://127.0.0.1:{port}/plc/",
            "publishing_interval_ms": 50,
            "nodes": [
                {"node_id": f"ns=2;s=v{i}", "asset": "a/b/l/m", "signal": f"s{i}"} for i in range(N)
            ],
        }
        | opts
    )


async def test_nodes_split_over_subscriptions_all_report_in_order() -> None:
    port = free_port()
    async with plc(port) as server:
        sink = ListSink()
        # 5 nodes, at most 2 per subscription: three subscriptions (2 + 2 + 1).
        async with OpcUaSource(config(port, max_items_per_subscription=2), sink):
            await async_wait_until(lambda: len(sink.samples) == N, 15, "initial values")
            for i in (4, 0):  # the last subscription's only node, then the first one's
                node_id = ua.NodeId.from_string(f"ns=2;s=v{i}")
                await server.write_attribute_value(node_id, value(10.0 + i, T1))
                await server.write_attribute_value(node_id, value(20.0 + i, T1.replace(second=2)))
            await async_wait_until(lambda: len(sink.samples) == N + 4, 15, "new values")
        initial = sorted((s.signal, s.ts, s.value) for s in sink.samples[:N])
        assert initial == [(f"s{i}", T0, float(i)) for i in range(N)]
        assert [(s.signal, s.value) for s in sink.samples[N:] if s.signal == "s4"] == [
            ("s4", 14.0),
            ("s4", 24.0),
        ]
        assert [(s.signal, s.value) for s in sink.samples[N:] if s.signal == "s0"] == [
            ("s0", 10.0),
            ("s0", 20.0),
        ]
        assert sink.letters == []


def test_max_items_per_subscription_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="max_items_per_subscription"):
        config(4840, max_items_per_subscription=0)
    assert config(4840).max_items_per_subscription == 2000
