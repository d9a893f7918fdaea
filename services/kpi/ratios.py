"""Ratios from (summed) components: computed last, never averaged."""

from __future__ import annotations

from dataclasses import dataclass

from services.kpi.components import OeeComponents

PERFORMANCE_CAPPED = "performance_capped"


@dataclass(frozen=True, slots=True)
class OeeRatios:
    """Fractions in 0..1; ``None`` where the denominator is zero."""

    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    coverage: float | None
    flags: frozenset[str]


def _div(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def compute_ratios(c: OeeComponents) -> OeeRatios:
    """Availability = run/planned, Performance = ideal/run (capped at 1, flagged),
    Quality = good/total, OEE = A x P x Q, coverage = covered/window."""
    flags = set(c.flags)
    availability = _div(c.run_s, c.planned_s)
    performance = _div(c.ideal_s, c.run_s)
    if performance is not None and performance > 1.0:
        performance = 1.0
        flags.add(PERFORMANCE_CAPPED)
    quality = _div(c.good, c.total)
    oee = (
        availability * performance * quality
        if availability is not None and performance is not None and quality is not None
        else None
    )
    return OeeRatios(
        availability=availability,
        performance=performance,
        quality=quality,
        oee=oee,
        coverage=_div(c.covered_s, c.window_s),
        flags=frozenset(flags),
    )
