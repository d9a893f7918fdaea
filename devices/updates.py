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


class Device(Protocol):
    """A simulated device: publishes updates in the order given, each with its timestamp."""

    @property
    def endpoint(self) -> str: ...

    async def publish(self, updates: Sequence[SignalUpdate]) -> None: ...
