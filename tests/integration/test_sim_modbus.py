"""The simulated Modbus PLC: its register map, and a simulated factory read by the edge's
Modbus source, checked against the simulator's own counts."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from devices import FactorySimulator, SimSettings, edge_config_for
from devices.modbus_plc import ModbusPlc
from devices.timeutil import from_us, to_us
from devices.updates import SignalUpdate
from edge import EdgeConfig
from edge.modbus_config import ModbusSourceConfig
from edge.sources.modbus import ModbusSource
from karkhana.config.factory import load_factory
from karkhana.errors import ConfigError
from karkhana.models import MachineState as S
from karkhana.models import Sample
from tests.helpers.servers import async_wait_until, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CODES: dict[S, int | str] = {
    S.OFF: 0,
    S.RUNNING: 1,
    S.IDLE: 2,
    S.STOPPED: 3,
    S.FAULT: 4,
    S.SETUP: 5,
    S.PLANNED_STOP: 6,
}
T0 = datetime(2024, 5, 6, 6, 0, tzinfo=UTC)


async def read_holding(port: int, count: int) -> list[int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await client.connect()
        rr = await client.read_holding_registers(0, count=count, device_id=1)
        assert not rr.isError(), rr
        return list(rr.registers)
    finally:
        client.close()


T0_MS = 1_714_975_200_000  # `date -u -d 2024-05-06T06:00:00Z +%s%3N`


def ms_words(ms: int) -> list[int]:
    return list(struct.unpack(">4H", struct.pack(">Q", ms)))


async def test_register_map_holds_the_published_values() -> None:
    port = free_port()
    async with ModbusPlc("loom-01", "127.0.0.1", port, CODES, {"auto": 1, "manual": 0}) as plc:
        assert plc.endpoint == f"modbus://127.0.0.1:{port}"
        # Before the first publish every register, timestamps included, is 0.
        assert await read_holding(port, 77) == [0] * 77
        later = T0 + timedelta(seconds=1, microseconds=2_999)  # 1002.999 ms: stored as 1002
        await plc.publish(
            [
                SignalUpdate("state", S.RUNNING, T0),
                SignalUpdate("state", S.FAULT, later),  # the last one wins, with its time
                SignalUpdate("mode", "manual", T0),
                SignalUpdate("count_total", 1_234_567, T0 + timedelta(milliseconds=7)),
                SignalUpdate("count_reject", 70_000, T0),
                SignalUpdate("speed", 112.5, T0),
                SignalUpdate("temperature", 41.3, T0),
                SignalUpdate("power", 6.0, T0),
                SignalUpdate("energy", 40_000.5, T0),
            ]
        )
        regs = await read_holding(port, 77)
    raw = struct.pack(">77H", *regs)
    # Worked out by hand: 1_234_567 = 0x0012D687, 70_000 = 0x00011170.
    assert regs[:6] == [4, 0, 0x0012, 0xD687, 0x0001, 0x1170]
    assert struct.unpack(">4f", raw[12:28]) == (
        112.5,
        struct.unpack(">f", b"\x42\x25\x33\x33")[0],
        6.0,
        40_000.5,
    )
    # "Changed at" timestamps: uint64 ms, most significant word first, at 14 + 4 * i.
    assert regs[14:18] == ms_words(T0_MS + 1_002)
    assert regs[18:22] == ms_words(T0_MS)
    assert regs[22:26] == ms_words(T0_MS + 7)
    for first in range(26, 46, 4):
        assert regs[first : first + 4] == ms_words(T0_MS)
    # Data type test block: 41.3 degC = float32 0x42253333 in four layouts, 413 tenths =
    # 0x019D, (41.3 - 50) * 10 = -87 = 0xFFA9; the counter 0x0012D687 in four layouts as
    # int32 and as uint32; the state code 4 in both byte orders as int16 and as uint16.
    assert regs[46:54] == [0x4225, 0x3333, 0x3333, 0x4225, 0x2542, 0x3333, 0x3333, 0x2542]
    assert regs[54:57] == [0x019D, 0x9D01, 0xFFA9]
    counter = [0x0012, 0xD687, 0xD687, 0x0012, 0x1200, 0x87D6, 0x87D6, 0x1200]
    assert regs[57:65] == counter
    assert regs[65:73] == counter
    assert regs[73:77] == [0x0004, 0x0400, 0x0004, 0x0400]


FACTORY = """
version: 1
short_stop_threshold_s: 120
state_maps:
  plc: {{0: off, 1: running, 2: idle, 3: stopped, 4: fault, 5: setup, 6: planned_stop}}
  sensor: {{RUN: running, IDLE: idle, STOP: stopped, ALARM: fault, SETUP: setup, OFF: off}}
