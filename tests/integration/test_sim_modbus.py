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


async def test_register_map_holds_the_published_values() -> None:
    port = free_port()
    async with ModbusPlc("loom-01", "127.0.0.1", port, CODES, {"auto": 1, "manual": 0}) as plc:
        assert plc.endpoint == f"modbus://127.0.0.1:{port}"
        await plc.publish(
            [
                SignalUpdate("state", S.RUNNING, T0),
                SignalUpdate("state", S.FAULT, T0 + timedelta(seconds=1)),  # the last one wins
                SignalUpdate("mode", "manual", T0),
                SignalUpdate("count_total", 1_234_567, T0),
                SignalUpdate("count_reject", 70_000, T0),
                SignalUpdate("speed", 112.5, T0),
                SignalUpdate("temperature", -7.25, T0),
                SignalUpdate("power", 6.0, T0),
                SignalUpdate("energy", 40_000.5, T0),
            ]
        )
        regs = await read_holding(port, 14)
    raw = struct.pack(">14H", *regs)
    # Worked out by hand: 1_234_567 = 0x0012D687, 70_000 = 0x00011170.
    assert regs[:6] == [4, 0, 0x0012, 0xD687, 0x0001, 0x1170]
    assert struct.unpack(">4f", raw[12:28]) == (112.5, -7.25, 6.0, 40_000.5)


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
