"""The simulator's MQTT control hook with a real broker: a forced fault is answered, the
device publishes it at the answered time, and the ground truth counts it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from devices import FactorySimulator, SimSettings
from devices.control import CONTROL_TOPIC, RESULT_TOPIC
from karkhana.config.factory import load_factory
from karkhana.models import MachineState
from tests.helpers.servers import Mosquitto, async_wait_until

pytestmark = pytest.mark.integration

START = datetime(2024, 5, 6, 6, 0, tzinfo=UTC)  # a Monday, shift start (site in UTC)
OVEN = "demo/hall/line-1/oven-01"
FACTORY = """
version: 1
state_maps:
  sensor: {{RUN: running, IDLE: idle, STOP: stopped, ALARM: fault, SETUP: setup, OFF: off}}
sites:
  - id: demo
    timezone: UTC
    calendar: {{shifts: [{{name: a, start: "06:00", end: "14:00"}}]}}
    areas:
      - id: hall
        lines:
          - id: line-1
            machines:
              - {{ id: oven-01, ideal_cycle_s: 2.0, state_map: sensor, signals: {{ mode: null }} }}
simulation:
  seed: 3
  broker: {broker}
  machines:
    {oven}:
      device: mqtt
      topic_prefix: sensors/oven-01
      breakdowns_per_hour: 0
      short_stops_per_hour: 0
      changeovers_per_shift: 0
      idle_per_shift: 0
"""


async def test_forced_fault_is_published_and_in_the_truth(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    source = tmp_path / "factory.yaml"
    source.write_text(FACTORY.format(broker=mosquitto.url, oven=OVEN))
    factory = load_factory(source)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            seen.append((str(msg.topic), json.loads(msg.payload)))

    sim = FactorySimulator(factory, SimSettings(speed=60, start=START), source)
    async with (
        sim,
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="test-control") as mqtt,
    ):
        await mqtt.subscribe(RESULT_TOPIC, qos=1)
        await mqtt.subscribe("sensors/oven-01/state", qos=1)
        listener = asyncio.create_task(listen(mqtt))
        runner = asyncio.create_task(sim.run())
        try:
            results = lambda: [p for t, p in seen if t == RESULT_TOPIC]  # noqa: E731
            request = {"command": "force_state", "machine": OVEN, "state": "fault"}
            # The simulator subscribes in the background: ask until it answers.
            while not results():
                await mqtt.publish(
                    CONTROL_TOPIC, json.dumps({**request, "id": "bad", "duration_s": -1}), qos=1
                )
                await asyncio.sleep(0.2)
            assert results()[0]["ok"] is False and "duration_s" in results()[0]["error"]

            await mqtt.publish(
                CONTROL_TOPIC, json.dumps({**request, "id": "f1", "duration_s": 600}), qos=1
            )
            await async_wait_until(
                lambda: any(r["id"] == "f1" for r in results()), 10, "the answer to f1"
            )
            answer = next(r for r in results() if r["id"] == "f1")
            assert answer["ok"] is True, answer
            start = datetime.fromisoformat(answer["from"])
            end = datetime.fromisoformat(answer["to"])
            assert end - start == timedelta(seconds=600)

            def alarm_published() -> bool:
                return any(
                    t == "sensors/oven-01/state" and p == {"value": "ALARM", "ts": answer["from"]}
                    for t, p in seen
                )

            await async_wait_until(alarm_published, 10, "the forced fault on the sensor topic")
            # The status follows the published time, which may still sit on the fault's
            # first instant when the message arrives: wait until it has moved past it.
            await async_wait_until(
                lambda: sim.machine_status()[OVEN].state is MachineState.FAULT,
                10,
                "the forced fault in the simulator's status",
            )
        finally:
            for task in (runner, listener):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        truth = sim.truth().machines[OVEN]
        # Nothing but running in the scenario: every stopped second is the forced fault: a
        # short stop while it has lasted less than the 120 s threshold when cut off (two
        # seconds of wall time at x60; a slow machine may take longer), else a fault.
        forced = min(sim.now(), end) - start
        forced_us = forced // timedelta(microseconds=1)
        if forced < timedelta(seconds=120):
            assert (truth.short_stop_us, sum(truth.down_us.values())) == (forced_us, 0)
        else:
            down = truth.down_us
            assert (truth.short_stop_us, down[MachineState.FAULT], sum(down.values())) == (
                0,
                forced_us,
                forced_us,
            )