sites:
  - id: demo
    timezone: UTC
    calendar:
      shifts: [{{ name: a, start: "06:00", end: "14:00" }}]
    areas:
      - id: hall
        lines:
          - id: line-1
            machines:
              - {{ id: press-01, ideal_cycle_s: 1.0, state_map: {state_map} }}
simulation:
  seed: 5
  machines:
    demo/hall/line-1/press-01: {{ device: modbus, port: {port}, short_stops_per_hour: 60 }}
"""
PRESS = "demo/hall/line-1/press-01"


def factory_file(tmp_path: Path, port: int, state_map: str = "plc") -> Path:
    path = tmp_path / "factory.yaml"
    path.write_text(FACTORY.format(port=port, state_map=state_map))
    return path


class ListSink:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    async def put(self, sample: Sample) -> None:
        self.samples.append(sample)

    async def dead_letter(self, letter: object) -> None:
        raise AssertionError(f"unexpected dead letter {letter}")

    def source_state_changed(self) -> None:
        pass

    def values(self, signal: str) -> list[Any]:
        return [s.value for s in self.samples if s.signal == signal]


async def test_edge_reads_a_simulated_modbus_machine(tmp_path: Path) -> None:
    port = free_port()
    path = factory_file(tmp_path, port)
    factory = load_factory(path)
    generated = edge_config_for(
        factory, agent_id="a", broker="mqtt://127.0.0.1:1883", buffer_path="b.sqlite", source=path
    )
    (src_cfg,) = EdgeConfig.model_validate(generated).sources
    assert isinstance(src_cfg, ModbusSourceConfig)
    assert src_cfg.port == port
    assert [(r.signal, r.address, r.type) for r in src_cfg.registers] == [
        ("state", 0, "uint16"),
        ("mode", 1, "uint16"),
        ("count_total", 2, "uint32"),
        ("count_reject", 4, "uint32"),
        ("speed", 6, "float32"),
        ("temperature", 8, "float32"),
        ("power", 10, "float32"),
        ("energy", 12, "float32"),
    ]
    # 2 real seconds at 900x: half an hour of production, with short stops.
    settings = SimSettings(speed=900, duration_s=2, start=T0)
    sink = ListSink()
    async with FactorySimulator(factory, settings, path) as sim:
        assert sim.endpoints == {PRESS: f"modbus://127.0.0.1:{port}"}
        async with ModbusSource(src_cfg, sink) as source:
            # The first poll shows the values at the start time, before the clock runs.
            await async_wait_until(lambda: len(sink.samples) == 8, 10, "the start values")
            first_total = sink.values("count_total")[0]
            await sim.run()
            status = sim.machine_status()[PRESS]
            expected_total = first_total + status.total
            expected_state = CODES[status.state]
            await async_wait_until(
                lambda: (
                    sink.values("count_total")[-1] == expected_total
                    and sink.values("state")[-1] == expected_state
                ),
                10,
                "the final counter and state",
            )
            assert source.poll_stats.read_failures == 0
    totals = sink.values("count_total")
    assert totals == sorted(totals)  # a counter never goes back
    assert all(isinstance(v, int) for v in totals)
    # Several state changes were seen (60 short stops per hour over half an hour).
    assert len(sink.values("state")) > 3
    assert set(sink.values("state")) <= set(CODES.values())


def test_modbus_machine_needs_integer_state_codes(tmp_path: Path) -> None:
    path = factory_file(tmp_path, free_port(), state_map="sensor")
    factory = load_factory(path)
    with pytest.raises(ConfigError) as info:
        edge_config_for(factory, agent_id="a", broker="mqtt://h:1883", buffer_path="b", source=path)
    assert info.value.key_path == f"simulation.machines.{PRESS}.device"
    assert "integer code" in info.value.problem


# --- the simulated loom read by the edge: every type and layout, with device time ---------

LOOM_FACTORY = """
version: 1
short_stop_threshold_s: 120
state_maps:
  plc: {{0: off, 1: running, 2: idle, 3: stopped, 4: fault, 5: setup, 6: planned_stop}}
