"""A simulated PLC delivers every write, with its own SourceTimestamp, in order — even when
several writes fall between two publish cycles of the client's subscription."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import Client, Node

from devices.opcua_plc import OpcUaPlc
from devices.updates import SignalUpdate
from karkhana.models import MachineState as S
from tests.helpers.servers import async_wait_until, free_port

pytestmark = pytest.mark.integration

CODES: dict[S, int | str] = {
    S.OFF: 0,
    S.RUNNING: 1,
    S.IDLE: 2,
    S.STOPPED: 3,
    S.FAULT: 4,
    S.SETUP: 5,
    S.PLANNED_STOP: 6,
}


class Recorder:
    def __init__(self) -> None:
        self.sub: Any = None
        self.items: list[tuple[int, Any, datetime | None]] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        # The sequence number of the publish response that carried this notification.
        self.items.append((self.sub.last_sequence_number, val, dv.SourceTimestamp))


async def test_writes_between_two_publish_cycles_all_arrive_in_order() -> None:
    port = free_port()
    plc = OpcUaPlc("loom-01", "127.0.0.1", port, CODES, {"auto": 1, "manual": 0})
    async with plc, Client(plc.endpoint) as client:
        rec = Recorder()
        # A long publishing interval: every write below lands between two publish cycles.
        sub = await client.create_subscription(1000, rec)
        rec.sub = sub
        node = client.get_node("ns=2;s=loom-01.StateCode")
        await sub.subscribe_data_change(node, queuesize=1000)
        await async_wait_until(lambda: len(rec.items) >= 1, 10, "the initial value")
        t0 = datetime(2024, 5, 6, 1, 0, tzinfo=UTC)
        states = [S.RUNNING, S.STOPPED, S.RUNNING, S.FAULT, S.SETUP, S.RUNNING]
        await plc.publish(
            [SignalUpdate("state", st, t0 + timedelta(seconds=i)) for i, st in enumerate(states)]
        )
        await async_wait_until(lambda: len(rec.items) >= 7, 10, "six state changes")
        got = rec.items[1:]
        assert [v for _, v, _ in got] == [1, 3, 1, 4, 5, 1]
        assert [ts for _, _, ts in got] == [t0 + timedelta(seconds=i) for i in range(6)]
        # All six came in one publish response.
        assert len({seq for seq, _, _ in got}) == 1
