"""Response bodies of the HTTP API."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from karkhana.models import MachineState
from services.kpi import OeeComponents, compute_indicators, compute_ratios, loss_tree


class StoreHealth(BaseModel):
    path: str
    exists: bool
    samples: int


class Health(BaseModel):
    status: str = "ok"
    store: StoreHealth


class MachineNode(BaseModel):
    id: str
    name: str | None
    path: str
    ideal_cycle_s: float
    short_stop_threshold_s: float
    state: MachineState | None = Field(description="latest canonical state; null if unknown")
    state_since: str | None = Field(description="ISO 8601 UTC time the latest state began")


class LineNode(BaseModel):
    id: str
    name: str | None
    path: str
    machines: list[MachineNode]


class AreaNode(BaseModel):
    id: str
    name: str | None
    path: str
    lines: list[LineNode]


class SiteNode(BaseModel):
    id: str
    name: str | None
    path: str
    timezone: str
    areas: list[AreaNode]


class AssetTree(BaseModel):
    sites: list[SiteNode]


class GroupBy(StrEnum):
    MACHINE = "machine"
    LINE = "line"
    AREA = "area"
    SITE = "site"


class BucketBy(StrEnum):
    """Reporting periods, in the site's local time (unions of 15-minute buckets)."""

    HOUR = "hour"
    SHIFT = "shift"
    DAY = "day"
    WEEK = "week"


class ComponentsOut(BaseModel):
    planned_s: float
    run_s: float
    short_stop_s: float
    down_s: dict[str, float]
    no_data_s: float
    planned_stop_s: float
    ideal_s: float
    # Unit counters are whole numbers; a counter of, say, metres may not be.
    total: int | float
    good: int | float
    covered_s: float
    window_s: float
    external_s: dict[str, float] = Field(
        default_factory=dict, description="part of down_s with an external cause, by cause"
    )
    maintenance_s: float = Field(
        default=0.0, description="shift time removed from planned time by maintenance windows"
    )
    startup_rejects: int | float = Field(
        default=0, description="rejects counted within startup_window_s after a long stop"
    )
    failures: int | float = Field(
        default=0, description="breakdowns: entries into fault in long stops, in planned time"
    )
    energy_kwh: float = Field(default=0.0, description="energy meter delta, kWh")
    mode_run_s: float = Field(default=0.0, description="part of run_s with a known mode")
    auto_run_s: float = Field(default=0.0, description="part of mode_run_s in auto mode")
    manual_interventions: int | float = Field(
        default=0, description="changes of the mode from auto to manual"
    )

    @classmethod
    def from_components(cls, c: OeeComponents) -> ComponentsOut:
        return cls(
            planned_s=c.planned_s,
            run_s=c.run_s,
            short_stop_s=c.short_stop_s,
            down_s=dict(c.down_s),
            no_data_s=c.no_data_s,
            planned_stop_s=c.planned_stop_s,
            ideal_s=c.ideal_s,
            total=_count(c.total),
            good=_count(c.good),
            covered_s=c.covered_s,
            window_s=c.window_s,
            external_s=dict(c.external_s),
            maintenance_s=c.maintenance_s,
            startup_rejects=_count(c.startup_rejects),
            failures=_count(c.failures),
            energy_kwh=c.energy_kwh,
            mode_run_s=c.mode_run_s,
            auto_run_s=c.auto_run_s,
            manual_interventions=_count(c.manual_interventions),
        )


def _count(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class LossOut(BaseModel):
    seconds: float
    points: float | None = Field(description="OEE points: seconds / planned_s x 100")


class LossesOut(BaseModel):
    """The loss tree (docs/kpi.md): the six big losses, other stops and external losses."""

    breakdowns: LossOut
    setup: LossOut
    small_stops: LossOut
    reduced_speed: LossOut
    startup_rejects: LossOut
    production_rejects: LossOut
    other_stops: LossOut
    external: dict[str, LossOut] = Field(description="external losses by cause")

    @classmethod
    def from_components(cls, c: OeeComponents) -> LossesOut:
        tree = loss_tree(c)

        def out(seconds: float) -> LossOut:
            return LossOut(seconds=seconds, points=tree.points(seconds))

        return cls(
            breakdowns=out(tree.breakdowns_s),
            setup=out(tree.setup_s),
            small_stops=out(tree.small_stops_s),
            reduced_speed=out(tree.reduced_speed_s),
            startup_rejects=out(tree.startup_rejects_s),
            production_rejects=out(tree.production_rejects_s),
            other_stops=out(tree.other_stops_s),
            external={cause: out(s) for cause, s in tree.external_s.items()},
        )


class KpisOut(BaseModel):
    """More KPIs (docs/kpi.md), from the summed components; null where undefined."""

    teep: float | None = Field(description="OEE x planned_s / window_s")
    utilization: float | None = Field(description="planned_s / window_s")
    failures: int | float
    mtbf_s: float | None = Field(description="run_s / failures")
    mttr_s: float | None = Field(description="fault time / failures")
    first_pass_yield: float | None = Field(description="good / total")
    scrap_ratio: float | None = Field(description="rejects / total")
    throughput_per_h: float | None = Field(description="units per hour of run time")
    energy_kwh: float
    energy_per_good_kwh: float | None = Field(description="kWh per good unit")
    automation_rate: float | None = Field(description="auto_run_s / mode_run_s")
    manual_interventions: int | float
    manual_interventions_per_h: float | None = Field(description="per hour of mode_run_s")
    data_completeness: float | None = Field(description="covered_s / window_s")

    @classmethod
    def from_components(cls, c: OeeComponents) -> KpisOut:
        r, k = compute_ratios(c), compute_indicators(c)
        return cls(
            teep=r.teep,
            utilization=r.utilization,
            failures=_count(k.failures),
            mtbf_s=k.mtbf_s,
            mttr_s=k.mttr_s,
            first_pass_yield=k.first_pass_yield,
            scrap_ratio=k.scrap_ratio,
            throughput_per_h=k.throughput_per_h,
            energy_kwh=k.energy_kwh,
            energy_per_good_kwh=k.energy_per_good_kwh,
            automation_rate=k.automation_rate,
            manual_interventions=_count(k.manual_interventions),
            manual_interventions_per_h=k.manual_interventions_per_h,
            data_completeness=k.data_completeness,
        )


class OeeItem(BaseModel):
    asset: str
    level: GroupBy
    from_: str = Field(serialization_alias="from")
    to: str
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    coverage: float
    components: ComponentsOut
    flags: list[str]
    machines: int
    losses: LossesOut | None = None
    oee_excluding_external: float | None = Field(
        default=None, description="OEE with external losses removed from planned time"
    )
    teep: float | None = Field(default=None, description="OEE x planned_s / window_s")
    utilization: float | None = Field(default=None, description="planned_s / window_s")
    kpis: KpisOut | None = None
    period: str | None = Field(
        default=None,
        description="with 'bucket': the period's local label, e.g. 2024-05-06/morning, "
        "2024-05-06, 2024-W19 or 2024-05-06T06:00+0500",
    )
