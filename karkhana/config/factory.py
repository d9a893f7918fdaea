"""The ``factory.yaml`` model: the plant's assets, their signal semantics and shift calendars.

Every model forbids unknown keys so a typo is refused instead of silently ignored.
"""

from __future__ import annotations

from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from karkhana.config.loading import load_model
from karkhana.models import SEGMENT_RE, SIGNAL_RE, AssetPath, MachineState

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Segment = Annotated[str, Field(pattern=SEGMENT_RE.pattern, max_length=64)]
SignalName = Annotated[str, Field(pattern=SIGNAL_RE.pattern)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_hhmm(value: Any) -> time:
    """``"HH:MM"`` (or YAML 1.1's sexagesimal integer for an unquoted 06:00) -> time."""
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 06:00 as sexagesimal 360; turn it back into a time.
        hours, minutes = divmod(value, 60)
        if 0 <= hours < 24:
            return time(hours, minutes)
    if isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            h, m = int(parts[0]), int(parts[1])
            if 0 <= h < 24 and 0 <= m < 60:
                return time(h, m)
    raise ValueError("expected a local time of day as 'HH:MM' (e.g. '06:00')")


class Break(_Strict):
    """A planned break inside a shift, in the site's local time."""

    name: str = "break"
    start: time
    end: time

    _parse = field_validator("start", "end", mode="before")(parse_hhmm)


class Shift(_Strict):
    name: Segment
    start: time
    end: time  # may be earlier than start: the shift crosses midnight
    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))
    breaks: list[Break] = Field(default_factory=list)

    _parse = field_validator("start", "end", mode="before")(parse_hhmm)

    @field_validator("days")
    @classmethod
    def _days_known(cls, days: list[str]) -> list[str]:
        lowered = [d.lower()[:3] for d in days]
        for d in lowered:
            if d not in WEEKDAYS:
                raise ValueError(f"unknown weekday {d!r}; use mon, tue, wed, thu, fri, sat, sun")
        return lowered

    @model_validator(mode="after")
    def _sane(self) -> Shift:
        if self.start == self.end:
            raise ValueError("shift start and end are equal; a shift must have a length")
        return self


class Calendar(_Strict):
    shifts: list[Shift] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Calendar:
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"shift names must be unique, got {names}")
        return self


class MachineSignals(_Strict):
    """Which signal of the machine carries each meaning (names as stored)."""

    state: SignalName = "state"
    mode: SignalName | None = "mode"
    total_count: SignalName = "count_total"
    reject_count: SignalName | None = "count_reject"
    power: SignalName | None = "power"
    energy: SignalName | None = "energy"


StateMap = dict[str, MachineState]


# Stop states whose long-stop time can be declared an external loss (with a cause such as
# power_outage, no_material, no_operator). Breakdowns and setups are the machine's own.
EXTERNAL_CAUSE_STATES = frozenset({MachineState.IDLE, MachineState.STOPPED, MachineState.OFF})
ExternalCauses = dict[MachineState, Segment]


def _check_external_causes(value: ExternalCauses | None) -> ExternalCauses | None:
    for state in value or {}:
        if state not in EXTERNAL_CAUSE_STATES:
            raise ValueError(
                f"state {state.value!r} cannot be an external loss; use one of "
                f"{sorted(s.value for s in EXTERNAL_CAUSE_STATES)}"
            )
    return value


class Machine(_Strict):
    id: Segment
    name: str | None = None
    ideal_cycle_s: float = Field(gt=0, description="ideal cycle time per unit, seconds")
    short_stop_threshold_s: float | None = Field(default=None, ge=0)
    # Rejects counted this long after running resumes from a long stop are startup rejects.
    startup_window_s: float | None = Field(default=None, ge=0)
    # Stop states whose long-stop time is an external loss, with its cause.
    external_causes: ExternalCauses | None = None

    _external = field_validator("external_causes")(_check_external_causes)
    state_map: str | StateMap = "default"
    mode_map: dict[str, str] = Field(default_factory=lambda: {"1": "auto", "0": "manual"})
    signals: MachineSignals = Field(default_factory=MachineSignals)

    @field_validator("state_map", mode="before")
    @classmethod
    def _keys_to_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("mode_map", mode="before")
    @classmethod
    def _mode_keys_to_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class Line(_Strict):
    id: Segment
    name: str | None = None
    machines: list[Machine] = Field(min_length=1)


