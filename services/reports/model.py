"""The OEE report: summary, trend, loss waterfall, downtime Pareto and per-machine table.

Every figure comes from summed KPI components (``services.kpi``) and the downtime Pareto
(``services.downtime``), the same functions the KPI and downtime routes answer with; the
report only arranges and converts them (seconds to minutes). Ratios are fractions 0..1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.downtime import ParetoBucket
from services.kpi import OeeComponents, compute_ratios, loss_tree

_MIN = 60.0


@dataclass(frozen=True, slots=True)
class Summary:
    asset: str
    level: str
    machines: int
    start: str
    end: str
    timezone: str
    bucket: str
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    oee_excluding_external: float | None
    teep: float | None
    utilization: float | None
    coverage: float | None
    calendar_min: float
    planned_min: float
    run_min: float
    down_min: float
    total: float
    good: float
    rejects: float
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """OEE of one bucket (hour, shift, day or week), labelled in local time."""

    period: str
    start: str
    end: str
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    planned_min: float


@dataclass(frozen=True, slots=True)
class WaterfallStep:
    """``kind`` is ``start`` (planned time), ``loss`` or ``end`` (fully productive time);
    ``points`` is the step as OEE points (share of planned time x 100)."""

    name: str
    kind: str
    minutes: float
    points: float | None


@dataclass(frozen=True, slots=True)
class ParetoRow:
    """Downtime inside the window per reason code, biggest first; ``reason`` None is the
    events no operator has coded yet."""

    reason: str | None
    name: str | None
    category: str | None
    minutes: float
    planned_min: float
    count: int


@dataclass(frozen=True, slots=True)
class MachineRow:
    asset: str
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    planned_min: float
    run_min: float
    total: float
    good: float


@dataclass(frozen=True, slots=True)
class OeeReport:
    summary: Summary
    trend: list[TrendPoint]
    waterfall: list[WaterfallStep]
    pareto: list[ParetoRow]
    machines: list[MachineRow]


@dataclass(frozen=True, slots=True)
class TrendInput:
    """One bucket's summed components, as ``services.rollup.period_report`` gives them."""

    label: str
    start: str
    end: str
    components: OeeComponents


def waterfall(c: OeeComponents) -> list[WaterfallStep]:
    """Planned time, each loss of the loss tree, then what is left: fully productive time
    (planned time minus every loss: the ideal time of the good units). Its points equal
    OEE x 100 for one machine; for a group of machines with different ideal cycles they
    differ slightly, as quality there is good/total counted in units, not in time."""
    tree = loss_tree(c)
    losses: list[tuple[str, float]] = [
        ("breakdowns", tree.breakdowns_s),
        ("setup", tree.setup_s),
        ("other stops", tree.other_stops_s),
        *((f"external: {cause}", s) for cause, s in sorted(tree.external_s.items())),
        ("small stops", tree.small_stops_s),
        ("reduced speed", tree.reduced_speed_s),
        ("startup rejects", tree.startup_rejects_s),
        ("production rejects", tree.production_rejects_s),
    ]
    steps = [WaterfallStep("planned time", "start", c.planned_s / _MIN, tree.points(c.planned_s))]
    steps += [WaterfallStep(name, "loss", s / _MIN, tree.points(s)) for name, s in losses]
    left = c.planned_s - sum(s for _, s in losses)
    steps.append(WaterfallStep("fully productive time", "end", left / _MIN, tree.points(left)))
    return steps


def build_report(
    *,
    asset: str,
    level: str,
    start: str,
    end: str,
    timezone: str,
    bucket: str,
    machines: Sequence[tuple[str, OeeComponents]],
    trend: Sequence[TrendInput],
    pareto: Sequence[ParetoBucket],
) -> OeeReport:
    """The report of ``asset`` from its machines' components over the window, its
    buckets' summed components and the downtime Pareto of the same window."""
    total = OeeComponents()
    for _, c in machines:
        total = total + c
    r = compute_ratios(total)
    summary = Summary(
        asset=asset,
        level=level,
        machines=len(machines),
        start=start,
        end=end,
        timezone=timezone,
        bucket=bucket,
        availability=r.availability,
        performance=r.performance,
        quality=r.quality,
        oee=r.oee,
        oee_excluding_external=r.oee_excluding_external,
        teep=r.teep,
        utilization=r.utilization,
        coverage=r.coverage,
        calendar_min=total.window_s / _MIN,
        planned_min=total.planned_s / _MIN,
        run_min=total.run_s / _MIN,
        down_min=total.down_total_s / _MIN,
        total=total.total,
        good=total.good,
        rejects=total.total - total.good,
        flags=sorted(r.flags),
    )
    return OeeReport(
        summary=summary,
        trend=[_trend_point(t) for t in trend],
        waterfall=waterfall(total),
        pareto=[
            ParetoRow(
                reason=b.reason,
                name=b.name,
                category=b.category,
                minutes=b.seconds / _MIN,
                planned_min=b.planned_s / _MIN,
                count=b.count,
            )
            for b in pareto
        ],
        machines=[_machine_row(path, c) for path, c in machines],
    )


def _trend_point(t: TrendInput) -> TrendPoint:
    r = compute_ratios(t.components)
    return TrendPoint(
        period=t.label,
        start=t.start,
        end=t.end,
        availability=r.availability,
        performance=r.performance,
        quality=r.quality,
        oee=r.oee,
        planned_min=t.components.planned_s / _MIN,
    )


def _machine_row(path: str, c: OeeComponents) -> MachineRow:
    r = compute_ratios(c)
    return MachineRow(
        asset=path,
        availability=r.availability,
        performance=r.performance,
        quality=r.quality,
        oee=r.oee,
        planned_min=c.planned_s / _MIN,
        run_min=c.run_s / _MIN,
        total=c.total,
        good=c.good,
    )
