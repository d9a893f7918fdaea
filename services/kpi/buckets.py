"""Per-machine OEE components on a fixed grid of 15-minute buckets, and the periods
(hour, shift, day, week) that are unions of buckets.

The grid is UTC instants that are whole multiples of 15 minutes. Every IANA zone in use today
has an offset that is a multiple of 15 minutes, so the grid is the site's local quarter
hours too, and local hours, days and ISO weeks are unions of buckets. Shifts are unions of
buckets when every shift starts and ends on the grid (``check_grid``); breaks, holidays and
maintenance windows may fall anywhere, as planned time inside a bucket is exact.

``machine_buckets`` reads a machine's data for a range of buckets once, as arrays
(``load_machine_arrays``), and computes every bucket in one pass over it
(``services.kpi.sweep``), each exactly what ``machine_components`` gives for that bucket
alone. The engine run per bucket stays as the reference: on each bucket's slice of the data
(``_sliced_buckets``, also used for the few buckets the sweep leaves to it) or reading each
bucket itself from an in-memory copy of the samples (``_engine_buckets``, also the fallback
should ``MachineData`` gain a field the sweep does not know).
Each bucket also reports the span of raw data its value rests on (``dep_first_ns`` ..
``dep_last_ns``), which the bucket store uses to detect late data, and whether a stop event
was still open at the end of the data (``open``: its value can change as data arrives, so
it is never trusted from the store).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np

from karkhana.calendar import shift_instances
from karkhana.config.factory import MachineRef, Site
from karkhana.models import Quality, from_ns, to_ns
from services.kpi.arrays import MachineArrays, SampleArrays, SiteCalendars, load_machine_arrays
from services.kpi.components import OeeComponents
from services.kpi.engine import MachineData, MachineSpec, load_machine_data, machine_components
from services.kpi.planned import PlannedTime, planned_ns
from services.kpi.source import Point, SampleSource
from services.kpi.sweep import BoolArray, BucketColumns, IntArray, sweep_buckets
from services.kpi.timeline import STOP_STATES, canonical_state

BUCKET_S = 900
BUCKET_NS = BUCKET_S * 1_000_000_000


class OffGrid(ValueError):
    """A window or calendar boundary that does not fall on the 15-minute bucket grid."""


def floor_bucket(ts_ns: int) -> int:
    return ts_ns - ts_ns % BUCKET_NS


def ceil_bucket(ts_ns: int) -> int:
    return -floor_bucket(-ts_ns)


def on_grid(instant: datetime) -> bool:
    return to_ns(instant) % BUCKET_NS == 0


def check_window(start: datetime, end: datetime) -> None:
    """Raise ``OffGrid`` unless ``start`` and ``end`` are bucket boundaries."""
    for name, instant in (("from", start), ("to", end)):
        if not on_grid(instant):
            raise OffGrid(
                f"'{name}' {instant.isoformat()} is not on the {BUCKET_S // 60}-minute bucket "
                "grid (use a quarter hour such as 06:00, 06:15, 06:30, 06:45)"
            )


def check_grid(site: Site, start: datetime, end: datetime) -> None:
    """Raise ``OffGrid`` when a shift of ``site`` overlapping ``[start, end)`` starts or ends
    off the bucket grid (then it is not a union of buckets)."""
    for inst in shift_instances(site, start, end):
        for instant in (inst.start, inst.end):
            if not on_grid(instant):
                local = instant.astimezone(site.tz)
                raise OffGrid(
                    f"site {site.id!r}: shift {inst.name!r} has a boundary at "
                    f"{local:%Y-%m-%d %H:%M} local time, which is not on the "
                    f"{BUCKET_S // 60}-minute bucket grid; start and end shifts on quarter "
                    "hours to report by shift"
                )


# --- periods ------------------------------------------------------------------------------


class PeriodKind(StrEnum):
    HOUR = "hour"
    SHIFT = "shift"
    DAY = "day"
    WEEK = "week"


@dataclass(frozen=True, slots=True)
class Period:
    """A reporting period, clipped to the query window; ``label`` names it in local terms."""

    label: str
    start: datetime
    end: datetime


def _local_steps(site: Site, start: datetime, end: datetime, kind: PeriodKind) -> list[Period]:
    tz = site.tz
    local = start.astimezone(tz)
    if kind is PeriodKind.HOUR:
        cursor = local.replace(minute=0, second=0, microsecond=0)
    else:
        cursor = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if kind is PeriodKind.WEEK:
            cursor -= timedelta(days=cursor.weekday())
    out: list[Period] = []
    while cursor.astimezone(UTC) < end:
        if kind is PeriodKind.HOUR:
            # Step in UTC so a repeated local hour (DST end) is two periods, not one.
            nxt = (cursor.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
            label = f"{cursor:%Y-%m-%dT%H:%M%z}"
        elif kind is PeriodKind.DAY:
            nxt = datetime.combine(cursor.date() + timedelta(days=1), cursor.time(), tzinfo=tz)
            label = f"{cursor:%Y-%m-%d}"
        else:
            nxt = datetime.combine(cursor.date() + timedelta(days=7), cursor.time(), tzinfo=tz)
            year, week, _ = cursor.isocalendar()
            label = f"{year}-W{week:02d}"
        a, b = max(cursor.astimezone(UTC), start), min(nxt.astimezone(UTC), end)
        if a < b:
            out.append(Period(label, a, b))
        cursor = nxt
    return out


def periods(site: Site, start: datetime, end: datetime, kind: PeriodKind) -> list[Period]:
    """The ``kind`` periods of ``site`` overlapping ``[start, end)``, clipped to it, in time
    order. Hours, days and weeks (ISO, Monday first) are local; shifts are the calendar's
    shift instances, labelled ``<local start date>/<shift name>``. Time outside every shift
    belongs to no shift period (it holds no planned time)."""
    if kind is not PeriodKind.SHIFT:
        return _local_steps(site, start, end, kind)
    out: list[Period] = []
    for inst in shift_instances(site, start, end):
        a, b = max(inst.start, start), min(inst.end, end)
        if a < b:
            out.append(Period(f"{inst.day.isoformat()}/{inst.name}", a, b))
    return out


# --- bucket computation ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketResult:
    """One machine's components over ``[start_ns, start_ns + BUCKET_NS)``.

    ``dep_first_ns`` / ``dep_last_ns``: the earliest and latest raw sample time the value
    rests on: the bucket itself and whatever the engine read for it (state samples bounding
    the stop events in progress at either edge, counter baselines, the sample covering the
    bucket start). ``open``: a stop event was still in progress at the
    end of the data, so the value can change as data arrives.
    """

    start_ns: int
    components: OeeComponents
    dep_first_ns: int
    dep_last_ns: int
    open: bool


class _Recorder:
    """The span of sample times handed out, and whether a forward read hit the data's end."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.exhausted = False

    def see(self, ts_ns: int) -> None:
        if self.first is None or ts_ns < self.first:
            self.first = ts_ns
        if self.last is None or ts_ns > self.last:
            self.last = ts_ns