class Area(_Strict):
    id: Segment
    name: str | None = None
    lines: list[Line] = Field(min_length=1)


class ReasonCategory(StrEnum):
    """Where a coded downtime reason belongs in the loss tree."""

    BREAKDOWN = "breakdown"
    SETUP = "setup"
    SMALL_STOP = "small_stop"
    EXTERNAL = "external"
    PLANNED = "planned"
    OTHER = "other"


class Reason(_Strict):
    """A downtime reason operators can code a stop event with."""

    name: str = Field(min_length=1, max_length=200)
    category: ReasonCategory


ReasonCatalogue = dict[Segment, Reason]


def _codes_to_str(value: Any) -> Any:
    # YAML reads an unquoted code such as 12 as an int; codes are text.
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


class Holiday(_Strict):
    """A local date without production: shift instances starting on it are not planned."""

    date: date
    name: str = "holiday"

    @model_validator(mode="before")
    @classmethod
    def _bare_date(cls, value: Any) -> Any:
        # A holiday may be written as a bare date: `- 2026-12-25`.
        if isinstance(value, date | str):
            return {"date": value}
        return value


class MaintenanceWindow(_Strict):
    """Planned maintenance of a line or machine, local date-times: not planned production."""

    asset: str = Field(description="site/area/line or site/area/line/machine path")
    start: datetime
    end: datetime
    name: str = "maintenance"

    @model_validator(mode="after")
    def _sane(self) -> MaintenanceWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("start and end are local times of the site; drop the UTC offset")
        if self.end <= self.start:
            raise ValueError("a maintenance window must end after it starts")
        return self

    def covers(self, machine_path: str) -> bool:
        return machine_path == self.asset or machine_path.startswith(self.asset + "/")


