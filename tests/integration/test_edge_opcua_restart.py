"""An OPC UA server restarted mid-stream, and the polling mode.

The PLC is a real in-process asyncua server whose values keep changing; it is stopped and
started again on the same port while the agent reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Node, Server, ua

from edge import EdgeAgent, EdgeConfig
from karkhana.topics import EDGE_SAMPLES_FILTER, edge_status
from tests.helpers.servers import Mosquitto, async_wait_until, free_port
from tests.integration.test_edge_agent import collecting

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
LOOM = "lahore/weaving/line-1/loom-01"
AGENT = "test-edge"
KEEPALIVE_MS = 2000
STEP = timedelta(milliseconds=100)  # PLC clock advance per write


@dataclass
class CountingPlc:
    """A PLC whose counter changes every few milliseconds while it runs.

    Every start builds a fresh server on the same port that restores the last value and
    timestamp (as a PLC with retained memory would). ``generation`` changes the node ids
    so only a browse path finds the counter after a restart.
    """

    port: int
    written: list[tuple[datetime, int]] = field(default_factory=list)
    server: Server | None = None
    node: Node | None = None
    generation: int = 0
    paused: bool = False
    tick_s: float = 0.02

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/karkhana/sim/"

    async def start(self) -> None:
        self.generation += 1
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        idx = await server.register_namespace("urn:karkhana:sim")
        obj = await server.nodes.objects.add_object(
            ua.NodeId(f"loom-01.gen{self.generation}", idx), ua.QualifiedName("loom-01", idx)
        )
        ts, value = self.written[-1] if self.written else (T0, 0)
        self.node = await obj.add_variable(
            ua.NodeId(f"loom-01.gen{self.generation}.Count", idx),
            ua.QualifiedName("CountTotal", idx),
            ua.Variant(value, ua.VariantType.Int64),
        )
        await self.node.write_value(
            ua.DataValue(ua.Variant(value, ua.VariantType.Int64), SourceTimestamp=ts)
        )
        await server.start()
        self.server = server

    async def stop(self) -> None:
        server, self.server, self.node = self.server, None, None
        if server is not None:
            await server.stop()

    async def tick(self) -> None:
        if self.node is None or self.paused:
            return
        ts, value = self.written[-1] if self.written else (T0, 0)
        ts, value = ts + STEP, value + 1
        await self.node.write_value(
            ua.DataValue(ua.Variant(value, ua.VariantType.Int64), SourceTimestamp=ts)
        )
        self.written.append((ts, value))

    async def run_ticks(self) -> None:
        """Change the value every ``tick_s`` (the pace of the simulated machine)."""
        while True:
            await self.tick()
            await asyncio.sleep(self.tick_s)


@contextlib.asynccontextmanager
async def counting_plc(tick_s: float = 0.02) -> AsyncIterator[CountingPlc]:
    plc = CountingPlc(free_port(), tick_s=tick_s)
    await plc.start()
    ticker = asyncio.create_task(plc.run_ticks())
    try:
        yield plc
    finally:
        while not ticker.done():
            ticker.cancel()
            await asyncio.wait({ticker}, timeout=1)
        await plc.stop()


def edge_config(broker: Mosquitto, tmp_path: Path, endpoint: str, **opcua: Any) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "agent_id": AGENT,
            "uplink": {"broker": broker.url, "keepalive_s": 5},
            "buffer": {"path": str(tmp_path / "b.sqlite"), "flush_interval_s": 0.05},
            "sources": [
                {
                    "type": "opcua",
                    "name": "loom-01",
                    "endpoint": endpoint,
                    "nodes": [
                        {
                            "browse_path": ["Objects", "2:loom-01", "2:CountTotal"],
                            "asset": LOOM,
                            "signal": "count_total",
                        }
                    ],
                    **opcua,
                }
            ],
        }
    )


async def test_server_restart_mid_stream_resumes_without_duplicates(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    status = edge_status(AGENT)
    async with counting_plc() as plc:
        cfg = edge_config(
            mosquitto,
            tmp_path,
            plc.endpoint,
            publishing_interval_ms=50,
            keepalive_ms=KEEPALIVE_MS,
        )

        def source_states() -> list[str]:
            return [m["sources"]["loom-01"] for m in col.on(status) if "sources" in m]

        def all_written_arrived() -> bool:
            return col.samples(LOOM, "count_total") == expected_since_first()

        def expected_since_first() -> list[tuple[datetime, int]]:
            """What the PLC had from the first value the agent read (its value when the
            subscription was created) on."""
            history = [(T0, 0), *plc.written]
            first = col.samples(LOOM, "count_total")[:1]
            return history[history.index(first[0]) :] if first else history

        async with (
            collecting(mosquitto, EDGE_SAMPLES_FILTER, status) as col,
            EdgeAgent(cfg) as agent,
        ):
            await async_wait_until(
                lambda: len(col.samples(LOOM, "count_total")) >= 20, 15, "values streaming"
            )
            assert source_states()[-1] == "connected"
            # Hold the machine still for a moment so the last value before the stop is known
            # to have arrived; the restarted server reports it again as its current value.
            plc.paused = True
            await async_wait_until(all_written_arrived, 10, "every value before the stop")
            await plc.stop()
            await async_wait_until(
                lambda: source_states()[-1:] == ["disconnected"], 10, "the source shown down"
            )
            # The old node id is gone; only the re-resolved browse path finds the counter.
            await plc.start()
            await async_wait_until(
                lambda: agent.stats.sources["loom-01"].connected,
                2 * KEEPALIVE_MS / 1000,
                "the source back within twice the keep-alive",
            )
            await async_wait_until(
                lambda: source_states()[-1:] == ["connected"], 10, "the source shown up"
            )
            plc.paused = False
            resumed = len(plc.written)
            await async_wait_until(lambda: len(plc.written) >= resumed + 20, 10, "more changes")
            plc.paused = True
            await async_wait_until(all_written_arrived, 10, "every value after the restart")
            await async_wait_until(lambda: agent.stats.samples_pending == 0, 10, "all sent")
            stats = agent.stats.sources["loom-01"]
            assert (stats.connections, stats.reconnects) == (2, 1)

    # Exactly the values the PLC had, each once: the value reported again after the
    # restart (same asset, signal and ts) was not forwarded a second time.
    samples = col.samples(LOOM, "count_total")
    assert samples == expected_since_first()
    assert samples[-1] == plc.written[-1]
    assert len({ts for ts, _ in samples}) == len(samples)
    states = source_states()
    up = states.index("connected")
    down = states.index("disconnected", up)  # ValueError if never shown down
    assert "connected" in states[down:]


async def test_poll_mode_reads_changes_and_forwards_each_reading_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Polled five times faster than the value changes: each value is read several times.
    async with counting_plc(tick_s=0.05) as plc:
        cfg = edge_config(mosquitto, tmp_path, plc.endpoint, mode="poll", poll_interval_ms=10)
        async with (
            collecting(mosquitto, EDGE_SAMPLES_FILTER) as col,
            EdgeAgent(cfg) as agent,
        ):
            await async_wait_until(
                lambda: len(col.samples(LOOM, "count_total")) >= 10, 15, "polled values"
            )
            assert agent.stats.sources["loom-01"].connected
        samples = col.samples(LOOM, "count_total")
        truth = dict([(T0, 0), *plc.written])
        assert all(truth[ts] == value for ts, value in samples)
        timestamps = [ts for ts, _ in samples]
        # Forwarded once per change, not once per read.
        assert timestamps == sorted(set(timestamps))
