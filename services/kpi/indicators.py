"""Reliability, yield, throughput, energy and automation KPIs from (summed) components.

Like the OEE ratios they are computed last from sums, never averaged; ``None`` where the
denominator is zero (or where the data has no such signal).
"""

from __future__ import annotations

from dataclasses import dataclass

from karkhana.models import MachineState
from services.kpi.components import OeeComponents

_HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class Indicators:
    """docs/kpi.md, "More KPIs". Times in seconds, rates per hour of run time."""

    failures: float
    mtbf_s: float | None  # run time / failures
    mttr_s: float | None  # breakdown (fault) time / failures
    first_pass_yield: float | None  # good / total
    scrap_ratio: float | None  # rejects / total
    throughput_per_h: float | None  # total / run time
    energy_kwh: float
    energy_per_good_kwh: float | None  # energy / good
    automation_rate: float | None  # run time in auto / run time with a known mode
    manual_interventions: float
    manual_interventions_per_h: float | None  # per hour of run time with a known mode
    data_completeness: float | None  # covered / window


def _div(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def compute_indicators(c: OeeComponents) -> Indicators:
    rejects = c.total - c.good
    return Indicators(
        failures=c.failures,
        mtbf_s=_div(c.run_s, c.failures),
        mttr_s=_div(c.down_s.get(MachineState.FAULT.value, 0.0), c.failures),
        first_pass_yield=_div(c.good, c.total),
        scrap_ratio=_div(rejects, c.total),
        throughput_per_h=_div(c.total * _HOUR_S, c.run_s),
        energy_kwh=c.energy_kwh,
        energy_per_good_kwh=_div(c.energy_kwh, c.good),
        automation_rate=_div(c.auto_run_s, c.mode_run_s),
        manual_interventions=c.manual_interventions,
        manual_interventions_per_h=_div(c.manual_interventions * _HOUR_S, c.mode_run_s),
        data_completeness=_div(c.covered_s, c.window_s),
    )