class Site(_Strict):
    id: Segment
    name: str | None = None
    timezone: str
    calendar: Calendar
    areas: list[Area] = Field(min_length=1)
    holidays: list[Holiday] = Field(default_factory=list)
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    # Downtime reasons of this site, added to (and overriding) the top-level catalogue.
    reasons: ReasonCatalogue = Field(default_factory=dict)

    _reason_codes = field_validator("reasons", mode="before")(_codes_to_str)

    @field_validator("timezone")
    @classmethod
    def _tz_known(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {tz!r} (e.g. 'Asia/Karachi')") from exc
        return tz

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _maintenance_assets(self) -> Site:
        lines = {f"{self.id}/{a.id}/{ln.id}": ln for a in self.areas for ln in a.lines}
        known = set(lines) | {f"{p}/{m.id}" for p, ln in lines.items() for m in ln.machines}
        for i, window in enumerate(self.maintenance):
            if window.asset not in known:
                raise ValueError(
                    f"maintenance[{i}].asset {window.asset!r} is not a line or machine of "
                    "this site (expected site/area/line or site/area/line/machine)"
                )
        return self


DEFAULT_STATE_MAP: StateMap = {
    "0": MachineState.OFF,
    "1": MachineState.RUNNING,
    "2": MachineState.IDLE,
    "3": MachineState.STOPPED,
    "4": MachineState.FAULT,
    "5": MachineState.SETUP,
    "6": MachineState.PLANNED_STOP,
    **{s.value: s for s in MachineState},
}


class MachineRef(BaseModel):
    """A machine with the site, area and line it belongs to, as handed to services."""

    model_config = ConfigDict(frozen=True)

    path: str
    site: Site
    area: Area
    line: Line
    machine: Machine
    state_map: StateMap
    short_stop_threshold_s: float
    startup_window_s: float = 0.0
    external_causes: ExternalCauses = Field(default_factory=dict)

    @property
    def line_path(self) -> str:
        return f"{self.site.id}/{self.area.id}/{self.line.id}"


class FactoryConfig(_Strict):
    version: int = 1
    state_maps: dict[Segment, StateMap] = Field(default_factory=dict)
    short_stop_threshold_s: float = Field(default=120.0, ge=0)
    startup_window_s: float = Field(default=300.0, ge=0)
    external_causes: ExternalCauses = Field(
        default_factory=lambda: {MachineState.OFF: "power_outage"}
    )
    sites: list[Site] = Field(min_length=1)
    # Opaque here; the simulator in devices/ validates it with its own model.
    simulation: dict[str, Any] | None = None
    reasons: ReasonCatalogue = Field(default_factory=dict)

    _reason_codes = field_validator("reasons", mode="before")(_codes_to_str)

    @field_validator("state_maps", mode="before")
    @classmethod
    def _map_keys_to_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                name: {str(k): v for k, v in m.items()} if isinstance(m, dict) else m
                for name, m in value.items()
            }
        return value

    @model_validator(mode="after")
    def _references(self) -> FactoryConfig:
        if self.version != 1:
            raise ValueError(f"unsupported factory.yaml version {self.version}; expected 1")
        _check_external_causes(self.external_causes)
        seen: set[str] = set()
        for site in self.sites:
            for area in site.areas:
                for line in area.lines:
                    for machine in line.machines:
                        path = f"{site.id}/{area.id}/{line.id}/{machine.id}"
                        if path in seen:
                            raise ValueError(f"machine {path} is declared twice")
                        seen.add(path)
                        ref = machine.state_map
                        if isinstance(ref, str) and ref != "default" and ref not in self.state_maps:
                            raise ValueError(
                                f"machine {path} uses state_map {ref!r}, which is not declared "
                                f"under state_maps (declared: {sorted(self.state_maps)})"
                            )
        return self

    def machines(self) -> list[MachineRef]:
        """Every machine with its resolved state map and short-stop threshold."""
        out: list[MachineRef] = []
        for site in self.sites:
            for area in site.areas:
                for line in area.lines:
                    for m in line.machines:
                        if isinstance(m.state_map, dict):
                            smap = m.state_map
                        elif m.state_map == "default":
                            smap = DEFAULT_STATE_MAP
                        else:
                            smap = self.state_maps[m.state_map]
                        threshold = (
                            m.short_stop_threshold_s
                            if m.short_stop_threshold_s is not None
                            else self.short_stop_threshold_s
                        )
                        out.append(
                            MachineRef(
                                path=f"{site.id}/{area.id}/{line.id}/{m.id}",
                                site=site,
                                area=area,
                                line=line,
                                machine=m,
                                state_map=smap,
                                short_stop_threshold_s=threshold,
                                startup_window_s=(
                                    m.startup_window_s
                                    if m.startup_window_s is not None
                                    else self.startup_window_s
                                ),
                                external_causes=(
                                    m.external_causes
                                    if m.external_causes is not None
                                    else self.external_causes
                                ),
                            )
                        )
        return out

    def reasons_for(self, site: Site) -> ReasonCatalogue:
        """The downtime reasons operators of ``site`` may code: the top-level catalogue with
        the site's own entries added (a site entry replaces a top-level one of its code)."""
        return {**self.reasons, **site.reasons}

    def machine(self, path: str) -> MachineRef:
        AssetPath.parse(path)
        for ref in self.machines():
            if ref.path == path:
                return ref
        raise KeyError(path)


def map_state(value: object, state_map: StateMap) -> MachineState | None:
    """Canonical state for a raw state value (code or text); None when unmapped."""
    if isinstance(value, bool):
        return state_map.get("1" if value else "0")
    if isinstance(value, float) and value.is_integer():
        return state_map.get(str(int(value)))
    key = str(value).strip()
    found = state_map.get(key)
    if found is None:
        found = state_map.get(key.lower())
    return found


def load_factory(path: str | Path) -> FactoryConfig:
    return load_model(FactoryConfig, path)