class _Series:
    def __init__(self, points: Sequence[Point]) -> None:
        self.points = points
        self.ts = [p.ts_ns for p in points]


class PreloadedSource:
    """A ``SampleSource`` over one machine's samples of ``[lo_ns, hi_ns)`` held in memory,
    falling back to ``source`` for reads that reach outside; it records what each bucket
    reads (``recorder``)."""

    def __init__(
        self, source: SampleSource, asset: str, signals: Iterable[str], lo_ns: int, hi_ns: int
    ) -> None:
        self._source = source
        self._asset = asset
        self.lo_ns, self.hi_ns = lo_ns, hi_ns
        self._series = {sig: _Series(source.points(asset, sig, lo_ns, hi_ns)) for sig in signals}
        times = list(source.sample_times(asset, lo_ns, hi_ns))
        self._before_lo = times[0] if times and times[0] < lo_ns else None
        self._times = times[1:] if self._before_lo is not None else times
        self.recorder = _Recorder()

    def _own(self, asset: str, signal: str) -> _Series | None:
        return self._series.get(signal) if asset == self._asset else None

    def points(self, asset: str, signal: str, start_ns: int, end_ns: int) -> Sequence[Point]:
        series = self._own(asset, signal)
        if series is None or start_ns < self.lo_ns or end_ns > self.hi_ns:
            out = list(self._source.points(asset, signal, start_ns, end_ns))
        else:
            out = list(
                series.points[bisect_left(series.ts, start_ns) : bisect_left(series.ts, end_ns)]
            )
        for p in out:
            self.recorder.see(p.ts_ns)
        return out

    def points_before(self, asset: str, signal: str, before_ns: int) -> Iterator[Point]:
        series = self._own(asset, signal)
        if series is not None and self.lo_ns <= before_ns <= self.hi_ns:
            for k in range(bisect_left(series.ts, before_ns) - 1, -1, -1):
                self.recorder.see(series.ts[k])
                yield series.points[k]
            before_ns = self.lo_ns
        for p in self._source.points_before(asset, signal, before_ns):
            self.recorder.see(p.ts_ns)
            yield p

    def points_from(self, asset: str, signal: str, from_ns: int) -> Iterator[Point]:
        series = self._own(asset, signal)
        if series is not None and self.lo_ns <= from_ns <= self.hi_ns:
            for k in range(bisect_left(series.ts, from_ns), len(series.ts)):
                self.recorder.see(series.ts[k])
                yield series.points[k]
            from_ns = self.hi_ns
        for p in self._source.points_from(asset, signal, from_ns):
            self.recorder.see(p.ts_ns)
            yield p
        self.recorder.exhausted = True

    def sample_times(self, asset: str, start_ns: int, end_ns: int) -> Sequence[int]:
        if asset != self._asset or start_ns < self.lo_ns or end_ns > self.hi_ns:
            out = list(self._source.sample_times(asset, start_ns, end_ns))
        else:
            i, j = bisect_left(self._times, start_ns), bisect_left(self._times, end_ns)
            before = self._times[i - 1] if i > 0 else self._before_lo
            out = ([before] if before is not None else []) + self._times[i:j]
        for t in out:
            self.recorder.see(t)
        return out


