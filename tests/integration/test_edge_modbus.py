"""The Modbus source against in-process pymodbus servers (and the agent, through mosquitto).

Register contents are built here from ``struct``-packed bytes in every byte and word order;
the values expected back are written out by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge import EdgeAgent, EdgeConfig
from edge.modbus_config import ModbusSourceConfig
from edge.sources.base import DeadLetter
from edge.sources.modbus import ModbusSource
from karkhana.envelope import WireEnvelope
from karkhana.models import Sample
from karkhana.topics import EDGE_SAMPLES_FILTER
from tests.helpers.servers import Mosquitto, async_wait_until, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOOM = "lahore/weaving/line-1/loom-01"
FC = {"holding": 16, "input": 4, "coil": 5, "discrete": 2}  # function code -> table (server side)


# --- an in-process Modbus device ----------------------------------------------------


class Device:
    """A pymodbus TCP server with 100 registers and 64 bits in each table."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        device = SimDevice(
            id=0,
            simdata=(
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=100, values=0, datatype=DataType.REGISTERS)],
            ),
            use_bit_addressing=True,
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()

    async def write(self, table: str, address: int, values: list[int] | list[bool]) -> None:
        assert self._server is not None
        await self._server.async_setValues(0, FC[table], address, values)


@contextlib.asynccontextmanager
async def device(port: int | None = None) -> AsyncIterator[Device]:
    d = Device(port or free_port())
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@dataclass
class ListSink:
    samples: list[Sample] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    state_changes: int = 0

    async def put(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def source_state_changed(self) -> None:
        self.state_changes += 1

    def values(self, signal: str) -> list[Any]:
        return [s.value for s in self.samples if s.signal == signal]


def source_config(port: int, registers: list[dict[str, Any]], **opts: Any) -> ModbusSourceConfig:
    data: dict[str, Any] = {
        "type": "modbus",
        "name": "plc",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval_ms": 50,
        "timeout_ms": 500,
        "registers": registers,
    }
    return ModbusSourceConfig.model_validate(data | opts)


def reg(
    signal: str, address: int, value_type: str = "uint16", table: str = "holding", **kw: Any
) -> dict[str, Any]:
    return {
        "asset": LOOM,
        "signal": signal,
        "table": table,
        "address": address,
        "type": value_type,
    } | kw


# --- every type in every byte and word order ------------------------------------------


def wire32(big_endian: bytes, byte_order: str, word_order: str) -> list[int]:
    """Registers whose bytes on the wire are the value's bytes A B C D in that layout."""
    a, b, c, d = big_endian
    layout = {
        ("big", "big"): [a, b, c, d],
        ("big", "little"): [c, d, a, b],
        ("little", "big"): [b, a, d, c],
        ("little", "little"): [d, c, b, a],
    }[(byte_order, word_order)]
    return list(struct.unpack(">HH", bytes(layout)))


def wire16(big_endian: bytes, byte_order: str) -> list[int]:
    hi, lo = big_endian
    return list(struct.unpack(">H", bytes([hi, lo] if byte_order == "big" else [lo, hi])))


@dataclass(frozen=True)
class Case:
    signal: str
    table: str
    address: int
    type: str
    byte_order: str
    word_order: str
    contents: list[int] | list[bool]
    expected: Any  # worked out by hand
    scale: float = 1.0
    offset: float = 0.0


ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def cases() -> list[Case]:
    out: list[Case] = []
    address = 0
    # 32-bit values, each in all four layouts, alternately in holding and input registers.
    thirty_two = [
        ("int32", ">i", -123_456_789, -123_456_789, 1.0, 0.0),
        ("uint32", ">I", 4_000_000_000, 4_000_000_000, 1.0, 0.0),
        ("float32", ">f", 65_432.125, 65_432.125, 1.0, 0.0),  # exact in float32
        ("float32", ">f", -1.5, -17.0, 10.0, -2.0),  # -1.5 * 10 - 2
        ("uint32", ">I", 123_456, 1234.56, 0.01, 0.0),  # centi-units
    ]
    for i, (vtype, fmt, raw, expected, scale, offset) in enumerate(thirty_two):
        for byte_order, word_order in ORDERS:
            table = "holding" if i % 2 == 0 else "input"
            out.append(
                Case(
                    f"v{vtype}.{i}.{byte_order[0]}{word_order[0]}",
                    table,
                    address,
                    vtype,
                    byte_order,
                    word_order,
                    wire32(struct.pack(fmt, raw), byte_order, word_order),
                    expected,
                    scale,
                    offset,
                )
            )
            address += 2
    sixteen = [
        ("int16", ">h", -405, -40.5, 0.1, 0.0),  # tenths of a degree
        ("int16", ">h", -2, -2, 1.0, 0.0),
        ("uint16", ">H", 65_000, 65_000, 1.0, 0.0),
        ("uint16", ">H", 300, 160.0, 0.5, 10.0),  # 300 * 0.5 + 10
    ]
    for i, (vtype, fmt, raw, expected, scale, offset) in enumerate(sixteen):
        for byte_order in ("big", "little"):
            out.append(
                Case(
                    f"v{vtype}.{i}.{byte_order[0]}",
                    "holding",
                    address,
                    vtype,
                    byte_order,
                    "big",
                    wire16(struct.pack(fmt, raw), byte_order),
                    expected,
                    scale,
                    offset,
                )
            )
            address += 1
    out += [
        Case("run", "coil", 3, "bool", "big", "big", [True], True),
        Case("alarm", "coil", 4, "bool", "big", "big", [False], False),
        Case("door", "discrete", 9, "bool", "big", "big", [True], True),
    ]
    return out


def case_register(c: Case) -> dict[str, Any]:
    return reg(
        c.signal,
        c.address,
        c.type,
        c.table,
        byte_order=c.byte_order,
        word_order=c.word_order,
        scale=c.scale,
        offset=c.offset,
    )


async def collect_samples(
    broker: Mosquitto, stop: asyncio.Event, out: list[WireEnvelope], ready: asyncio.Event
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(EDGE_SAMPLES_FILTER, qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            out.append(msgspec.json.decode(message.payload, type=WireEnvelope))


async def test_agent_forwards_every_type_and_order_scaled_and_typed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    all_cases = cases()
    async with device() as dev:
        for c in all_cases:
            await dev.write(c.table, c.address, c.contents)
        cfg = EdgeConfig.model_validate(
            {
                "agent_id": "test-edge",
                "uplink": {"broker": mosquitto.url},
                "buffer": {"path": str(tmp_path / "b.sqlite"), "flush_interval_s": 0.05},
                "sources": [
                    source_config(dev.port, [case_register(c) for c in all_cases]).model_dump()
                ],
            }
        )
        envelopes: list[WireEnvelope] = []
        ready, stop = asyncio.Event(), asyncio.Event()
        collector = asyncio.create_task(collect_samples(mosquitto, stop, envelopes, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            before = datetime.now(UTC)
            async with EdgeAgent(cfg):
                signals = {c.signal for c in all_cases}
                await async_wait_until(
                    lambda: signals <= {s.signal for e in envelopes for s in e.samples},
                    15,
                    "a sample of every register",
                )
            after = datetime.now(UTC)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await collector
    got = {s.signal: s for e in envelopes for s in reversed(e.samples)}  # first per signal
    for c in all_cases:
        sample = got[c.signal]
        assert sample.asset == LOOM
        if isinstance(c.expected, bool):
            assert sample.value is c.expected, c
        elif isinstance(c.expected, int):
            assert type(sample.value) is int and sample.value == c.expected, c
        else:
            assert isinstance(sample.value, float), c
            assert sample.value == pytest.approx(c.expected, rel=1e-9), c
    # Stamped with the poll time; the first poll read every value at the same instant.
    stamps = {datetime.fromisoformat(got[c.signal].ts) for c in all_cases}
    assert len(stamps) == 1
    (stamp,) = stamps
    assert before - timedelta(milliseconds=1) <= stamp <= after


# --- change detection, heartbeat, failures, reconnect ---------------------------------


async def test_only_changes_are_handed_on() -> None:
    async with device() as dev:
        await dev.write("holding", 0, [1])
        await dev.write("holding", 1, [7])
        sink = ListSink()
        cfg = source_config(dev.port, [reg("state", 0), reg("mode", 1)])
        async with ModbusSource(cfg, sink) as src:
            stats = src.poll_stats
            await async_wait_until(lambda: len(sink.samples) == 2, 10, "the first poll")
            polls = stats.polls
            await async_wait_until(lambda: stats.polls >= polls + 5, 10, "five more polls")
            assert len(sink.samples) == 2  # nothing changed, nothing handed on
            await dev.write("holding", 0, [3])
            await async_wait_until(lambda: sink.values("state") == [1, 3], 10, "the change")
            assert sink.values("mode") == [7]
            assert stats.reads >= polls + 5 and stats.read_failures == 0


async def test_heartbeat_repeats_unchanged_values_every_n_polls() -> None:
    async with device() as dev:
        await dev.write("holding", 0, [2])
        sink = ListSink()
        cfg = source_config(dev.port, [reg("state", 0)], heartbeat=3)
        async with ModbusSource(cfg, sink) as src:
            await async_wait_until(lambda: len(sink.samples) >= 3, 10, "two heartbeats")
            # Polls 1 (first), 4 and 7 (heartbeats) hand the value on.
            assert src.poll_stats.polls >= 7
            assert sink.values("state")[:3] == [2, 2, 2]
            times = [s.ts for s in sink.samples[:3]]
            assert times == sorted(times) and len(set(times)) == 3


async def test_exception_response_skips_the_value_and_counts_it() -> None:
    async with device() as dev:
        await dev.write("holding", 0, [1])
        sink = ListSink()
        # The device has 100 holding registers: address 500 is answered with exception 2.
        cfg = source_config(dev.port, [reg("state", 0), reg("missing", 500)])
        async with ModbusSource(cfg, sink) as src:
            stats = src.poll_stats
            await async_wait_until(lambda: stats.read_failures >= 3, 10, "three failed reads")
            assert src.stats.connected
            assert sink.values("state") == [1]
            assert sink.values("missing") == []  # no made-up 'bad' sample
            assert stats.values_skipped >= 3
            assert stats.reconnects == 0


async def test_a_device_that_does_not_answer_is_reconnected() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass  # swallow requests, never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        sink = ListSink()
        cfg = source_config(port, [reg("state", 0)], timeout_ms=100)
        async with ModbusSource(cfg, sink, backoff_cap_s=0.5) as src:
            await async_wait_until(
                lambda: src.stats.connections >= 2, 15, "a new connection after timeouts"
            )
            assert src.poll_stats.read_failures >= 3
            assert sink.samples == []


async def test_reconnects_after_the_server_restarts() -> None:
    port = free_port()
    sink = ListSink()
    cfg = source_config(port, [reg("count_total", 10, "uint32")])
    dev = Device(port)
    await dev.start()
    try:
        await dev.write("holding", 10, [0x0001, 0x0002])  # 65538
        async with ModbusSource(cfg, sink, backoff_cap_s=0.5) as src:
            await async_wait_until(lambda: sink.values("count_total") == [65_538], 10, "a value")
            assert src.stats.connected
            await dev.stop()
            await async_wait_until(lambda: not src.stats.connected, 10, "the lost connection")
            dev = Device(port)
            await dev.start()
            await dev.write("holding", 10, [0x0001, 0x0003])  # 65539
            await async_wait_until(
                lambda: sink.values("count_total")[-1:] == [65_539], 15, "the new value"
            )
            assert src.stats.connected
            assert src.stats.reconnects == 1
            assert src.stats.connections == 2
            assert sink.state_changes >= 3  # up, down, up
    finally:
        await dev.stop()


async def test_refused_connection_is_retried() -> None:
    port = free_port()
    sink = ListSink()
    async with ModbusSource(source_config(port, [reg("state", 0)]), sink, backoff_cap_s=0.5) as src:
        await async_wait_until(lambda: src.stats.connect_failures >= 2, 10, "two attempts")
        assert not src.stats.connected
        async with device(port) as dev:
            await dev.write("holding", 0, [4])
            await async_wait_until(lambda: sink.values("state") == [4], 10, "the value")


# --- device timestamps ----------------------------------------------------------------


def ms_words(when: datetime) -> list[int]:
    """A uint64 of milliseconds since 1970, most significant word first."""
    ms = round(when.timestamp() * 1000)
    return list(struct.unpack(">4H", struct.pack(">Q", ms)))


async def test_values_carry_the_device_timestamps() -> None:
    ts_ms = {"type": "uint64", "unit": "ms"}
    # A PLC that keeps a "changed at" time per value, and one device clock (uint32 seconds,
    # words swapped) shared by two values in the input registers.
    registers = [
        reg("state", 0, timestamp={"address": 3} | ts_ms),  # 0, 3-6
        reg("count_total", 1, "uint32", timestamp={"address": 7} | ts_ms),  # 1-2, 7-10
        reg("speed", 0, "float32", "input", timestamp={"address": 2, "word_order": "little"}),
        reg("power", 4, "float32", "input", timestamp={"address": 2, "word_order": "little"}),
    ]
    changed = datetime(2026, 11, 23, 3, 15, 42, 125_000, tzinfo=UTC)
    counted = datetime(2026, 11, 23, 3, 15, 44, 875_000, tzinfo=UTC)
    clock = datetime(
        2026, 11, 23, 3, 16, 0, tzinfo=UTC
    )  # 1795403760 s = 0x6B03_AFF0 (`date -u -d @1795403760`)
    async with device() as dev:
        await dev.write("holding", 0, [3])
        await dev.write("holding", 1, [0x0001, 0x0002])  # 65538
        await dev.write("holding", 3, ms_words(changed) + ms_words(counted))
        await dev.write("input", 0, wire32(struct.pack(">f", 112.5), "big", "big"))
        await dev.write("input", 2, [0xAFF0, 0x6B03])  # low word first
        await dev.write("input", 4, wire32(struct.pack(">f", 6.25), "big", "big"))
        sink = ListSink()
        async with ModbusSource(source_config(dev.port, registers), sink) as src:
            await async_wait_until(lambda: len(sink.samples) == 4, 10, "the first poll")
            got = {s.signal: (s.value, s.ts) for s in sink.samples}
            assert got == {
                "state": (3, changed),
                "count_total": (65_538, counted),
                "speed": (112.5, clock),
                "power": (6.25, clock),
            }
            # Holding 0-10 (values and timestamps) in one request, input 0-5 in another.
            polls = src.poll_stats.polls
            await async_wait_until(lambda: src.poll_stats.polls >= polls + 3, 10, "three polls")
            stats = src.poll_stats
            assert 2 * stats.polls - 2 <= stats.reads <= 2 * stats.polls

            # The state changes and changes back between two polls: the value is the same,
            # but the device says it changed again, so the reading is handed on.
            again = changed + timedelta(minutes=5)
            await dev.write("holding", 3, ms_words(again))
            await async_wait_until(lambda: len(sink.samples) == 5, 10, "the new timestamp")
            assert (sink.samples[-1].signal, sink.samples[-1].value) == ("state", 3)
            assert sink.samples[-1].ts == again
            # A new value and its new time, written together as a PLC would.
            later = counted + timedelta(seconds=30)
            await dev.write("holding", 1, [0x0001, 0x0010, *ms_words(again), *ms_words(later)])
            await async_wait_until(
                lambda: any(s.ts == later for s in sink.samples), 10, "the new count"
            )
            counts = [(s.value, s.ts) for s in sink.samples if s.signal == "count_total"]
            assert counts[0] == (65_538, counted) and counts[-1] == (65_552, later)
            assert src.stats.parse_errors == 0


async def test_an_unset_device_clock_falls_back_to_the_poll_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registers = [
        reg("state", 0, timestamp={"address": 4}),
        reg("mode", 1, timestamp={"address": 4}),
    ]
    async with device() as dev:
        await dev.write("holding", 0, [1, 2])  # timestamp registers 4-5 stay 0
        sink = ListSink()
        before = datetime.now(UTC)
        with caplog.at_level("WARNING", logger="edge.sources.modbus"):
            async with ModbusSource(source_config(dev.port, registers), sink) as src:
                await async_wait_until(lambda: len(sink.samples) == 2, 10, "the first poll")
                polls = src.poll_stats.polls
                await async_wait_until(lambda: src.poll_stats.polls >= polls + 3, 10, "polls")
                after = datetime.now(UTC)
                for sample in sink.samples:
                    assert before - timedelta(milliseconds=1) <= sample.ts <= after
                # Once the clock is set, values are handed on with the device's time.
                clock = datetime(2026, 11, 23, 3, 16, 0, tzinfo=UTC)
                await dev.write("holding", 4, [0x6B03, 0xAFF0])
                await async_wait_until(lambda: len(sink.samples) == 4, 10, "device stamps")
                assert {(s.signal, s.value, s.ts) for s in sink.samples[2:]} == {
                    ("state", 1, clock),
                    ("mode", 2, clock),
                }
    warnings = [r for r in caplog.records if "holds 0" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every poll nor per value
    assert "holding 4" in warnings[0].getMessage()


async def test_an_impossible_timestamp_is_counted_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ts_us = {"address": 10, "type": "uint64", "unit": "us"}
    async with device() as dev:
        await dev.write("holding", 0, [5, 6])
        await dev.write("holding", 10, [0xFFFF] * 4)  # about 584 000 years after 1970
        sink = ListSink()
        cfg = source_config(dev.port, [reg("state", 0, timestamp=ts_us), reg("mode", 1)])
        with caplog.at_level("WARNING", logger="edge.sources.modbus"):
            async with ModbusSource(cfg, sink) as src:
                await async_wait_until(lambda: src.stats.parse_errors >= 3, 10, "three polls")
                assert sink.values("state") == []
                assert sink.values("mode") == [6]  # the other value is unaffected
                assert src.poll_stats.values_skipped >= 3
    problems = [r for r in caplog.records if "not a date" in r.getMessage()]
    assert len(problems) == 1