sites:
  - id: demo
    timezone: UTC
    calendar:
      shifts:
        - name: a
          start: "06:00"
          end: "14:00"
          breaks: [{{ name: tea, start: "06:40", end: "06:55" }}]
    areas:
      - id: hall
        lines:
          - id: line-1
            machines:
              - {{ id: loom-09, ideal_cycle_s: 0.7, state_map: plc }}
simulation:
  seed: 11
  machines:
    demo/hall/line-1/loom-09:
      device: modbus
      port: {port}
      short_stops_per_hour: 0
      breakdowns_per_hour: 3
      repair_min: 6
      changeovers_per_shift: 10
      changeover_min: 8
"""
LOOM = "demo/hall/line-1/loom-09"
MODES = {"auto": 1, "manual": 0}  # the default mode_map of factory.yaml

# The data type test block as docs/simulator.md documents it:
# (signal, address, type, byte_order, word_order, scale, offset, mirrored signal).
TYPE_TEST_BLOCK: list[tuple[str, int, str, str, str, float, float, str]] = [
    ("t_f32_bb", 46, "float32", "big", "big", 1.0, 0.0, "temperature"),
    ("t_f32_bl", 48, "float32", "big", "little", 1.0, 0.0, "temperature"),
    ("t_f32_lb", 50, "float32", "little", "big", 1.0, 0.0, "temperature"),
    ("t_f32_ll", 52, "float32", "little", "little", 1.0, 0.0, "temperature"),
    ("t_i16_b", 54, "int16", "big", "big", 0.1, 0.0, "temperature"),
    ("t_i16_l", 55, "int16", "little", "big", 0.1, 0.0, "temperature"),
    ("t_i16_off", 56, "int16", "big", "big", 0.1, 50.0, "temperature"),
    ("n_i32_bb", 57, "int32", "big", "big", 1.0, 0.0, "count_total"),
    ("n_i32_bl", 59, "int32", "big", "little", 1.0, 0.0, "count_total"),
    ("n_i32_lb", 61, "int32", "little", "big", 1.0, 0.0, "count_total"),
    ("n_i32_ll", 63, "int32", "little", "little", 1.0, 0.0, "count_total"),
    ("n_u32_bb", 65, "uint32", "big", "big", 1.0, 0.0, "count_total"),
    ("n_u32_bl", 67, "uint32", "big", "little", 1.0, 0.0, "count_total"),
    ("n_u32_lb", 69, "uint32", "little", "big", 1.0, 0.0, "count_total"),
    ("n_u32_ll", 71, "uint32", "little", "little", 1.0, 0.0, "count_total"),
    ("s_i16_b", 73, "int16", "big", "big", 1.0, 0.0, "state"),
    ("s_i16_l", 74, "int16", "little", "big", 1.0, 0.0, "state"),
    ("s_u16_b", 75, "uint16", "big", "big", 1.0, 0.0, "state"),
    ("s_u16_l", 76, "uint16", "little", "big", 1.0, 0.0, "state"),
]


def device_ms(ts: datetime) -> datetime:
    """``ts`` as the PLC keeps it: whole milliseconds."""
    return from_us(to_us(ts) // 1000 * 1000)


def plc_number(update: SignalUpdate) -> int | float:
    if isinstance(update.value, S):
        return int(CODES[update.value])
    if update.signal == "mode":
        return MODES[str(update.value)]
    assert not isinstance(update.value, str)
    return update.value


def check_value(got: Any, expected: int | float, value_type: str, scale: float) -> None:
    if value_type == "float32":  # about 7 significant digits
        assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-6)
    elif scale != 1.0:  # tenths: the PLC rounds to the nearest one
        assert isinstance(got, float) and got == pytest.approx(expected, abs=0.05 + 1e-9)
    else:
        assert type(got) is int and got == expected


async def test_simulated_modbus_loom_arrives_typed_scaled_and_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[list[SignalUpdate]] = []  # what the simulator wrote, publish by publish
    original = ModbusPlc.publish

    async def recording(plc: ModbusPlc, updates: list[SignalUpdate]) -> None:
        published.append(list(updates))
        await original(plc, updates)

    monkeypatch.setattr(ModbusPlc, "publish", recording)
    port = free_port()
    path = tmp_path / "factory.yaml"
    path.write_text(LOOM_FACTORY.format(port=port))
    factory = load_factory(path)
    generated = edge_config_for(
        factory, agent_id="a", broker="mqtt://127.0.0.1:1883", buffer_path="b.sqlite", source=path
    )
    (source,) = generated["sources"]
    stamps = {r["signal"]: r["timestamp"] for r in source["registers"]}
    for name, address, vtype, byte_order, word_order, scale, offset, mirrors in TYPE_TEST_BLOCK:
        source["registers"].append(
            {
                "asset": LOOM,
                "signal": name,
                "table": "holding",
                "address": address,
                "type": vtype,
                "byte_order": byte_order,
                "word_order": word_order,
                "scale": scale,
                "offset": offset,
                "timestamp": stamps[mirrors],  # a test value shares its signal's timestamp
            }
        )
    (src_cfg,) = EdgeConfig.model_validate(generated).sources
    assert isinstance(src_cfg, ModbusSourceConfig)
    signals = [r.signal for r in src_cfg.registers]

    # 3 real seconds at 1200x: the first simulated hour, 4 minutes per tick.
    settings = SimSettings(speed=1200, duration_s=3, start=T0, tick_hz=5)
    sink = ListSink()
    async with (
        FactorySimulator(factory, settings, path) as sim,
        ModbusSource(src_cfg, sink) as modbus,
    ):
        await async_wait_until(
            lambda: {s.signal for s in sink.samples} == set(signals), 10, "the start values"
        )
        await sim.run()
        final = {u.signal: u for batch in published for u in batch}

        def latest(signal: str) -> Sample:
            return [s for s in sink.samples if s.signal == signal][-1]

        await async_wait_until(
            lambda: all(
                latest(sig).ts == device_ms(final[sig].ts)
                and latest(sig).value == pytest.approx(plc_number(final[sig]), rel=1e-6)
                for sig in final
            ),
            10,
            "the final values",
        )
        await async_wait_until(
            lambda: all(
                latest(name).ts == device_ms(final[m].ts) for name, *_, m in TYPE_TEST_BLOCK
            ),
            10,
            "the final test block",
        )
        stats = modbus.poll_stats
        assert stats.read_failures == 0 and stats.parse_errors == 0
        # Values, timestamps and the test block are contiguous: one request per poll.
        assert stats.polls - 1 <= stats.reads <= stats.polls

    # Every reading of every register, during the run and at its end, is the value the
    # simulator wrote with the time the edge got, typed and scaled.
    written = {(u.signal, device_ms(u.ts)): plc_number(u) for b in published for u in b}
    layouts = {
        "state": ("state", "uint16", 1.0),
        "mode": ("mode", "uint16", 1.0),
        "count_total": ("count_total", "uint32", 1.0),
        "count_reject": ("count_reject", "uint32", 1.0),
        "speed": ("speed", "float32", 1.0),
        "temperature": ("temperature", "float32", 1.0),
        "power": ("power", "float32", 1.0),
        "energy": ("energy", "float32", 1.0),
    } | {
        name: (mirrors, vtype, scale) for name, _, vtype, *_, scale, _o, mirrors in TYPE_TEST_BLOCK
    }
    for sample in sink.samples:
        mirrors, vtype, scale = layouts[sample.signal]
        check_value(sample.value, written[(mirrors, sample.ts)], vtype, scale)
    for signal, unit in (("speed", "units/min"), ("temperature", "degC"), ("energy", "kWh")):
        assert {s.unit for s in sink.samples if s.signal == signal} == {unit}
    below_50 = [s for s in sink.samples if s.signal == "t_i16_off" and s.value < 50]
    assert below_50 and len(below_50) < len(sink.values("t_i16_off"))  # raw went negative
    for name, *_, mirrors in TYPE_TEST_BLOCK:
        assert latest(name).ts == device_ms(final[mirrors].ts)

    # A register shows the last value of each publish; the edge saw each one, stamped with
    # the simulated time of the change, not with its own clock.
    for signal in ("state", "mode"):
        expected = []
        for batch in published:
            last = [u for u in batch if u.signal == signal][-1:]
            expected += [(plc_number(u), device_ms(u.ts)) for u in last]
        seen = [(s.value, s.ts) for s in sink.samples if s.signal == signal]
        assert seen == expected, signal
    states = [plc_number(u) for b in published for u in b if u.signal == "state"]
    assert len(states) >= 5 and {1, 2, 4, 5} <= set(states)  # running, idle, fault, setup
    counts = {
        (plc_number(u), device_ms(u.ts)) for b in published for u in b if u.signal == "count_total"
    }
    assert {(s.value, s.ts) for s in sink.samples if s.signal == "count_total"} <= counts
