"""Every 15-minute bucket of a range in one pass over one machine's data, as array operations.

``sweep_buckets`` takes the machine's data for the whole range as arrays
(``services.kpi.arrays``) and adds every piece of its timeline (states, counters, modes,
energy, planned intervals, sample times) to the buckets it overlaps. Each bucket gets exactly
what ``machine_components`` gives for that bucket alone: the rules are the engine's, applied
to the whole range instead of bucket by bucket. What makes that exact:

- Times are integer nanoseconds of planned time (int64), summed per bucket before the one
  division, so the order in which pieces are added does not matter. An interval's planned
  time in a bucket is ``P(min(b, e)) - P(max(a, s))`` with ``P`` the planned time before an
  instant, which ``_Grid.spread`` evaluates for all intervals at once: each end point adds
  whole buckets before its own and a part of its own.
- Stop events are classified on their whole duration, which does not depend on the bucket.
  The one exception is a stop event still open at the end of the data: the engine classifies
  it by its duration up to the bucket's end. The sweep counts it as long; the buckets in which
  the engine would see it short are listed in ``BucketColumns.redo`` for the caller to
  compute with the engine.
- Counter deltas: each sample's increment over the previous usable sample of its bucket (or
  the bucket's baseline, the latest non-bad sample before it) is what ``counter_delta``
  adds for it. With integer values (every unit counter) the sums are exact whatever their
  order, so they are summed per bucket as arrays; other values (an energy meter in kWh) are
  summed in sample order by the loop ``counter_delta`` runs, so the floats are the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from karkhana.config.factory import StateMap, map_state
from karkhana.models import MachineState, Quality
from services.kpi.arrays import MachineArrays, SampleArrays
from services.kpi.components import DOWN_CATEGORIES, OeeComponents
from services.kpi.counters import BAD_COUNTER_VALUE, COUNTER_RESET, _numeric, counter_delta
from services.kpi.engine import NO_DATA, REJECTS_EXCEED_TOTAL, MachineSpec, _startup_periods
from services.kpi.modes import AUTO, MANUAL, map_mode
from services.kpi.planned import NsInterval
from services.kpi.source import Point
from services.kpi.timeline import STOP_STATES, UNMAPPED_STATE

BUCKET_NS = 900 * 1_000_000_000
_NS = 1e9
_NO_FLAGS: frozenset[str] = frozenset()

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Canonical states as small integers: the index in _STATES (0: unknown).
_STATES: tuple[MachineState | None, ...] = (None, *MachineState)
_CODE = {s: i for i, s in enumerate(_STATES)}
_UNKNOWN = 0
_RUNNING = _CODE[MachineState.RUNNING]
_FAULT = _CODE[MachineState.FAULT]
_PLANNED_STOP = _CODE[MachineState.PLANNED_STOP]
_STOP_CODES = np.array(sorted(_CODE[s] for s in STOP_STATES), dtype=np.int8)
# Mode codes.
_MODE_UNKNOWN, _MODE_AUTO, _MODE_MANUAL = 0, 1, 2
_MODE_CODE = {None: _MODE_UNKNOWN, AUTO: _MODE_AUTO, MANUAL: _MODE_MANUAL}
# Flags as bits of one integer per bucket.
_FLAG_BITS = (UNMAPPED_STATE, COUNTER_RESET, BAD_COUNTER_VALUE, NO_DATA, REJECTS_EXCEED_TOTAL)
# Integer counter values below this (times the samples) sum exactly in float64.
_EXACT = 2.0**53


@dataclass(slots=True)
class BucketColumns:
    """Per-bucket values of ``count`` buckets from ``start_ns``, one array per component
    (int64 nanoseconds where the engine counts nanoseconds)."""

    start_ns: int
    count: int
    ideal_cycle_s: float
    calendar_ns: IntArray
    maintenance_ns: IntArray
    run_ns: IntArray
    short_stop_ns: IntArray
    no_data_ns: IntArray
    planned_stop_ns: IntArray
    down_ns: dict[str, IntArray]
    external_ns: dict[str, IntArray]
    failures: IntArray
    total: FloatArray
    rejects: FloatArray
    energy: FloatArray
    startup_rejects: FloatArray
    covered_ns: IntArray
    mode_known_ns: IntArray
    mode_auto_ns: IntArray
    interventions: IntArray
    flags: list[frozenset[str]]
    dep_first_ns: IntArray
    dep_last_ns: IntArray
    open: BoolArray
    # Buckets whose value the sweep cannot give (see the module doc): compute them apart.
    redo: list[int] = field(default_factory=list)

    def components(self, k: int) -> OeeComponents:
        """Bucket ``k`` as ``machine_components`` builds it."""
        ideal = self.ideal_cycle_s
        total, rejects = float(self.total[k]), float(self.rejects[k])
        startup = float(self.startup_rejects[k])
        return OeeComponents(
            planned_s=(int(self.calendar_ns[k]) - int(self.planned_stop_ns[k])) / _NS,
            run_s=int(self.run_ns[k]) / _NS,
            short_stop_s=int(self.short_stop_ns[k]) / _NS,
            down_s=MappingProxyType({c: int(v[k]) / _NS for c, v in self.down_ns.items()}),
            no_data_s=int(self.no_data_ns[k]) / _NS,
            planned_stop_s=int(self.planned_stop_ns[k]) / _NS,
            ideal_s=total * ideal,
            total=total,
            good=total - rejects,
            covered_s=int(self.covered_ns[k]) / _NS,
            window_s=BUCKET_NS / _NS,
            external_s=MappingProxyType({c: int(v[k]) / _NS for c, v in self.external_ns.items()}),
            maintenance_s=int(self.maintenance_ns[k]) / _NS,
            startup_rejects=startup,
            startup_reject_s=startup * ideal,
            production_reject_s=(rejects - startup) * ideal,
            failures=int(self.failures[k]),
            energy_kwh=float(self.energy[k]),
            mode_run_s=int(self.mode_known_ns[k]) / _NS,
            auto_run_s=int(self.mode_auto_ns[k]) / _NS,
            manual_interventions=int(self.interventions[k]),
            flags=self.flags[k],
        )

    def flat(self) -> dict[str, FloatArray]:
        """Every bucket's components as float columns, named as the bucket table names
        them (``field``, or ``field__key`` for a mapping field), each value what
        ``components(k)`` holds."""
        ideal = self.ideal_cycle_s
        total, rejects, startup = self.total, self.rejects, self.startup_rejects

        def seconds(values: IntArray) -> FloatArray:
            return values / _NS

        out = {
            "planned_s": seconds(self.calendar_ns - self.planned_stop_ns),
            "run_s": seconds(self.run_ns),
            "short_stop_s": seconds(self.short_stop_ns),
            "no_data_s": seconds(self.no_data_ns),
            "planned_stop_s": seconds(self.planned_stop_ns),
            "ideal_s": total * ideal,
            "total": total.copy(),
            "good": total - rejects,
            "covered_s": seconds(self.covered_ns),
            "window_s": np.full(self.count, BUCKET_NS / _NS),
            "maintenance_s": seconds(self.maintenance_ns),
            "startup_rejects": startup.copy(),
            "startup_reject_s": startup * ideal,
            "production_reject_s": (rejects - startup) * ideal,
            "failures": self.failures.astype(np.float64),
            "energy_kwh": self.energy.copy(),
            "mode_run_s": seconds(self.mode_known_ns),
            "auto_run_s": seconds(self.mode_auto_ns),
            "manual_interventions": self.interventions.astype(np.float64),
        }
        for name, mapping in (("down_s", self.down_ns), ("external_s", self.external_ns)):
            for key, values in mapping.items():
                out[f"{name}__{key}"] = seconds(values)
        return out


class _Grid:
    """Buckets of ``[start_ns, end_ns)`` and the planned time inside them."""

    def __init__(self, start_ns: int, end_ns: int, planned: Sequence[NsInterval]) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        self.count = count = (end_ns - start_ns) // BUCKET_NS
        ordered = sorted(planned)
        self._starts = np.array([a for a, _ in ordered], dtype=np.int64)
        self._ends = np.array([b for _, b in ordered], dtype=np.int64)
        for i, (a, b) in enumerate(ordered):
            if b <= a or (i and a < ordered[i - 1][1]):
                raise ValueError("planned intervals must be non-empty and disjoint")
        lengths = self._ends - self._starts
        self._cum = np.cumsum(lengths) - lengths
        self.bounds = start_ns + np.arange(count + 1, dtype=np.int64) * BUCKET_NS
        # Planned time before each bucket edge, and in each bucket.
        self.edges = self.before(self.bounds)
        self.calendar = np.diff(self.edges)

    def before(self, t: IntArray) -> IntArray:
        """Planned time in ``(-inf, t)``, for each ``t``."""
        if not len(self._starts):
            return np.zeros(len(t), dtype=np.int64)
        i = np.searchsorted(self._starts, t, side="right") - 1
        j = np.maximum(i, 0)
        inside = self._cum[j] + np.minimum(t, self._ends[j]) - self._starts[j]
        return np.where(i >= 0, inside, 0)

    def bucket(self, t: IntArray) -> IntArray:
        return (t - self.start_ns) // BUCKET_NS

    def spread(self, a: IntArray, b: IntArray, plain: bool = False) -> IntArray:
        """Per bucket, the planned time (``plain``: the length) of the intervals
        ``[a[i], b[i])`` inside it."""
        count = self.count
        a = np.clip(a, self.start_ns, self.end_ns)
        b = np.maximum(np.clip(b, self.start_ns, self.end_ns), a)
        ka, kb = self.bucket(a), self.bucket(b)
        # Each end point adds (a start point takes) every whole bucket before its own...
        ends = np.bincount(kb, minlength=count + 1) - np.bincount(ka, minlength=count + 1)
        whole = np.cumsum(ends[::-1])[::-1][1:]
        # ... and its own bucket's part before it.
        if plain:
            part_b, part_a = b - self.bounds[kb], a - self.bounds[ka]
            out = whole * BUCKET_NS
        else:
            part_b, part_a = self.before(b) - self.edges[kb], self.before(a) - self.edges[ka]
            out = whole * self.calendar
        parts = np.zeros(count + 1, dtype=np.int64)
        np.add.at(parts, kb, part_b)
        np.subtract.at(parts, ka, part_a)
        return np.asarray(out + parts[:count], dtype=np.int64)

    def touched(self, a: IntArray, b: IntArray) -> BoolArray:
        """Per bucket ``[s, e)``: whether some interval has ``a < e`` and ``b > s``."""
        count, s0 = self.count, self.start_ns
        first = np.maximum((a - s0) // BUCKET_NS, 0)
        last = np.minimum(-((s0 - b) // BUCKET_NS), count)
        keep = first < last
        marks = np.zeros(count + 1, dtype=np.int64)
        np.add.at(marks, first[keep], 1)
        np.subtract.at(marks, last[keep], 1)
        return np.asarray(np.cumsum(marks[:count]) > 0)

    def buckets_touched(self, a: int, b: int) -> range:
        """Indexes of the buckets ``[s, e)`` with ``a < e`` and ``b > s``."""
        first = max((a - self.start_ns) // BUCKET_NS, 0)
        last = min(-((self.start_ns - b) // BUCKET_NS), self.count)
        return range(first, last)

    def zeros(self) -> IntArray:
        return np.zeros(self.count, dtype=np.int64)


def _state_codes(states: SampleArrays, state_map: StateMap) -> tuple[NDArray[np.int8], BoolArray]:
    """Canonical state codes and the unmapped samples, mapping each distinct raw value
    once (as ``canonical_state`` and ``is_unmapped``)."""
    values = states.values
    qualities = states.qualities
    # The type is part of the key: True, 1 and 1.0 are equal but may map differently.
    bad = [False] * len(values) if qualities is None else [q == Quality.BAD for q in qualities]
    keys = list(zip(map(type, values), values, bad, strict=True))
    # Each distinct key as (code, unmapped) packed in one integer: code * 2 + unmapped.
    table: dict[tuple[type, object, bool], int] = {}
    for key in dict.fromkeys(keys):
        _, value, is_bad = key
        state = None if is_bad else map_state(value, state_map)
        table[key] = _CODE[state] * 2 + (not is_bad and state is None)
    packed = np.array([table[k] for k in keys], dtype=np.int8)
    return packed >> 1, (packed & 1).astype(bool)


def _numbers(values: Sequence[object]) -> FloatArray:
    """Counter values as floats (NaN where ``_numeric`` finds no number)."""
    out: FloatArray | None = None
    if set(map(type, values)) <= {int, float, bool}:
        try:
            out = np.array(values, dtype=np.float64)
        except (OverflowError, ValueError):
            out = None
    if out is None:
        cache: dict[tuple[type, object], float] = {}
        floats: list[float] = []
        for v in values:
            key = (type(v), v)
            f = cache.get(key)
            if f is None:
                number = _numeric(Point(0, v))  # type: ignore[arg-type]
                f = cache[key] = np.nan if number is None else number
            floats.append(f)
        out = np.array(floats, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass(slots=True)
class _CounterColumns:
    delta: FloatArray
    reset: BoolArray
    bad: BoolArray
    # Per bucket, the time of its baseline (latest non-bad sample before it), where
    # ``has_base`` (else there is none).
    base_ts: IntArray
    has_base: BoolArray
    # Per usable sample in the range: its bucket and its increment (integer counters).
    sample_bucket: IntArray | None = None
    sample_ts: IntArray | None = None
    increment: FloatArray | None = None


def _counter_columns(
    counter: SampleArrays, grid: _Grid, bad_before: int | None = None
) -> _CounterColumns:
    """``counter_delta`` of every bucket's slice (its baseline, then its samples).

    A bucket without a non-bad sample before it still rests on the bad samples the engine
    reads back through looking for one: its baseline time is then the earliest of them
    (``bad_before``: the earliest sample before ``counter``, when all of those are bad)."""
    count = grid.count
    m = int(np.searchsorted(counter.ts, grid.end_ns))
    ts = counter.ts[:m]
    k = grid.bucket(ts)
    bad_q = counter.bad()[:m]
    good = ~bad_q
    v = _numbers(counter.values[:m])
    numeric = good & ~np.isnan(v)
    vn = v[numeric]
    if len(vn) and not (
        np.array_equal(vn, np.floor(vn)) and float(np.abs(vn).max()) * 2 * m < _EXACT
    ):
        return _counter_columns_in_order(counter.points()[:m], grid, bad_before)
    starts = grid.bounds[:count]
    # The baseline of each bucket: the latest non-bad sample before it.
    good_idx = np.flatnonzero(good)
    pos = np.searchsorted(ts[good_idx], starts) - 1
    has = pos >= 0
    base_i = good_idx[np.maximum(pos, 0)] if len(good_idx) else np.zeros(count, dtype=np.int64)
    base_val = np.where(has, v[base_i], np.nan) if len(good_idx) else np.full(count, np.nan)
    base_bad = has & np.isnan(base_val)
    base_ts = np.where(has, ts[base_i], 0) if len(good_idx) else np.zeros(count, dtype=np.int64)
    has_base = has.copy()
    if bad_before is not None:
        base_ts = np.where(has, base_ts, bad_before)
        has_base[:] = True
    elif bad_q.any():
        earliest = int(ts[np.argmax(bad_q)])
        fallback = ~has & (earliest < starts)
        base_ts = np.where(fallback, earliest, base_ts)
        has_base |= fallback
    # Each number's previous number: in its bucket, else the bucket's baseline.
    n_idx = np.flatnonzero(numeric)
    kn = k[n_idx]
    same = np.zeros(len(n_idx), dtype=bool)
    same[1:] = kn[1:] == kn[:-1]
    prev = np.empty(len(n_idx))
    prev[1:] = vn[:-1]
    in_range = kn >= 0
    prev = np.where(same, prev, base_val[np.clip(kn, 0, max(count - 1, 0))] if count else np.nan)
    counted = in_range & ~np.isnan(prev)
    increment = np.where(counted, np.where(vn >= prev, vn - prev, vn), 0.0)
    resets = counted & (vn < prev)
    delta = np.asarray(
        np.bincount(kn[in_range], weights=increment[in_range], minlength=count), dtype=np.float64
    )
    reset = np.bincount(kn[resets], minlength=count) > 0
    not_number = good & np.isnan(v) & (k >= 0)
    bad = base_bad | (np.bincount(k[not_number], minlength=count) > 0)
    return _CounterColumns(
        delta[:count],
        reset[:count],
        bad[:count],
        base_ts,
        has_base,
        kn[in_range],
        ts[n_idx][in_range],
        increment[in_range],
    )


def _counter_columns_in_order(
    points: Sequence[Point], grid: _Grid, bad_before: int | None
) -> _CounterColumns:
    """``_counter_columns`` for any values: each bucket summed in sample order."""
    count, s0 = grid.count, grid.start_ns
    delta = [0.0] * count
    base_ts: list[int | None] = [None] * count
    reset: set[int] = set()
    bad: set[int] = set()
    # The latest non-bad sample so far: its time and its value (None: not a number).
    last_ts: int | None = None
    last_value: float | None = None
    cur = -1
    prev: float | None = None
    acc = 0.0
    earliest_bad = bad_before

    def open_buckets(lo: int, hi: int) -> None:
        """Buckets ``lo .. hi - 1`` start with the latest non-bad sample as baseline."""
        if last_ts is None:
            for k in range(max(lo, 0), min(hi, count)):
                base_ts[k] = earliest_bad
            return
        for k in range(max(lo, 0), min(hi, count)):
            base_ts[k] = last_ts
            if last_value is None:
                bad.add(k)

    for p in points:
        ts_ns, raw, quality = p
        k = (ts_ns - s0) // BUCKET_NS
        if k >= count:
            break
        if k != cur:
            if cur >= 0:
                delta[cur] = acc
            open_buckets(cur + 1, k + 1)
            cur, acc = k, 0.0
            prev = last_value
        if quality == Quality.BAD:
            if earliest_bad is None:
                earliest_bad = ts_ns
            continue
        value: float | None
        if isinstance(raw, int | float):
            value = float(raw)
            if not isfinite(value):
                value = None
        else:
            value = _numeric(p)
        last_ts, last_value = ts_ns, value
        if value is None:
            if k >= 0:
                bad.add(k)
            continue
        if k >= 0 and prev is not None:
            if value >= prev:
                acc += value - prev
            else:
                acc += value
                reset.add(k)
        prev = value
    if 0 <= cur < count:
        delta[cur] = acc
    open_buckets(cur + 1, count)
    marks = np.zeros(count, dtype=bool)
    return _CounterColumns(
        np.array(delta, dtype=np.float64),
        _mark(marks, reset),
        _mark(marks, bad),
        np.array([0 if t is None else t for t in base_ts], dtype=np.int64),
        np.array([t is not None for t in base_ts], dtype=bool),
    )


def _mark(zeros: BoolArray, indexes: set[int]) -> BoolArray:
    out = zeros.copy()
    out[sorted(indexes)] = True
    return out


def _startup_rejects(
    grid: _Grid,
    startups: IntArray,
    window_ns: int,
    rejects: _CounterColumns,
    reject_points: SampleArrays,
) -> FloatArray:
    """Rejects counted in startup windows, per bucket, read as the engine reads them from
    the bucket's own slice of the reject counter: the increments of the reject samples
    inside a startup window (each over the previous usable sample of its bucket, or the
    bucket's baseline, as ``_delta_in`` takes them)."""
    count = grid.count
    if window_ns <= 0 or not len(startups):
        return np.zeros(count)
    if rejects.increment is None or rejects.sample_ts is None or rejects.sample_bucket is None:
        return _startup_rejects_in_order(grid, startups, window_ns, reject_points.points())
    t = rejects.sample_ts
    # Windows are equally long: the latest startup at or before a sample ends last.
    j = np.searchsorted(startups, t, side="right") - 1
    inside = (j >= 0) & (t < startups[np.maximum(j, 0)] + window_ns)
    found = np.bincount(
        rejects.sample_bucket[inside], weights=rejects.increment[inside], minlength=count
    )
    return np.asarray(found[:count], dtype=np.float64)


def _startup_rejects_in_order(
    grid: _Grid, startups: IntArray, window_ns: int, rejects: Sequence[Point]
) -> FloatArray:
    """``_startup_rejects`` for any values: each window's delta summed in sample order."""
    out = np.zeros(grid.count)
    per_bucket: dict[int, list[int]] = {}
    for t in startups.tolist():
        for k in grid.buckets_touched(t, t + window_ns):
            per_bucket.setdefault(k, []).append(t)
    ts = [p.ts_ns for p in rejects]
    bad = Quality.BAD
    usable = [p.quality != bad and _numeric(p) is not None for p in rejects]
    for k, bucket_startups in per_bucket.items():
        s = grid.start_ns + k * BUCKET_NS
        periods = _startup_periods(bucket_startups, window_ns, s, s + BUCKET_NS)
        if not periods:
            continue
        first = bisect_left(ts, s)
        # The bucket's baseline: the latest non-bad sample before it; the samples between
        # it and the bucket are bad, which ``counter_delta`` skips like the engine's slice.
        base = first - 1
        while base >= 0 and rejects[base].quality == bad:
            base -= 1
        total = 0.0
        for a, b in periods:
            lo, hi = bisect_left(ts, a), bisect_left(ts, b)
            if lo >= hi:
                continue
            j = lo - 1
            while j >= first and not usable[j]:
                j -= 1
            if j < first:
                j = base if base >= 0 and usable[base] else -1
            points = rejects[j:hi] if j >= 0 else rejects[lo:hi]
            total += counter_delta(points, a).delta
        out[k] = total
    return out


def _modes(
    grid: _Grid,
    run_a: IntArray,
    run_b: IntArray,
    modes: SampleArrays,
    mode_map: Mapping[str, str],
) -> tuple[IntArray, IntArray, IntArray]:
    """Planned run time with a known mode and in auto per bucket, and interventions.
    ``run_a``, ``run_b``: the run pieces (sorted, disjoint)."""
    count, s0, e0 = grid.count, grid.start_ns, grid.end_ns
    if not len(modes):
        return grid.zeros(), grid.zeros(), grid.zeros()
    seen: dict[tuple[type, object, bool], int] = {}
    codes: list[int] = []
    qualities = modes.qualities
    for i, value in enumerate(modes.values):
        bad = qualities is not None and qualities[i] == Quality.BAD
        key = (type(value), value, bad)
        code = seen.get(key)
        if code is None:
            code = seen[key] = _MODE_CODE[None if bad else map_mode(value, mode_map)]
        codes.append(code)
    mapped = np.array(codes, dtype=np.int8)
    mt = modes.ts
    t = mt[1:]
    entered = (mapped[1:] == _MODE_MANUAL) & (mapped[:-1] == _MODE_AUTO) & (t >= s0) & (t < e0)
    interventions = np.bincount(grid.bucket(t[entered]), minlength=count)[:count]
    # Each mode piece [lo, hi) with a known mode, cut by the run pieces it overlaps.
    lo = mt
    hi = np.empty_like(mt)
    hi[:-1] = mt[1:]
    hi[-1] = max(e0, int(mt[-1]))
    known = mapped != _MODE_UNKNOWN
    lo, hi, mode = lo[known], hi[known], mapped[known]
    first = np.searchsorted(run_b, lo, side="right")
    last = np.searchsorted(run_a, hi, side="left")
    n_pairs = np.maximum(last - first, 0)
    piece = np.repeat(np.arange(len(lo)), n_pairs)
    offset = np.arange(int(n_pairs.sum())) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    run = np.repeat(first, n_pairs) + offset
    a = np.maximum(run_a[run], lo[piece])
    b = np.minimum(run_b[run], hi[piece])
    auto = mode[piece] == _MODE_AUTO
    return grid.spread(a, b), grid.spread(a[auto], b[auto]), interventions


def sweep_buckets(
    data: MachineArrays,
    spec: MachineSpec,
    max_gap_s: float,
    shift_intervals: Sequence[NsInterval] | None = None,
    bad_before: tuple[int | None, int | None, int | None] = (None, None, None),
) -> BucketColumns:
    """Components of every bucket of ``[data.start_ns, data.end_ns)`` (on the grid) from the
    machine's data for the whole range (``load_machine_arrays``). ``shift_intervals``: the
    planned intervals of the range without the machine's maintenance windows (needed when
    ``data.maintenance_ns`` is not 0). ``bad_before``: for the total, reject and energy
    counters without a non-bad sample before the range, the earliest (bad) sample before it,
    which the engine reads when it looks for a baseline."""
    s0, e0 = data.start_ns, data.end_ns
    grid = _Grid(s0, e0, data.planned)
    count = grid.count
    calendar = grid.calendar
    maintenance = grid.zeros()
    if data.maintenance_ns and shift_intervals is not None:
        maintenance = _Grid(s0, e0, shift_intervals).calendar - calendar
    external_causes = spec.external_causes
    causes = list(dict.fromkeys(external_causes.values()))

    ts = data.states.ts
    n = len(ts)
    codes, unmapped = _state_codes(data.states, spec.state_map)
    stop = np.isin(codes, _STOP_CODES)
    threshold_ns = round(spec.short_stop_threshold_s * 1e9)
    # The last sample's value holds past the range.
    far = max(e0, int(ts[-1])) if n else e0
    seg_end = np.empty(n, dtype=np.int64)
    seg_end[:-1] = ts[1:]
    if n:
        seg_end[-1] = far
    # Stop events: maximal runs of stop states, classified on their whole duration.
    prev_stop = np.zeros(n, dtype=bool)
    prev_stop[1:] = stop[:-1]
    next_stop = np.zeros(n, dtype=bool)
    next_stop[:-1] = stop[1:]
    ev_first = np.flatnonzero(stop & ~prev_stop)
    ev_last = np.flatnonzero(stop & ~next_stop)
    closed = ev_last + 1 < n
    ev_short = closed & (seg_end[ev_last] - ts[ev_first] < threshold_ns)
    redo: list[int] = []
    if len(ev_last) and not closed[-1]:
        # Open at the end of the data: the engine classifies it by its duration up to each
        # bucket's end. Long here; buckets that see it short are redone.
        i, j = int(ev_first[-1]), int(ev_last[-1])
        ks = np.array(grid.buckets_touched(int(ts[i]), far), dtype=np.int64)
        seen_ns = np.maximum(s0 + (ks + 1) * BUCKET_NS, ts[j]) - ts[i]
        redo = ks[seen_ns < threshold_ns].tolist()
    short = np.zeros(n, dtype=bool)
    if len(ev_first):
        event = np.cumsum(stop & ~prev_stop) - 1
        short[stop] = ev_short[event[stop]]
    long = stop & ~short
    run = (codes == _RUNNING) | short

    # Every state segment into the groups it counts in, spread in one go.
    groups: list[tuple[BoolArray, int]] = [
        (run, 0),
        (short, 1),
        (codes == _UNKNOWN, 2),
        (codes == _PLANNED_STOP, 3),
    ]
    for g, category in enumerate(DOWN_CATEGORIES, start=4):
        groups.append((long & (codes == _CODE[MachineState(category)]), g))
    first_cause = 4 + len(DOWN_CATEGORIES)
    for g, cause in enumerate(causes, start=first_cause):
        states = [_CODE[s] for s, c in external_causes.items() if c == cause]
        groups.append((long & np.isin(codes, states), g))
    spread = _spread_groups(grid, ts, seg_end, groups, first_cause + len(causes))
    # Unknown before the first sample (or throughout, without one).
    no_data = spread[2] + grid.spread(np.array([s0]), ts[:1]) if n else calendar.copy()

    # Failures: entries into fault inside long stop events, in the range and planned.
    prev_code = np.full(n, -1, dtype=np.int8)
    prev_code[1:] = codes[:-1]
    entry = long & (codes == _FAULT) & (prev_code != _FAULT) & (ts >= s0) & (ts < e0)
    t = ts[entry]
    t = t[grid.before(t + 1) - grid.before(t) > 0]
    failures = np.bincount(grid.bucket(t), minlength=count)[:count]
    # Startups: running right after a long stop event.
    after = ev_last[closed & ~ev_short] + 1
    startups = ts[after[codes[after] == _RUNNING]]

    totals = _counter_columns(data.total_counts, grid, bad_before[0])
    rejects = _counter_columns(data.reject_counts, grid, bad_before[1])
    energy = _counter_columns(data.energy_counts, grid, bad_before[2])
    startup_rejects = _startup_rejects(
        grid, startups, round(spec.startup_window_s * _NS), rejects, data.reject_counts
    )
    known, auto, interventions = _modes(grid, ts[run], seg_end[run], data.modes, spec.mode_map)
    times = data.sample_times
    covered_to = times + round(max_gap_s * _NS)
    covered_to[:-1] = np.minimum(covered_to[:-1], times[1:])
    covered = grid.spread(times, covered_to, plain=True)

    bits = [
        grid.touched(ts[unmapped], seg_end[unmapped]),
        totals.reset | rejects.reset | energy.reset,
        totals.bad | rejects.bad | energy.bad,
        no_data > 0,
        rejects.delta > totals.delta,
    ]
    dep_first, dep_last, is_open = _dependencies(grid, data, stop, spec, (totals, rejects, energy))
    return BucketColumns(
        start_ns=s0,
        count=count,
        ideal_cycle_s=spec.ideal_cycle_s,
        calendar_ns=calendar,
        maintenance_ns=maintenance,
        run_ns=spread[0],
        short_stop_ns=spread[1],
        no_data_ns=no_data,
        planned_stop_ns=spread[3],
        down_ns={c: spread[g] for g, c in enumerate(DOWN_CATEGORIES, start=4)},
        external_ns={c: spread[g] for g, c in enumerate(causes, start=first_cause)},
        failures=failures,
        total=totals.delta,
        rejects=rejects.delta,
        energy=energy.delta,
        startup_rejects=startup_rejects,
        covered_ns=covered,
        mode_known_ns=known,
        mode_auto_ns=auto,
        interventions=interventions,
        flags=_flags(count, bits),
        dep_first_ns=dep_first,
        dep_last_ns=dep_last,
        open=is_open,
        redo=redo,
    )


def _spread_groups(
    grid: _Grid,
    ts: IntArray,
    seg_end: IntArray,
    groups: Sequence[tuple[BoolArray, int]],
    n_groups: int,
) -> list[IntArray]:
    """Per group, the planned time of its segments ``[ts, seg_end)`` per bucket."""
    count = grid.count
    a = np.concatenate([ts[mask] for mask, _ in groups])
    b = np.concatenate([seg_end[mask] for mask, _ in groups])
    g = np.concatenate([np.full(int(mask.sum()), i, dtype=np.int64) for mask, i in groups])
    a = np.clip(a, grid.start_ns, grid.end_ns)
    b = np.maximum(np.clip(b, grid.start_ns, grid.end_ns), a)
    ka, kb = grid.bucket(a), grid.bucket(b)
    width = count + 1
    size = n_groups * width
    ends = np.bincount(g * width + kb, minlength=size) - np.bincount(g * width + ka, minlength=size)
    ends = ends.reshape(n_groups, width)
    whole = np.cumsum(ends[:, ::-1], axis=1)[:, ::-1][:, 1:]
    parts = np.zeros(size, dtype=np.int64)
    np.add.at(parts, g * width + kb, grid.before(b) - grid.edges[kb])
    np.subtract.at(parts, g * width + ka, grid.before(a) - grid.edges[ka])
    out = whole * grid.calendar + parts.reshape(n_groups, width)[:, :count]
    return [np.asarray(row, dtype=np.int64) for row in out]


def _flags(count: int, bits: Sequence[BoolArray]) -> list[frozenset[str]]:
    mask = np.zeros(count, dtype=np.int64)
    for i, marked in enumerate(bits):
        mask |= marked.astype(np.int64) << i
    sets: dict[int, frozenset[str]] = {0: _NO_FLAGS}
    out: list[frozenset[str]] = []
    for m in mask.tolist():
        found = sets.get(m)
        if found is None:
            found = sets[m] = frozenset(f for i, f in enumerate(_FLAG_BITS) if m >> i & 1)
        out.append(found)
    return out


def _dependencies(
    grid: _Grid,
    data: MachineArrays,
    stop: BoolArray,
    spec: MachineSpec,
    counters: Sequence[_CounterColumns],
) -> tuple[IntArray, IntArray, BoolArray]:
    """Per bucket: the earliest and latest raw sample time its value rests on, and whether
    a stop event was still open at the end of the data (as the engine's reads record)."""
    ts = data.states.ts
    n = len(ts)
    starts = grid.bounds[:-1]
    ends = grid.bounds[1:]
    lo = starts.copy()
    hi = ends - 1
    is_open = np.zeros(grid.count, dtype=bool)
    if n:
        idx = np.arange(n)
        # back[k]: latest non-stop index <= k (0: none); fwd[k]: first non-stop index >= k.
        back = np.maximum.accumulate(np.where(stop, 0, idx))
        fwd = np.empty(n + 1, dtype=np.int64)
        fwd[:n] = np.minimum.accumulate(np.where(stop, n, idx)[::-1])[::-1]
        fwd[n] = n
        reach_ns = round(spec.startup_window_s * _NS)
        lo_s = np.searchsorted(ts, starts)
        hi_s = np.searchsorted(ts, ends)
        reach_idx = np.searchsorted(ts, starts - reach_ns, side="right")
        k0 = np.minimum(lo_s - 1, reach_idx - 1)
        first = np.where(k0 >= 0, back[np.maximum(k0, 0)], 0)
        in_stop = (hi_s > first) & stop[np.maximum(hi_s - 1, 0)]
        nxt = fwd[hi_s]
        is_open = in_stop & (nxt >= n)
        last_idx = np.where(in_stop, np.minimum(nxt, n - 1), hi_s - 1)
        has = last_idx >= first
        lo = np.where(has, np.minimum(lo, ts[first]), lo)
        hi = np.where(has, np.maximum(hi, ts[np.clip(last_idx, 0, n - 1)]), hi)
    for c in counters:
        lo = np.where(c.has_base, np.minimum(lo, c.base_ts), lo)
    mode_ts = data.modes.ts
    if len(mode_ts):
        m = np.searchsorted(mode_ts, starts)
        lo = np.where(m > 0, np.minimum(lo, mode_ts[np.maximum(m - 1, 0)]), lo)
    times = data.sample_times
    if len(times):
        t_lo, t_hi = np.searchsorted(times, starts), np.searchsorted(times, ends)
        at = np.maximum(t_lo - 1, 0)
        seen = t_hi > at
        t0 = times[np.minimum(at, len(times) - 1)]
        lo = np.where(seen, np.minimum(lo, t0), lo)
        hi = np.where(seen, np.maximum(hi, t0), hi)
    return lo, hi, is_open
