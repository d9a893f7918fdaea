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
    # Availability and OEE with external losses removed from planned time.
    availability_excluding_external: float | None = None
    oee_excluding_external: float | None = None
    # ISO 22400-2: TEEP = OEE x planned / calendar; utilization = planned / calendar.
    teep: float | None = None
    utilization: float | None = None


def _div(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def compute_ratios(c: OeeComponents) -> OeeRatios:
    """Availability = run/planned, Performance = ideal/run (capped at 1, flagged),
    Quality = good/total, OEE = A x P x Q, coverage = covered/window; the same OEE with
    external losses removed from planned time; utilization = planned/calendar (the window)
    and TEEP = OEE x utilization."""
    flags = set(c.flags)
    availability = _div(c.run_s, c.planned_s)
    performance = _div(c.ideal_s, c.run_s)
    if performance is not None and performance > 1.0:
        performance = 1.0
        flags.add(PERFORMANCE_CAPPED)
    quality = _div(c.good, c.total)
    oee = _product(availability, performance, quality)
    availability_ex = _div(c.run_s, c.planned_s - c.external_total_s)
    utilization = _div(c.planned_s, c.window_s)
    return OeeRatios(
        availability=availability,
        performance=performance,
        quality=quality,
        oee=oee,
        coverage=_div(c.covered_s, c.window_s),
        flags=frozenset(flags),
        availability_excluding_external=availability_ex,
        oee_excluding_external=_product(availability_ex, performance, quality),
        teep=_product(oee, utilization),
        utilization=utilization,
    )


def _product(*factors: float | None) -> float | None:
    out = 1.0
    for f in factors:
        if f is None:
            return None
        out *= f
    return out
