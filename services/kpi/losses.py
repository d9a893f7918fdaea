"""The OEE loss tree: where planned time went, in seconds and in OEE points.

Computed from (summed) components, like the ratios: every loss is a sum of additive parts
or a difference of sums, never an average.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from karkhana.models import MachineState
from services.kpi.components import OeeComponents


@dataclass(frozen=True, slots=True)
class LossTree:
    """Losses in seconds of planned time; ``points`` gives each as OEE points.

    Availability losses: ``breakdowns_s`` (fault), ``setup_s``, ``other_stops_s`` (long
    idle, stopped and off stops not declared external, plus planned time without data) and
    ``external_s`` by cause. Performance losses: ``small_stops_s`` (short stops) and
    ``reduced_speed_s`` (running time, short stops excluded, minus ideal time; negative when
    the machine ran faster than its ideal cycle). Quality losses: ``startup_rejects_s`` and
    ``production_rejects_s`` (rejects times the ideal cycle).
    """

    planned_s: float
    breakdowns_s: float
    setup_s: float
    small_stops_s: float
    reduced_speed_s: float
    startup_rejects_s: float
    production_rejects_s: float
    other_stops_s: float
    external_s: Mapping[str, float]

    @property
    def external_total_s(self) -> float:
        return sum(self.external_s.values())

    def points(self, seconds: float) -> float | None:
        """``seconds`` of loss as OEE points: share of planned time x 100."""
        return seconds / self.planned_s * 100.0 if self.planned_s > 0 else None


def loss_tree(c: OeeComponents) -> LossTree:
    """The six big losses plus other and external stops, from components.

    External causes apply to idle, stopped and off only, so ``external_s`` is a part of
    those states' down time and never of breakdowns or setup.
    """
    fault = c.down_s.get(MachineState.FAULT.value, 0.0)
    setup = c.down_s.get(MachineState.SETUP.value, 0.0)
    return LossTree(
        planned_s=c.planned_s,
        breakdowns_s=fault,
        setup_s=setup,
        small_stops_s=c.short_stop_s,
        reduced_speed_s=c.run_s - c.short_stop_s - c.ideal_s,
        startup_rejects_s=c.startup_reject_s,
        production_rejects_s=c.production_reject_s,
        other_stops_s=c.down_total_s - fault - setup + c.no_data_s - c.external_total_s,
        external_s=MappingProxyType(dict(c.external_s)),
    )
