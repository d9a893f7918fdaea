"""The whole simulated factory at high speed: OPC UA and MQTT devices publish the scenario's
timeline with simulated timestamps, and the ground truth file is written and consistent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from asyncua import Client, Node

from devices import FactorySimulator, SimSettings
from devices.timeutil import from_us, to_us
from karkhana.config.factory import load_factory
from karkhana.models import MachineState
from tests.helpers.servers import Mosquitto, async_wait_until, free_port

pytestmark = pytest.mark.integration

START = datetime(2024, 5, 6, 6, 0, tzinfo=UTC)  # a Monday, shift start (site in UTC)
END = START + timedelta(hours=1)
PLC = "demo/hall/line-1/press-01"
SENSOR = "demo/hall/line-1/oven-01"

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
      shifts:
        - name: a
          start: "06:00"
          end: "14:00"
          breaks: [{{ name: tea, start: "06:30", end: "06:40" }}]
    areas:
      - id: hall
        lines:
          - id: line-1
            machines:
              - {{ id: press-01, ideal_cycle_s: 1.0, state_map: plc }}
              - {{ id: oven-01, ideal_cycle_s: 2.0, state_map: sensor, signals: {{ mode: null }} }}
simulation:
  seed: 3
  opcua_host: 127.0.0.1
  broker: {broker}
  power_outages: [{{ start: "06:45", duration_min: 5 }}]
  machines:
    {plc}: {{ device: opcua, port: {port}, short_stops_per_hour: 40, reject_rate: 0.05 }}
    {sensor}: {{ device: mqtt, topic_prefix: sensors/hall/oven-01, short_stops_per_hour: 20 }}
"""


def _factory_file(tmp_path: Path, broker: str, port: int) -> Path:
    path = tmp_path / "factory.yaml"
    path.write_text(FACTORY.format(broker=broker, port=port, plc=PLC, sensor=SENSOR))
    return path


class Recorder:
    def __init__(self) -> None:
        self.sub: Any = None
        self.items: dict[str, list[tuple[int, Any, datetime]]] = {}

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        ts = data.monitored_item.Value.SourceTimestamp
        name = str(node.nodeid.Identifier).split(".")[-1]
        self.items.setdefault(name, []).append((self.sub.last_sequence_number, val, ts))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _check_components(c: dict[str, Any]) -> None:
    down = sum(c["down_s"].values())
    assert c["planned_s"] == pytest.approx(c["run_s"] + down + c["no_data_s"], abs=1e-6)
    assert c["planned_s"] == pytest.approx(c["calendar_planned_s"] - c["planned_stop_s"])
    assert 0 <= c["good"] <= c["total"]
    assert c["short_stop_s"] <= c["run_s"]
    assert c["availability"] == pytest.approx(c["run_s"] / c["planned_s"])
    perf = c["ideal_s"] / c["run_s"]
    assert c["performance"] == pytest.approx(min(1.0, perf))
    assert c["quality"] == pytest.approx(c["good"] / c["total"])
    assert c["oee"] == pytest.approx(c["availability"] * c["performance"] * c["quality"])


