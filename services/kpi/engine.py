"""One machine's OEE components over a window: gather its data, then compute (pure)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from karkhana.config.factory import MachineRef, StateMap
from karkhana.models import MachineState, Quality, to_ns
from services.kpi.components import OeeComponents
from services.kpi.counters import _numeric, counter_delta
from services.kpi.coverage import covered_ns
from services.kpi.modes import mode_times
from services.kpi.planned import NsInterval, PlannedTime, planned_ns
from services.kpi.source import Point, SampleSource
from services.kpi.timeline import state_times, stop_event_bounds

NO_DATA = "no_data"
REJECTS_EXCEED_TOTAL = "rejects_exceed_total"
_NS = 1e9


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What the maths needs to know about a machine."""

    state_map: StateMap
    ideal_cycle_s: float
    short_stop_threshold_s: float
    startup_window_s: float = 0.0
    external_causes: Mapping[MachineState, str] = field(default_factory=dict)
    mode_map: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_ref(cls, ref: MachineRef) -> MachineSpec:
        return cls(
            ref.state_map,
            ref.machine.ideal_cycle_s,
            ref.short_stop_threshold_s,
            ref.startup_window_s,
            ref.external_causes,
            ref.machine.mode_map,
        )


@dataclass(frozen=True, slots=True)
class MachineData:
    """A machine's raw data for ``[start_ns, end_ns)``, as the engine needs it.

    ``states``: state samples in time order, reaching back to the start of the stop event in
    progress at ``start_ns`` and ahead to the end of the one in progress at ``end_ns``.
    ``total_counts`` / ``reject_counts``: the counter's last good sample before the window
    (when there is one) then its samples in the window. ``sample_times``: sorted distinct
    timestamps of all the machine's signals, preceded by the last one before the window.
    ``planned``: calendar planned intervals inside the window; ``maintenance_ns``: shift time
    those intervals leave out because of the machine's maintenance windows. ``modes``: the
    mode signal's last sample before the window (when there is one), then its samples in the
    window. ``energy_counts``: the energy meter (kWh, cumulative), read like the counters.
    """

    start_ns: int
    end_ns: int
    planned: Sequence[NsInterval]
    states: Sequence[Point] = ()
    total_counts: Sequence[Point] = ()
    reject_counts: Sequence[Point] = ()
    sample_times: Sequence[int] = ()
    maintenance_ns: int = 0
    modes: Sequence[Point] = ()
    energy_counts: Sequence[Point] = ()


def _startup_periods(
    startups: Sequence[int], window_ns: int, start_ns: int, end_ns: int
) -> list[tuple[int, int]]:
    """Union of ``[s, s + window_ns)`` over the startups, clipped to the window."""
    out: list[tuple[int, int]] = []
    for s in startups:
        lo, hi = max(s, start_ns), min(s + window_ns, end_ns)
        if lo >= hi:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _delta_in(points: Sequence[Point], times: Sequence[int], lo: int, hi: int) -> float:
    """Counter increments of the samples with ``lo <= ts < hi`` (``times``: their ts)."""
    a, b = bisect_left(times, lo), bisect_left(times, hi)
    if a >= b:
        return 0.0
    # The baseline is the latest usable sample before ``lo``, as for the whole window.
    k = a - 1
    while k >= 0 and (points[k].quality == Quality.BAD or _numeric(points[k]) is None):
        k -= 1
    return counter_delta(points[k:b] if k >= 0 else points[a:b], lo).delta