def machine_buckets(
    source: SampleSource, ref: MachineRef, start_ns: int, end_ns: int, max_gap_s: float
) -> list[BucketResult]:
    """Components of every bucket of ``[start_ns, end_ns)`` (both on the grid), each exactly
    what ``compute_machine`` gives for that bucket alone. The machine's data for the whole
    range is read once (``load_machine_arrays``) and swept once (``sweep_buckets``)."""
    return bucket_batch(source, ref, start_ns, end_ns, max_gap_s).as_results()


_SLICED_FIELDS = {
    "start_ns",
    "end_ns",
    "planned",
    "states",
    "total_counts",
    "reject_counts",
    "sample_times",
    "maintenance_ns",
    "modes",
    "energy_counts",
}


def _engine_buckets(
    source: SampleSource, ref: MachineRef, start_ns: int, end_ns: int, max_gap_s: float
) -> list[BucketResult]:
    signals = [s for s in ref.machine.signals.model_dump().values() if isinstance(s, str)]
    memory = PreloadedSource(source, ref.path, signals, start_ns, end_ns)
    spec = MachineSpec.from_ref(ref)
    out: list[BucketResult] = []
    for s in range(start_ns, end_ns, BUCKET_NS):
        memory.recorder = rec = _Recorder()
        data = load_machine_data(memory, ref, from_ns(s), from_ns(s + BUCKET_NS))
        components = machine_components(data, spec, max_gap_s)
        # Any sample inside the bucket matters, whatever the engine read.
        first = s if rec.first is None else min(rec.first, s)
        last = s + BUCKET_NS - 1 if rec.last is None else max(rec.last, s + BUCKET_NS - 1)
        out.append(BucketResult(s, components, first, last, rec.exhausted))
    return out


def _last_good_index(points: Sequence[Point]) -> list[int]:
    """For each index, the latest index at or before it whose sample is not bad (-1: none)."""
    out: list[int] = []
    last = -1
    for i, p in enumerate(points):
        if p.quality != Quality.BAD:
            last = i
        out.append(last)
    return out


