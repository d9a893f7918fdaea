"""What the simulator hands to a device: one value of one signal at its simulated time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from karkhana.models import MachineState

# Edge signal names every simulated device publishes (mode only on OPC UA PLCs).
SIGNALS = (
    "state",
    "mode",
    "count_total",
    "count_reject",
    "speed",
    "temperature",
    "power",
    "energy",
)


@dataclass(frozen=True, slots=True)
class SignalUpdate:
    signal: str  # one of SIGNALS
    value: MachineState | int | float | str
    ts: datetime  # simulated time, aware UTC


def numeric_value(
    update: SignalUpdate, state_codes: dict[MachineState, int | str], mode_codes: dict[str, int]
) -> int | float:
    """The number a PLC register or variable holds for ``update`` (states and modes as codes)."""
    if update.signal == "state":
        assert isinstance(update.value, MachineState)
        return int(state_codes[update.value])
    if update.signal == "mode":
        return mode_codes[str(update.value)]
    assert not isinstance(update.value, str | MachineState)
    return update.value


class Device(Protocol):
    """A simulated device: publishes updates in the order given, each with its timestamp."""

    @property
    def endpoint(self) -> str: ...

    async def publish(self, updates: Sequence[SignalUpdate]) -> None: ...