async def test_devices_publish_the_timeline_and_truth_is_consistent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = free_port()
    source = _factory_file(tmp_path, mosquitto.url, port)
    factory = load_factory(source)
    truth_path = tmp_path / "out" / "truth.json"
    # 3 real seconds at 1200x: one simulated hour, 06:00-07:00.
    settings = SimSettings(speed=1200, duration_s=3, start=START, truth_out=truth_path)
    mqtt_messages: list[tuple[str, dict[str, Any]]] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            mqtt_messages.append((str(msg.topic), json.loads(msg.payload)))

    sim = FactorySimulator(factory, settings, source)
    assert sim.end == START + timedelta(hours=1)
    async with (
        sim,
        Client(f"opc.tcp://127.0.0.1:{port}/karkhana/sim/") as client,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="test-listener") as mqtt,
        contextlib.AsyncExitStack() as stack,
    ):
        await mqtt.subscribe("sensors/hall/oven-01/#", qos=1)
        listener = asyncio.create_task(listen(mqtt))
        stack.push_async_callback(_cancel, listener)
        rec = Recorder()
        rec.sub = await client.create_subscription(1000, rec)
        names = ("StateCode", "Mode", "TotalCount", "RejectCount", "Temperature", "Energy")
        nodes = [client.get_node(f"ns=2;s=press-01.{n}") for n in names]
        await rec.sub.subscribe_data_change(nodes, queuesize=1000)
        await async_wait_until(lambda: len(rec.items) == len(names), 10, "initial values")
        # Before the clock runs, a reader already sees the values at the simulated start,
        # never a wall-clock timestamp.
        assert {items[0][2] for items in rec.items.values()} == {START}

        await sim.run()
        assert sim.now() == sim.end

        # Expected timelines come from the scenario engine (the simulator's own ground truth).
        end_us = to_us(START + timedelta(hours=1))
        plc_sc = next(m.scenario for m in sim._machines if m.ref.path == PLC)
        oven_sc = next(m.scenario for m in sim._machines if m.ref.path == SENSOR)
        expected_plc = [(START, plc_sc.state_at(to_us(START)))] + [
            (from_us(t), s) for t, s in plc_sc.state_changes(to_us(START), end_us)
        ]
        plc_codes = {0: "off", 1: "running", 2: "idle", 3: "stopped", 4: "fault", 5: "setup"}

        def plc_states() -> list[tuple[datetime, MachineState]]:
            return [
                (ts, MachineState(plc_codes[v]))
                for _, v, ts in rec.items["StateCode"]
                if ts is not None and START <= ts <= END
            ]

        await async_wait_until(
            lambda: len(plc_states()) >= len(expected_plc), 10, "every PLC state change"
        )
        assert plc_states() == expected_plc
        assert len(expected_plc) > 20  # 40 short stops an hour, a break, an outage
        states = {s for _, s in expected_plc}
        assert {MachineState.STOPPED, MachineState.IDLE, MachineState.OFF} <= states
        # Several state changes travelled in one publish response, in order.
        per_publish: dict[int, int] = {}
        for seq, _, ts in rec.items["StateCode"]:
            if ts is not None and START <= ts <= END:
                per_publish[seq] = per_publish.get(seq, 0) + 1
        assert max(per_publish.values()) >= 3

        truth = json.loads(truth_path.read_text()) if truth_path.exists() else None
        assert truth is None  # written when the simulator closes

        # Counters: the last value carries the time of the last unit before the end.
        units, rejects, last_unit, _ = plc_sc.counts_before(end_us)

        def counter(name: str) -> list[tuple[Any, datetime]]:
            items = rec.items[name]
            return [(v, ts) for _, v, ts in items if ts is not None and START <= ts <= END]

        await async_wait_until(
            lambda: counter("TotalCount")[-1][1] == from_us(last_unit or 0), 10, "last count"
        )
        totals = counter("TotalCount")
        assert totals[0][1] == START
        assert totals[-1][0] - totals[0][0] == units
        assert [v for v, _ in totals] == sorted(v for v, _ in totals)
        rejects_seen = counter("RejectCount")
        await async_wait_until(
            lambda: counter("RejectCount")[-1][0] - rejects_seen[0][0] == rejects, 10, "rejects"
        )
        modes = {v for _, v, ts in rec.items["Mode"] if ts is not None and START <= ts <= END}
        assert 1 in modes

        # MQTT sensors: JSON {"value", "ts"} per signal; state as text codes.
        expected_oven = [(START, oven_sc.state_at(to_us(START)))] + [
            (from_us(t), s) for t, s in oven_sc.state_changes(to_us(START), end_us)
        ]
        text = {
            "RUN": "running",
            "IDLE": "idle",
            "STOP": "stopped",
            "ALARM": "fault",
            "SETUP": "setup",
            "OFF": "off",
        }

        def oven_states() -> list[tuple[datetime, MachineState]]:
            return [
                (datetime.fromisoformat(p["ts"]), MachineState(text[p["value"]]))
                for t, p in mqtt_messages
                if t.endswith("/state")
            ]

        await async_wait_until(
            lambda: len(oven_states()) >= len(expected_oven), 10, "every sensor state"
        )
        assert oven_states() == expected_oven
        signals = {t.rsplit("/", 1)[1] for t, _ in mqtt_messages}
        assert signals == {
            "state",
            "count_total",
            "count_reject",
            "speed",
            "temperature",
            "power",
            "energy",
        }
        assert all(p["ts"].endswith("Z") for _, p in mqtt_messages)
        oven_units = oven_sc.counts_before(end_us)
        counts = [p for t, p in mqtt_messages if t.endswith("/count_total")]
        assert counts[-1]["value"] - counts[0]["value"] == oven_units[0]
        assert datetime.fromisoformat(counts[-1]["ts"]) == from_us(oven_units[2] or 0)

    truth = json.loads(truth_path.read_text())
    assert truth["from"] == "2024-05-06T06:00:00Z"
    assert truth["to"] == "2024-05-06T07:00:00Z"
    assert truth["speed"] == 1200 and truth["seed"] == 3
    assert set(truth["machines"]) == {PLC, SENSOR}
    for comp in truth["machines"].values():
        _check_components(comp)
        # By hand: one hour minus the 10-min break; the 5-min outage is off time.
        assert comp["calendar_planned_s"] == 3000.0
        assert comp["down_s"]["off"] == 300.0
    assert truth["machines"][PLC]["total"] == units
    assert truth["machines"][PLC]["reject"] == rejects
    line = truth["lines"]["demo/hall/line-1"]
    _check_components(line)
    assert line["total"] == sum(c["total"] for c in truth["machines"].values())
    assert line["planned_s"] == 6000.0


async def test_cancelled_run_writes_truth_for_the_time_simulated(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    source = _factory_file(tmp_path, mosquitto.url, free_port())
    truth_path = tmp_path / "truth.json"
    settings = SimSettings(speed=600, start=START, truth_out=truth_path)  # no end time
    async with FactorySimulator(load_factory(source), settings, source) as sim:
        assert sim.end is None
        task = asyncio.create_task(sim.run())
        await async_wait_until(lambda: sim.machine_status()[PLC].total > 100, 20, "units produced")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        status = sim.machine_status()
        stopped_at = sim.now()
    truth = json.loads(truth_path.read_text())
    assert datetime.fromisoformat(truth["from"]) == START
    assert datetime.fromisoformat(truth["to"]) == stopped_at
    assert truth["machines"][PLC]["total"] == status[PLC].total
    assert truth["machines"][PLC]["good"] == status[PLC].good
    for comp in truth["machines"].values():
        down = sum(comp["down_s"].values())
        assert comp["planned_s"] == pytest.approx(comp["run_s"] + down, abs=1e-6)
    leftovers = [p.name for p in os.scandir(tmp_path) if p.name.startswith(".truth.json.")]
    assert leftovers == []  # no temporary file left behind
