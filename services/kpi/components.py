"""Additive OEE components of one machine (or a sum of machines) over a time window."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from karkhana.models import MachineState

# Canonical states that make up a stop event, in the order they are reported.
DOWN_CATEGORIES: tuple[str, ...] = (
    MachineState.IDLE.value,
    MachineState.STOPPED.value,
    MachineState.FAULT.value,
    MachineState.SETUP.value,
    MachineState.OFF.value,
)


def _zero_down() -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(DOWN_CATEGORIES, 0.0))


def _no_external() -> Mapping[str, float]:
    return MappingProxyType({})


def _add_maps(a: Mapping[str, float], b: Mapping[str, float]) -> Mapping[str, float]:
    keys = list(a) + [k for k in b if k not in a]
    return MappingProxyType({k: a.get(k, 0.0) + b.get(k, 0.0) for k in keys})


@dataclass(frozen=True, slots=True)
class OeeComponents:
    """Times in seconds, counts in units; every field sums across windows and machines.

    ``planned_s = run_s + sum(down_s.values()) + no_data_s``; ``planned_stop_s`` is the
    calendar planned time the machine spent in ``planned_stop`` (removed from planned time);
    ``short_stop_s`` is the part of ``run_s`` spent in short stops. ``covered_s`` /
    ``window_s`` give the data coverage; ``window_s`` is also the calendar time of TEEP and
    utilization. ``external_s`` is the part of ``down_s`` with an external cause, by cause.
    ``maintenance_s`` is shift time (net of breaks) removed from planned time by maintenance
    windows. ``startup_rejects`` is the part of ``total - good`` counted within a startup
    window; ``startup_reject_s`` and ``production_reject_s`` are the startup and other rejects
    times their machine's ideal cycle (quality loss time). ``failures`` counts breakdowns
    (entries into ``fault`` inside long stop events, starting in the window's planned time);
    their repair time is ``down_s["fault"]``. ``energy_kwh`` is the energy meter's delta.
    ``mode_run_s`` is the part of ``run_s`` with a known mode (auto or manual) and
    ``auto_run_s`` the part of it in auto; ``manual_interventions`` counts changes of the
    mode from auto to manual in the window. ``flags`` is the union of the parts' flags.
    """

    planned_s: float = 0.0
    run_s: float = 0.0
    short_stop_s: float = 0.0
    down_s: Mapping[str, float] = field(default_factory=_zero_down)
    no_data_s: float = 0.0
    planned_stop_s: float = 0.0
    ideal_s: float = 0.0
    total: float = 0.0
    good: float = 0.0
    covered_s: float = 0.0
    window_s: float = 0.0
    external_s: Mapping[str, float] = field(default_factory=_no_external)
    maintenance_s: float = 0.0
    startup_rejects: float = 0.0
    startup_reject_s: float = 0.0
    production_reject_s: float = 0.0
    failures: float = 0.0
    energy_kwh: float = 0.0
    mode_run_s: float = 0.0
    auto_run_s: float = 0.0
    manual_interventions: float = 0.0
    flags: frozenset[str] = frozenset()

    @property
    def external_total_s(self) -> float:
        return sum(self.external_s.values())

    @property
    def down_total_s(self) -> float:
        return sum(self.down_s.values())

    def __add__(self, other: object) -> OeeComponents:
        if not isinstance(other, OeeComponents):
            return NotImplemented
        return OeeComponents(
            planned_s=self.planned_s + other.planned_s,
            run_s=self.run_s + other.run_s,
            short_stop_s=self.short_stop_s + other.short_stop_s,
            down_s=_add_maps(self.down_s, other.down_s),
            no_data_s=self.no_data_s + other.no_data_s,
            planned_stop_s=self.planned_stop_s + other.planned_stop_s,
            ideal_s=self.ideal_s + other.ideal_s,
            total=self.total + other.total,
            good=self.good + other.good,
            covered_s=self.covered_s + other.covered_s,
            window_s=self.window_s + other.window_s,
            external_s=_add_maps(self.external_s, other.external_s),
            maintenance_s=self.maintenance_s + other.maintenance_s,
            startup_rejects=self.startup_rejects + other.startup_rejects,
            startup_reject_s=self.startup_reject_s + other.startup_reject_s,
            production_reject_s=self.production_reject_s + other.production_reject_s,
            failures=self.failures + other.failures,
            energy_kwh=self.energy_kwh + other.energy_kwh,
            mode_run_s=self.mode_run_s + other.mode_run_s,
            auto_run_s=self.auto_run_s + other.auto_run_s,
            manual_interventions=self.manual_interventions + other.manual_interventions,
            flags=self.flags | other.flags,
        )

    def as_dict(self) -> dict[str, object]:
        """Plain-data view (``down_s`` as a dict, ``flags`` as a sorted list)."""
        return {
            "planned_s": self.planned_s,
            "run_s": self.run_s,
            "short_stop_s": self.short_stop_s,
            "down_s": dict(self.down_s),
            "no_data_s": self.no_data_s,
            "planned_stop_s": self.planned_stop_s,
            "ideal_s": self.ideal_s,
            "total": self.total,
            "good": self.good,
            "covered_s": self.covered_s,
            "window_s": self.window_s,
            "external_s": dict(self.external_s),
            "maintenance_s": self.maintenance_s,
            "startup_rejects": self.startup_rejects,
            "startup_reject_s": self.startup_reject_s,
            "production_reject_s": self.production_reject_s,
            "failures": self.failures,
            "energy_kwh": self.energy_kwh,
            "mode_run_s": self.mode_run_s,
            "auto_run_s": self.auto_run_s,
            "manual_interventions": self.manual_interventions,
            "flags": sorted(self.flags),
        }


def sum_components(parts: Iterable[OeeComponents]) -> OeeComponents:
    """Sum of components (an empty iterable gives all zeros)."""
    total = OeeComponents()
    for part in parts:
        total = total + part
    return total
