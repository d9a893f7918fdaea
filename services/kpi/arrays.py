"""A machine's raw data for a range as arrays: what the bucket sweep (``services.kpi.sweep``)
reads instead of ``Point`` tuples.

``load_machine_arrays`` reads exactly what ``load_machine_data`` reads (the same samples,
baselines and stop-event bounds), as one ``SampleArrays`` per signal: sample times as an
int64 array, values as the store decoded them, qualities only when some sample is not good.
A store that can hand out arrays itself implements ``ArraySource`` (the SQLite reader
does); any other ``SampleSource`` is read as points and converted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from karkhana.config.factory import MachineRef, StateMap
from karkhana.models import Quality, SampleValue, to_ns
from services.kpi.engine import MachineData
from services.kpi.planned import NsInterval, planned_ns
from services.kpi.source import Point, SampleSource
from services.kpi.timeline import STOP_STATES, canonical_state

_NS = 1e9
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SampleArrays:
    """Samples of one signal in time order: ``ts`` (int64 ns), ``values``, and
    ``qualities`` (None when every sample is good)."""

    ts: IntArray
    values: Sequence[SampleValue]
    qualities: Sequence[Quality] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_points(cls, points: Sequence[Point]) -> SampleArrays:
        if not points:
            return EMPTY
        ts = np.fromiter((p.ts_ns for p in points), dtype=np.int64, count=len(points))
        qualities = [p.quality for p in points]
        good = all(q == Quality.GOOD for q in qualities)
        return cls(ts, [p.value for p in points], None if good else qualities)

    def quality(self, i: int) -> Quality:
        return Quality.GOOD if self.qualities is None else self.qualities[i]

    def point(self, i: int) -> Point:
        return Point(int(self.ts[i]), self.values[i], self.quality(i))

    def points(self) -> list[Point]:
        return [self.point(i) for i in range(len(self.ts))]

    def bad(self) -> NDArray[np.bool_]:
        """Per sample: quality ``bad``."""
        if self.qualities is None:
            return np.zeros(len(self.ts), dtype=bool)
        return np.fromiter((q == Quality.BAD for q in self.qualities), dtype=bool)


EMPTY = SampleArrays(np.zeros(0, dtype=np.int64), ())


def concat(parts: Sequence[SampleArrays]) -> SampleArrays:
    parts = [p for p in parts if len(p)]
    if not parts:
        return EMPTY
    if len(parts) == 1:
        return parts[0]
    values: list[SampleValue] = []
    for p in parts:
        values += p.values
    qualities: list[Quality] | None = None
    if any(p.qualities is not None for p in parts):
        qualities = []
        for p in parts:
            qualities += p.qualities if p.qualities is not None else [Quality.GOOD] * len(p)
    return SampleArrays(np.concatenate([p.ts for p in parts]), values, qualities)


@runtime_checkable
class ArraySource(Protocol):
    """A ``SampleSource`` that also reads ranges as arrays."""

    def arrays(self, asset: str, signal: str, start_ns: int, end_ns: int) -> SampleArrays:
        """``points`` of the same range, as arrays."""
        ...

    def time_array(self, asset: str, start_ns: int, end_ns: int) -> IntArray:
        """``sample_times`` of the same range, as an array."""
        ...


@dataclass(frozen=True, slots=True)
class MachineArrays:
    """``MachineData`` with every signal as arrays (see ``MachineData`` for the contents)."""

    start_ns: int
    end_ns: int
    planned: Sequence[NsInterval]
    states: SampleArrays
    total_counts: SampleArrays
    reject_counts: SampleArrays
    sample_times: IntArray
    maintenance_ns: int
    modes: SampleArrays
    energy_counts: SampleArrays

    def to_data(self) -> MachineData:
        """The same data as points (for the engine)."""
        return MachineData(
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            planned=self.planned,
            states=self.states.points(),
            total_counts=self.total_counts.points(),
            reject_counts=self.reject_counts.points(),
            sample_times=self.sample_times.tolist(),
            maintenance_ns=self.maintenance_ns,
            modes=self.modes.points(),
            energy_counts=self.energy_counts.points(),
        )


def _window(
    source: SampleSource, asset: str, signal: str, start_ns: int, end_ns: int
) -> SampleArrays:
    if isinstance(source, ArraySource):
        return source.arrays(asset, signal, start_ns, end_ns)
    return SampleArrays.from_points(list(source.points(asset, signal, start_ns, end_ns)))


def _first_good(points: Iterator[Point]) -> list[Point]:
    for p in points:
        if p.quality != Quality.BAD:
            return [p]
    return []


def _states(
    source: SampleSource,
    asset: str,
    signal: str,
    state_map: StateMap,
    start_ns: int,
    end_ns: int,
    reach_back_to_ns: int,
) -> SampleArrays:
    """As ``stop_event_bounds`` assembles them: back to the first sample that is not a stop
    state (and at least to ``reach_back_to_ns``), the window, and ahead to the sample that
    ends a stop event in progress at the window end."""
    back: list[Point] = []
    for p in source.points_before(asset, signal, start_ns):
        back.append(p)
        if canonical_state(p, state_map) not in STOP_STATES and p.ts_ns <= reach_back_to_ns:
            break
    back.reverse()
    window = _window(source, asset, signal, start_ns, end_ns)
    last = window.point(len(window) - 1) if len(window) else (back[-1] if back else None)
    after: list[Point] = []
    if last is not None and canonical_state(last, state_map) in STOP_STATES:
        for p in source.points_from(asset, signal, end_ns):
            after.append(p)
            if canonical_state(p, state_map) not in STOP_STATES:
                break
    return concat([SampleArrays.from_points(back), window, SampleArrays.from_points(after)])


def _counter(
    source: SampleSource, asset: str, signal: str | None, start_ns: int, end_ns: int
) -> SampleArrays:
    """The latest non-bad sample before the window, then the window's samples."""
    if signal is None:
        return EMPTY
    baseline = _first_good(source.points_before(asset, signal, start_ns))
    window = _window(source, asset, signal, start_ns, end_ns)
    return concat([SampleArrays.from_points(baseline), window])