def machine_components(data: MachineData, spec: MachineSpec, max_gap_s: float) -> OeeComponents:
    """Components of one machine (docs/kpi.md), in linear time in the number of samples."""
    if data.end_ns <= data.start_ns:
        raise ValueError("the window must end after it starts")
    planned = PlannedTime(data.planned)
    times = state_times(
        data.states,
        spec.state_map,
        planned,
        data.start_ns,
        data.end_ns,
        spec.short_stop_threshold_s,
        spec.external_causes,
    )
    total = counter_delta(data.total_counts, data.start_ns)
    rejects = counter_delta(data.reject_counts, data.start_ns)
    energy = counter_delta(data.energy_counts, data.start_ns)
    modes = mode_times(
        times.run_spans, data.modes, spec.mode_map, planned, data.start_ns, data.end_ns
    )
    periods = _startup_periods(
        times.startups_ns, round(spec.startup_window_s * _NS), data.start_ns, data.end_ns
    )
    reject_times = [p.ts_ns for p in data.reject_counts]
    startup_rejects = sum(_delta_in(data.reject_counts, reject_times, a, b) for a, b in periods)
    flags = times.flags | total.flags | rejects.flags | energy.flags
    if times.no_data_ns > 0:
        flags.add(NO_DATA)
    if rejects.delta > total.delta:
        flags.add(REJECTS_EXCEED_TOTAL)
    covered = covered_ns(data.sample_times, data.start_ns, data.end_ns, round(max_gap_s * _NS))
    return OeeComponents(
        planned_s=times.planned_ns / _NS,
        run_s=times.run_ns / _NS,
        short_stop_s=times.short_stop_ns / _NS,
        down_s=MappingProxyType({k: v / _NS for k, v in times.down_ns.items()}),
        no_data_s=times.no_data_ns / _NS,
        planned_stop_s=times.planned_stop_ns / _NS,
        ideal_s=total.delta * spec.ideal_cycle_s,
        total=total.delta,
        good=total.delta - rejects.delta,
        covered_s=covered / _NS,
        window_s=(data.end_ns - data.start_ns) / _NS,
        external_s=MappingProxyType({k: v / _NS for k, v in times.external_ns.items()}),
        maintenance_s=data.maintenance_ns / _NS,
        startup_rejects=startup_rejects,
        startup_reject_s=startup_rejects * spec.ideal_cycle_s,
        production_reject_s=(rejects.delta - startup_rejects) * spec.ideal_cycle_s,
        failures=times.failures,
        energy_kwh=energy.delta,
        mode_run_s=modes.known_ns / _NS,
        auto_run_s=modes.auto_ns / _NS,
        manual_interventions=modes.interventions,
        flags=frozenset(flags),
    )


def _counter_points(
    source: SampleSource, asset: str, signal: str | None, start_ns: int, end_ns: int
) -> list[Point]:
    if signal is None:
        return []
    baseline = _first_good(source.points_before(asset, signal, start_ns))
    window = list(source.points(asset, signal, start_ns, end_ns))
    return ([baseline] if baseline is not None else []) + window


def _mode_points(
    source: SampleSource, asset: str, signal: str | None, start_ns: int, end_ns: int
) -> list[Point]:
    if signal is None:
        return []
    baseline = next(iter(source.points_before(asset, signal, start_ns)), None)
    window = list(source.points(asset, signal, start_ns, end_ns))
    return ([baseline] if baseline is not None else []) + window


def _first_good(points: Iterator[Point]) -> Point | None:
    for p in points:
        if p.quality != Quality.BAD:
            return p
    return None


def load_machine_data(
    source: SampleSource, ref: MachineRef, start: datetime, end: datetime
) -> MachineData:
    """Read what ``machine_components`` needs for ``ref`` over ``[start, end)``."""
    start_ns, end_ns = to_ns(start), to_ns(end)
    signals = ref.machine.signals
    asset = ref.path
    states = stop_event_bounds(
        ref.state_map,
        source.points_before(asset, signals.state, start_ns),
        source.points(asset, signals.state, start_ns, end_ns),
        source.points_from(asset, signals.state, end_ns),
        reach_back_to_ns=start_ns - round(ref.startup_window_s * _NS),
    )
    planned = planned_ns(ref.site, start, end, ref.path)
    maintenance = 0
    if ref.site.maintenance:
        maintenance = sum(b - a for a, b in planned_ns(ref.site, start, end)) - sum(
            b - a for a, b in planned
        )
    return MachineData(
        start_ns=start_ns,
        end_ns=end_ns,
        planned=planned,
        maintenance_ns=maintenance,
        states=states,
        total_counts=_counter_points(source, asset, signals.total_count, start_ns, end_ns),
        reject_counts=_counter_points(source, asset, signals.reject_count, start_ns, end_ns),
        sample_times=source.sample_times(asset, start_ns, end_ns),
        modes=_mode_points(source, asset, signals.mode, start_ns, end_ns),
        energy_counts=_counter_points(source, asset, signals.energy, start_ns, end_ns),
    )


def compute_machine(
    source: SampleSource, ref: MachineRef, start: datetime, end: datetime, max_gap_s: float
) -> OeeComponents:
    """Components of the machine ``ref`` over ``[start, end)`` from the store ``source``."""
    data = load_machine_data(source, ref, start, end)
    return machine_components(data, MachineSpec.from_ref(ref), max_gap_s)