class _Counter:
    """A counter's samples (baseline first), sliced the way ``load_machine_data`` reads them:
    the latest non-bad sample before the bucket, then the bucket's samples. The second value
    is the earliest sample time read before the bucket: the baseline's or, without one, the
    earliest bad sample read looking for it (``bad_before``: before ``points``)."""

    def __init__(self, points: Sequence[Point], bad_before: int | None = None) -> None:
        self.points = points
        self.ts = [p.ts_ns for p in points]
        self.last_good = _last_good_index(points)
        self.bad_before = bad_before

    def slice(self, s: int, e: int) -> tuple[list[Point], int | None]:
        lo, hi = bisect_left(self.ts, s), bisect_left(self.ts, e)
        base = self.last_good[lo - 1] if lo > 0 else -1
        window = list(self.points[lo:hi])
        if base < 0:
            if self.bad_before is None and lo > 0:
                return window, self.ts[0]
            return window, self.bad_before
        return [self.points[base], *window], self.ts[base]


class _Modes:
    """The mode signal's samples (baseline first), sliced the way ``load_machine_data``
    reads them: the latest sample before the bucket (any quality), then the bucket's."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.points = points
        self.ts = [p.ts_ns for p in points]

    def slice(self, s: int, e: int) -> tuple[list[Point], int | None]:
        lo, hi = bisect_left(self.ts, s), bisect_left(self.ts, e)
        if lo == 0:
            return list(self.points[lo:hi]), None
        return list(self.points[lo - 1 : hi]), self.ts[lo - 1]


class _Slicer:
    """A machine's data for a range (``load_machine_data``), sliced into what the engine
    reads for one bucket of it: the reference computation of a bucket."""

    def __init__(
        self,
        data: MachineData,
        ref: MachineRef,
        bad_before: tuple[int | None, int | None, int | None] = (None, None, None),
    ) -> None:
        self.data = data
        self.spec = MachineSpec.from_ref(ref)
        states = data.states
        self.ts = [p.ts_ns for p in states]
        self.stop = stop = [canonical_state(p, self.spec.state_map) in STOP_STATES for p in states]
        n = self.n = len(states)
        # back[k]: the latest index <= k that is not a stop state (0 when none), which bounds
        # the stop event in progress there. fwd[k]: the first index >= k not a stop state (n:
        # none, the event is open at the end of the data).
        self.back, last = [0] * n, 0
        for k in range(n):
            if not stop[k]:
                last = k
            self.back[k] = last
        self.fwd, nxt = [n] * (n + 1), n
        for k in range(n - 1, -1, -1):
            if not stop[k]:
                nxt = k
            self.fwd[k] = nxt
        self.reach_ns = round(ref.startup_window_s * 1e9)
        self.totals = _Counter(data.total_counts, bad_before[0])
        self.rejects = _Counter(data.reject_counts, bad_before[1])
        self.energy, self.modes = _Counter(data.energy_counts, bad_before[2]), _Modes(data.modes)
        self.times = list(data.sample_times)
        self.planned = PlannedTime(data.planned)
        self.p_starts = [a for a, _ in sorted(data.planned)]
        self.p_ends = [b for _, b in sorted(data.planned)]
        start, end = from_ns(data.start_ns), from_ns(data.end_ns)
        self.shift_time = (
            PlannedTime(planned_ns(ref.site, start, end)) if data.maintenance_ns else None
        )

    def bucket(self, s: int, max_gap_s: float) -> BucketResult:
        e = s + BUCKET_NS
        ts, stop, n = self.ts, self.stop, self.n
        lo, hi = bisect_left(ts, s), bisect_left(ts, e)
        # As stop_event_bounds: back to a non-stop sample at or before s - startup window.
        k0 = min(lo - 1, bisect_right(ts, s - self.reach_ns) - 1)
        first = self.back[k0] if k0 >= 0 else 0
        is_open = False
        if hi > first and stop[hi - 1]:
            is_open = self.fwd[hi] >= n
            last_idx = min(self.fwd[hi], n - 1)
        else:
            last_idx = hi - 1
        bucket_states = self.data.states[first : last_idx + 1]
        total_pts, total_base = self.totals.slice(s, e)
        reject_pts, reject_base = self.rejects.slice(s, e)
        energy_pts, energy_base = self.energy.slice(s, e)
        mode_pts, mode_base = self.modes.slice(s, e)
        times = self.times
        t_lo, t_hi = bisect_left(times, s), bisect_left(times, e)
        bucket_times = times[max(t_lo - 1, 0) : t_hi]
        p_starts, p_ends = self.p_starts, self.p_ends
        i_lo, i_hi = bisect_right(p_ends, s), bisect_left(p_starts, e)
        bucket_planned = [
            (max(a, s), min(b, e))
            for a, b in zip(p_starts[i_lo:i_hi], p_ends[i_lo:i_hi], strict=True)
        ]
        shift_time, planned = self.shift_time, self.planned
        maintenance = shift_time.overlap(s, e) - planned.overlap(s, e) if shift_time else 0
        sub = MachineData(
            start_ns=s,
            end_ns=e,
            planned=[(a, b) for a, b in bucket_planned if a < b],
            states=bucket_states,
            total_counts=total_pts,
            reject_counts=reject_pts,
            sample_times=bucket_times,
            maintenance_ns=maintenance,
            modes=mode_pts,
            energy_counts=energy_pts,
        )
        deps = [s, e - 1]
        if bucket_states:
            deps += [bucket_states[0].ts_ns, bucket_states[-1].ts_ns]
        bases = (total_base, reject_base, energy_base, mode_base)
        deps += [t for t in bases if t is not None]
        if bucket_times:
            deps.append(bucket_times[0])
        components = machine_components(sub, self.spec, max_gap_s)
        return BucketResult(s, components, min(deps), max(deps), is_open)


def _sliced_buckets(
    source: SampleSource, ref: MachineRef, start_ns: int, end_ns: int, max_gap_s: float
) -> list[BucketResult]:
    """Reference: the engine run on each bucket's slice of the range's data."""
    data = load_machine_data(source, ref, from_ns(start_ns), from_ns(end_ns))
    slicer = _Slicer(data, ref, _bad_before_counters(source, ref, data, start_ns))
    return [slicer.bucket(s, max_gap_s) for s in range(start_ns, end_ns, BUCKET_NS)]


def swept_columns(
    source: SampleSource,
    ref: MachineRef,
    start_ns: int,
    end_ns: int,
    max_gap_s: float,
    calendars: SiteCalendars | None = None,
) -> tuple[BucketColumns, dict[int, BucketResult]]:
    """Every bucket of ``[start_ns, end_ns)`` in one pass (``sweep_buckets``), plus the
    buckets the sweep leaves to the engine (index -> result)."""
    data = load_machine_arrays(source, ref, from_ns(start_ns), from_ns(end_ns), calendars)
    shifts = (
        planned_ns(ref.site, from_ns(start_ns), from_ns(end_ns)) if data.maintenance_ns else None
    )
    bad_before = _bad_before_counters(source, ref, data, start_ns)
    columns = sweep_buckets(data, MachineSpec.from_ref(ref), max_gap_s, shifts, bad_before)
    redone: dict[int, BucketResult] = {}
    if columns.redo:
        slicer = _Slicer(data.to_data(), ref, bad_before)
        for k in columns.redo:
            redone[k] = slicer.bucket(start_ns + k * BUCKET_NS, max_gap_s)
    return columns, redone


def _bad_before(
    source: SampleSource,
    asset: str,
    signal: str | None,
    points: Sequence[Point] | SampleArrays,
    start_ns: int,
) -> int | None:
    """The earliest sample of a counter before ``start_ns`` when it has no good baseline
    there (all its earlier samples are bad; the engine reads them all looking for one)."""
    if signal is None:
        return None
    if isinstance(points, SampleArrays):
        if len(points) and points.ts[0] < start_ns:
            return None
    elif points and points[0].ts_ns < start_ns:
        return None
    earliest = None
    for p in source.points_before(asset, signal, start_ns):
        earliest = p.ts_ns
    return earliest


def _bad_before_counters(
    source: SampleSource, ref: MachineRef, data: MachineData | MachineArrays, start_ns: int
) -> tuple[int | None, int | None, int | None]:
    signals = ref.machine.signals
    return (
        _bad_before(source, ref.path, signals.total_count, data.total_counts, start_ns),
        _bad_before(source, ref.path, signals.reject_count, data.reject_counts, start_ns),
        _bad_before(source, ref.path, signals.energy, data.energy_counts, start_ns),
    )


@dataclass(slots=True)
class BucketBatch:
    """The buckets of ``[start_ns, start_ns + count * BUCKET_NS)``: ``columns`` from the
    sweep, and whole results (by bucket index) for those computed apart, which is all of
    them when ``columns`` is None."""

    start_ns: int
    count: int
    columns: BucketColumns | None
    results: dict[int, BucketResult]

    def result(self, k: int) -> BucketResult:
        done = self.results.get(k)
        if done is not None:
            return done
        columns = self.columns
        assert columns is not None, "a bucket is either swept or computed apart"
        return BucketResult(
            self.start_ns + k * BUCKET_NS,
            columns.components(k),
            int(columns.dep_first_ns[k]),
            int(columns.dep_last_ns[k]),
            bool(columns.open[k]),
        )

    def as_results(self) -> list[BucketResult]:
        return [self.result(k) for k in range(self.count)]

    def deps(self, k: int) -> tuple[int, int, bool]:
        """``dep_first_ns``, ``dep_last_ns`` and ``open`` of bucket ``k``."""
        done = self.results.get(k)
        if done is not None:
            return done.dep_first_ns, done.dep_last_ns, done.open
        columns = self.columns
        assert columns is not None, "a bucket is either swept or computed apart"
        return int(columns.dep_first_ns[k]), int(columns.dep_last_ns[k]), bool(columns.open[k])

    def dep_arrays(self) -> tuple[IntArray, IntArray, BoolArray]:
        """``deps`` of every bucket, as arrays."""
        columns = self.columns
        if columns is None:
            first = np.zeros(self.count, dtype=np.int64)
            last = np.zeros(self.count, dtype=np.int64)
            is_open = np.zeros(self.count, dtype=bool)
        else:
            first = columns.dep_first_ns.copy()
            last = columns.dep_last_ns.copy()
            is_open = columns.open.copy()
        for k, r in self.results.items():
            first[k], last[k], is_open[k] = r.dep_first_ns, r.dep_last_ns, r.open
        return first, last, is_open


def bucket_batch(
    source: SampleSource,
    ref: MachineRef,
    start_ns: int,
    end_ns: int,
    max_gap_s: float,
    calendars: SiteCalendars | None = None,
) -> BucketBatch:
    """Every bucket of ``[start_ns, end_ns)`` (on the grid), each exactly what
    ``compute_machine`` gives for that bucket alone, as columns where possible
    (``calendars``: planned intervals shared by the machines of one unit of work)."""
    if start_ns % BUCKET_NS or end_ns % BUCKET_NS:
        raise OffGrid("bucket ranges must start and end on the bucket grid")
    count = (end_ns - start_ns) // BUCKET_NS
    if {f.name for f in fields(MachineData)} != _SLICED_FIELDS:
        # The engine needs data the sweep does not know: let it read each bucket itself
        # (slower, always right).
        results = _engine_buckets(source, ref, start_ns, end_ns, max_gap_s)
        return BucketBatch(start_ns, count, None, dict(enumerate(results)))
    columns, redone = swept_columns(source, ref, start_ns, end_ns, max_gap_s, calendars)
    return BucketBatch(start_ns, count, columns, redone)


def bucket_range(start: datetime, end: datetime) -> tuple[int, int]:
    """The grid-aligned nanosecond range covering ``[start, end)``."""
    return floor_bucket(to_ns(start)), ceil_bucket(to_ns(end))


def bucket_start(ts_ns: int) -> datetime:
    return from_ns(floor_bucket(ts_ns))