def _modes(
    source: SampleSource, asset: str, signal: str | None, start_ns: int, end_ns: int
) -> SampleArrays:
    """The latest sample before the window (any quality), then the window's samples."""
    if signal is None:
        return EMPTY
    baseline = next(iter(source.points_before(asset, signal, start_ns)), None)
    window = _window(source, asset, signal, start_ns, end_ns)
    return concat([SampleArrays.from_points([baseline] if baseline is not None else []), window])


class SiteCalendars:
    """Planned intervals per site and window, for one unit of work (a report asks for each
    machine of a site, which without maintenance windows all have the same)."""

    def __init__(self) -> None:
        self._planned: dict[tuple[str, datetime, datetime], list[NsInterval]] = {}

    def planned(self, ref: MachineRef, start: datetime, end: datetime) -> list[NsInterval]:
        """``planned_ns`` of the machine ``ref``."""
        site = ref.site
        if site.maintenance:
            return planned_ns(site, start, end, ref.path)
        key = (site.id, start, end)
        found = self._planned.get(key)
        if found is None:
            found = self._planned[key] = planned_ns(site, start, end)
        return list(found)


def load_machine_arrays(
    source: SampleSource,
    ref: MachineRef,
    start: datetime,
    end: datetime,
    calendars: SiteCalendars | None = None,
) -> MachineArrays:
    """What ``load_machine_data`` reads for ``ref`` over ``[start, end)``, as arrays
    (``calendars``: planned intervals already computed for other machines)."""
    start_ns, end_ns = to_ns(start), to_ns(end)
    signals = ref.machine.signals
    asset = ref.path
    reach = start_ns - round(ref.startup_window_s * _NS)
    states = _states(source, asset, signals.state, ref.state_map, start_ns, end_ns, reach)
    planned = (calendars or SiteCalendars()).planned(ref, start, end)
    maintenance = 0
    if ref.site.maintenance:
        maintenance = sum(b - a for a, b in planned_ns(ref.site, start, end)) - sum(
            b - a for a, b in planned
        )
    totals = _counter(source, asset, signals.total_count, start_ns, end_ns)
    rejects = _counter(source, asset, signals.reject_count, start_ns, end_ns)
    energy = _counter(source, asset, signals.energy, start_ns, end_ns)
    modes = _modes(source, asset, signals.mode, start_ns, end_ns)
    # Last: an array source can reuse the times of the series just read.
    if isinstance(source, ArraySource):
        times = source.time_array(asset, start_ns, end_ns)
    else:
        times = np.asarray(source.sample_times(asset, start_ns, end_ns), dtype=np.int64)
    return MachineArrays(
        start_ns=start_ns,
        end_ns=end_ns,
        planned=planned,
        states=states,
        total_counts=totals,
        reject_counts=rejects,
        sample_times=times,
        maintenance_ns=maintenance,
        modes=modes,
        energy_counts=energy,
    )
