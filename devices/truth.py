"""Ground truth: the KPI components of docs/kpi.md computed from the generated timeline.

Pure functions over state spans and planned intervals (microseconds), independent of any
platform code and of anything the devices published.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devices.scenario import Segment
from devices.timeutil import US, IntervalUs, from_us
from karkhana.models import MachineState, iso_utc

STOP_STATES = (
    MachineState.IDLE,
    MachineState.STOPPED,
    MachineState.FAULT,
    MachineState.SETUP,
    MachineState.OFF,
)
Span = tuple[int, int, MachineState]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass
class KpiComponents:
    """Additive components of one machine (or the sum of several) plus the derived ratios."""

    calendar_planned_us: int = 0
    planned_stop_us: int = 0
    run_us: int = 0
    short_stop_us: int = 0
    down_us: dict[MachineState, int] = field(default_factory=lambda: dict.fromkeys(STOP_STATES, 0))
    total: int = 0
    reject: int = 0
    ideal_s: float = 0.0
    energy_kwh: float = 0.0
    window_us: int = 0  # calendar time
    maintenance_us: int = 0  # shift time removed by maintenance windows
    external_us: dict[str, int] = field(default_factory=dict)  # long-stop time, by cause
    startup_reject: int = 0
    startup_reject_s: float = 0.0  # startup rejects x ideal cycle
    production_reject_s: float = 0.0  # other rejects x ideal cycle
    failures: int = 0  # entries into fault in long stops, starting in planned time
    mode_run_us: int = 0  # run time with a known mode (machines that report one)
    auto_run_us: int = 0  # the part of it in auto
    manual_interventions: int = 0  # changes of the mode from auto to manual
    covered_us: int = 0  # data completeness: the simulator publishes throughout the window
    # Where running resumed after a long stop event (not additive; one machine only).
    startups_us: list[int] = field(default_factory=list)

    @property
    def planned_us(self) -> int:
        return self.calendar_planned_us - self.planned_stop_us

    @property
    def good(self) -> int:
        return self.total - self.reject

    def __add__(self, other: KpiComponents) -> KpiComponents:
        return KpiComponents(
            calendar_planned_us=self.calendar_planned_us + other.calendar_planned_us,
            planned_stop_us=self.planned_stop_us + other.planned_stop_us,
            run_us=self.run_us + other.run_us,
            short_stop_us=self.short_stop_us + other.short_stop_us,
            down_us={s: self.down_us[s] + other.down_us[s] for s in STOP_STATES},
            total=self.total + other.total,
            reject=self.reject + other.reject,
            ideal_s=self.ideal_s + other.ideal_s,
            energy_kwh=self.energy_kwh + other.energy_kwh,
            window_us=self.window_us + other.window_us,
            maintenance_us=self.maintenance_us + other.maintenance_us,
            external_us={
                k: self.external_us.get(k, 0) + other.external_us.get(k, 0)
                for k in {*self.external_us, *other.external_us}
            },
            startup_reject=self.startup_reject + other.startup_reject,
            startup_reject_s=self.startup_reject_s + other.startup_reject_s,
            production_reject_s=self.production_reject_s + other.production_reject_s,
            failures=self.failures + other.failures,
            mode_run_us=self.mode_run_us + other.mode_run_us,
            auto_run_us=self.auto_run_us + other.auto_run_us,
            manual_interventions=self.manual_interventions + other.manual_interventions,
            covered_us=self.covered_us + other.covered_us,
        )

    def _losses(self) -> dict[str, Any]:
        """The loss tree in seconds and OEE points (docs/kpi.md), from these sums."""
        planned_s = self.planned_us / US
        external = {k: v / US for k, v in sorted(self.external_us.items())}
        fault = self.down_us[MachineState.FAULT] / US
        setup = self.down_us[MachineState.SETUP] / US
        others = (
            self.down_us[MachineState.IDLE]
            + self.down_us[MachineState.STOPPED]
            + self.down_us[MachineState.OFF]
        ) / US - sum(external.values())
        seconds = {
            "breakdowns_s": fault,
            "setup_s": setup,
            "small_stops_s": self.short_stop_us / US,
            "reduced_speed_s": (self.run_us - self.short_stop_us) / US - self.ideal_s,
            "startup_rejects_s": self.startup_reject_s,
            "production_rejects_s": self.production_reject_s,
            "other_stops_s": others,
        }
        out: dict[str, Any] = dict(seconds)
        out["external_s"] = external
        out["points"] = {
            k.removesuffix("_s"): _ratio(v * 100, planned_s) for k, v in seconds.items()
        }
        out["external_points"] = {k: _ratio(v * 100, planned_s) for k, v in external.items()}
        return out

    def _kpis(self, oee: float | None, utilization: float | None) -> dict[str, Any]:
        """The "more KPIs" of docs/kpi.md, from these sums."""
        run_s = self.run_us / US
        mode_run_s = self.mode_run_us / US
        return {
            "teep": None if oee is None or utilization is None else oee * utilization,
            "utilization": utilization,
            "failures": self.failures,
            "mtbf_s": _ratio(run_s, self.failures),
            "mttr_s": _ratio(self.down_us[MachineState.FAULT] / US, self.failures),
            "first_pass_yield": _ratio(self.good, self.total),
            "scrap_ratio": _ratio(self.reject, self.total),
            "throughput_per_h": _ratio(self.total * 3600.0, run_s),
            "energy_kwh": self.energy_kwh,
            "energy_per_good_kwh": _ratio(self.energy_kwh, self.good),
            "automation_rate": _ratio(self.auto_run_us / US, mode_run_s),
            "manual_interventions": self.manual_interventions,
            "manual_interventions_per_h": _ratio(self.manual_interventions * 3600.0, mode_run_s),
            "data_completeness": _ratio(self.covered_us, self.window_us),
        }

    def to_json(self) -> dict[str, Any]:
        planned_s = self.planned_us / US
        run_s = self.run_us / US
        availability = _ratio(run_s, planned_s)
        raw_performance = _ratio(self.ideal_s, run_s)
        performance = None if raw_performance is None else min(1.0, raw_performance)
        quality = _ratio(self.good, self.total)
        oee = (
            availability * performance * quality
            if availability is not None and performance is not None and quality is not None
            else None
        )
        external_s = sum(self.external_us.values()) / US
        availability_ex = _ratio(run_s, planned_s - external_s)
        oee_ex = (
            availability_ex * performance * quality
            if availability_ex is not None and performance is not None and quality is not None
            else None
        )
        utilization = _ratio(planned_s, self.window_us / US)
        return {
            "calendar_planned_s": self.calendar_planned_us / US,
            "planned_s": planned_s,
            "run_s": run_s,
            "short_stop_s": self.short_stop_us / US,
            "down_s": {s.value: self.down_us[s] / US for s in STOP_STATES},
            "no_data_s": 0.0,
            "planned_stop_s": self.planned_stop_us / US,
            "total": self.total,
            "good": self.good,
            "reject": self.reject,
            "ideal_s": self.ideal_s,
            "energy_kwh": round(self.energy_kwh, 6),
            "availability": availability,
            "performance": performance,
            "performance_capped": raw_performance is not None and raw_performance > 1.0,
            "quality": quality,
            "oee": oee,
            "calendar_s": self.window_us / US,
            "maintenance_s": self.maintenance_us / US,
            "startup_rejects": self.startup_reject,
            "startups": [iso_utc(from_us(t)) for t in self.startups_us],
            "losses": self._losses(),
            "oee_excluding_external": oee_ex,
            "utilization": utilization,
            "teep": None if oee is None or utilization is None else oee * utilization,
            "kpis": self._kpis(oee, utilization),
        }


def _overlap(a: int, b: int, intervals: Sequence[IntervalUs], ends: Sequence[int]) -> int:
    total = 0
    i = bisect.bisect_right(ends, a)
    while i < len(intervals):
        lo, hi = intervals[i]
        if lo >= b:
            break
        total += min(b, hi) - max(a, lo)
        i += 1
    return total


def time_components(
    spans: Sequence[Span],
    planned: Sequence[IntervalUs],
    window: IntervalUs,
    short_stop_threshold_s: float,
    external_causes: Mapping[MachineState, str] | None = None,
    manual_states: frozenset[MachineState] | None = None,
) -> KpiComponents:
    """Planned/run/short-stop/down/external time of one machine in ``window`` (docs/kpi.md).

    ``spans`` is the state timeline in time order (it may begin before the window: stop
    events are classified on their whole duration, up to the window's end at most);
    ``planned`` the calendar planned intervals (sorted, disjoint). Long-stop time in a
    state of ``external_causes`` also counts as external under its cause. The instants
    where running follows a long stop event are recorded in ``startups_us``. Entries into
    ``fault`` inside long stop events that start in the window's planned time are failures.
    ``manual_states``: for a machine that reports its mode, the states in which the mode is
    manual (otherwise auto); None for a machine without a mode signal.
    """
    w0, w1 = window
    external = external_causes or {}
    planned_in = [(max(a, w0), min(b, w1)) for a, b in planned if a < w1 and b > w0]
    ends = [b for _, b in planned_in]
    out = KpiComponents(
        calendar_planned_us=sum(b - a for a, b in planned_in),
        window_us=max(0, w1 - w0),
        external_us=dict.fromkeys(external.values(), 0),
    )
    threshold_us = short_stop_threshold_s * US
    manual = manual_states or frozenset()
    manual_run_us = 0

    # Stop events: maximal runs of consecutive stop states (contiguous in time).
    visible = [(a, min(b, w1), s) for a, b, s in spans if a < w1]
    i = 0
    while i < len(visible):
        a, b, state = visible[i]
        if state is MachineState.RUNNING:
            part = _overlap(max(a, w0), b, planned_in, ends)
            out.run_us += part
            manual_run_us += part if state in manual else 0
            i += 1
            continue
        if state is MachineState.PLANNED_STOP:
            out.planned_stop_us += _overlap(max(a, w0), b, planned_in, ends)
            i += 1
            continue
        j = i
        while (
            j + 1 < len(visible)
            and visible[j + 1][2] in STOP_STATES
            and visible[j + 1][0] == visible[j][1]
        ):
            j += 1
        event_len = visible[j][1] - a
        short = event_len < threshold_us
        for k, (ea, eb, es) in enumerate(visible[i : j + 1], start=i):
            if (
                not short
                and es is MachineState.FAULT
                and (k == i or visible[k - 1][2] is not MachineState.FAULT)
                and w0 <= ea < w1
                and _overlap(ea, ea + 1, planned_in, ends) > 0
            ):
                out.failures += 1
            part = _overlap(max(ea, w0), eb, planned_in, ends) if eb > w0 else 0
            if short:
                out.run_us += part
                out.short_stop_us += part
                manual_run_us += part if es in manual else 0
            else:
                out.down_us[es] += part
                if es in external:
                    cause = external[es]
                    out.external_us[cause] = out.external_us.get(cause, 0) + part
        if (
            not short
            and j + 1 < len(visible)
            and visible[j + 1][2] is MachineState.RUNNING
            and visible[j + 1][0] == visible[j][1]
        ):
            out.startups_us.append(visible[j + 1][0])
        i = j + 1
    if manual_states is not None:
        out.mode_run_us = out.run_us
        out.auto_run_us = out.run_us - manual_run_us
        # The mode changes with the state; the first span has no earlier mode to leave.
        out.manual_interventions = sum(
            1
            for k in range(1, len(visible))
            if w0 <= visible[k][0] < w1
            and visible[k][2] in manual
            and visible[k - 1][2] not in manual
        )
    return out


def add_rejects(
    comp: KpiComponents,
    segments: Sequence[Segment],
    window: IntervalUs,
    startup_window_s: float,
    ideal_cycle_s: float,
) -> None:
    """Count the units and rejects completed in ``window`` from the generated segments,
    splitting rejects into startup rejects (completed less than ``startup_window_s`` after
    one of ``comp.startups_us``) and production rejects; quality loss time is rejects x
    the ideal cycle."""
    w0, w1 = window
    startups = sorted(comp.startups_us)
    span_us = round(startup_window_s * US)
    total = rejects = startup = 0
    for seg in segments:
        for ts, is_reject in seg.unit_times():
            if not w0 <= ts < w1:
                continue
            total += 1
            if not is_reject:
                continue
            rejects += 1
            k = bisect.bisect_right(startups, ts) - 1
            if k >= 0 and ts < startups[k] + span_us:
                startup += 1
    comp.total = total
    comp.reject = rejects
    comp.ideal_s = total * ideal_cycle_s
    comp.startup_reject = startup
    comp.startup_reject_s = startup * ideal_cycle_s
    comp.production_reject_s = (rejects - startup) * ideal_cycle_s


@dataclass
class GroundTruth:
    """Exact KPI components of the simulated window, per machine and per line."""

    start: datetime
    end: datetime
    speed: float
    seed: int
    machines: dict[str, KpiComponents]
    lines: dict[str, KpiComponents]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": iso_utc(self.start),
            "to": iso_utc(self.end),
            "speed": self.speed,
            "seed": self.seed,
            "machines": {path: c.to_json() for path, c in self.machines.items()},
            "lines": {path: c.to_json() for path, c in self.lines.items()},
            "sites": {path: c.to_json() for path, c in sum_by_site(self.machines).items()},
        }


def sum_by_line(machines: dict[str, KpiComponents]) -> dict[str, KpiComponents]:
    lines: dict[str, KpiComponents] = {}
    for path, comp in machines.items():
        line = path.rsplit("/", 1)[0]
        lines[line] = lines[line] + comp if line in lines else comp + KpiComponents()
    return lines


def sum_by_site(machines: dict[str, KpiComponents]) -> dict[str, KpiComponents]:
    sites: dict[str, KpiComponents] = {}
    for path, comp in machines.items():
        site = path.split("/", 1)[0]
        sites[site] = sites[site] + comp if site in sites else comp + KpiComponents()
    return sites
