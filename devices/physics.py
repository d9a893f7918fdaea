"""Analogue signals of a simulated machine: power, energy and a noisy temperature."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from devices.scenario import Segment
from devices.timeutil import US
from karkhana.models import MachineState

# Share of the rated power drawn in each state (running scales with the speed).
_POWER_SHARE = {
    MachineState.IDLE: 0.15,
    MachineState.STOPPED: 0.15,
    MachineState.FAULT: 0.08,
    MachineState.SETUP: 0.25,
    MachineState.PLANNED_STOP: 0.05,
    MachineState.OFF: 0.0,
}
_TEMPERATURE_C = {
    MachineState.RUNNING: 68.0,
    MachineState.IDLE: 42.0,
    MachineState.STOPPED: 48.0,
    MachineState.FAULT: 40.0,
    MachineState.SETUP: 38.0,
    MachineState.PLANNED_STOP: 32.0,
    MachineState.OFF: 27.0,
}
_THERMAL_TAU_S = 600.0


def nominal_power_kw(seg: Segment, rated_kw: float) -> float:
    """Power drawn during a segment (kW), constant over the segment."""
    if seg.state is MachineState.RUNNING:
        return rated_kw * (0.4 + 0.6 * seg.speed_ratio)
    return rated_kw * _POWER_SHARE[seg.state]


def energy_kwh(segments: list[Segment], rated_kw: float) -> float:
    """Energy used over (already clipped) segments, kWh."""
    return sum(nominal_power_kw(s, rated_kw) * (s.end - s.start) / US / 3600 for s in segments)


@dataclass
class Thermal:
    """First-order temperature model with a little sensor noise."""

    rng: random.Random
    value_c: float = _TEMPERATURE_C[MachineState.OFF]

    def step(self, state: MachineState, dt_s: float) -> float:
        target = _TEMPERATURE_C[state]
        self.value_c += (target - self.value_c) * (1.0 - math.exp(-dt_s / _THERMAL_TAU_S))
        return round(self.value_c + self.rng.gauss(0.0, 0.3), 2)


def measured_power_kw(seg: Segment, rated_kw: float, rng: random.Random) -> float:
    nominal = nominal_power_kw(seg, rated_kw)
    if nominal == 0.0:
        return 0.0
    return round(max(0.0, nominal * (1.0 + rng.gauss(0.0, 0.02))), 3)
