"""Response bodies of the HTTP API."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from karkhana.models import MachineState


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
