"""Every 15-minute bucket of a range in one pass over one machine's data.

``sweep_buckets`` walks the machine's timeline once (states, counters, modes, energy, planned
intervals, sample times) and adds every piece to the buckets it overlaps. Each bucket gets
exactly what ``machine_components`` gives for that bucket alone: the rules are the engine's,
applied to the whole range instead of bucket by bucket. What makes that exact:

- Times are integer nanoseconds of planned time, summed per bucket before the one division,
  so the order in which pieces are added does not matter.
- Stop events are classified on their whole duration, which does not depend on the bucket.
  The one exception is a stop event still open at the end of the data: the engine classifies
  it by its duration up to the bucket's end. The sweep counts it as long; the buckets in which
  the engine would see it short are listed in ``BucketColumns.redo`` for the caller to
  compute with the engine.
- Counter deltas are summed per bucket in sample order from the bucket's baseline (the latest
  non-bad sample before it), as ``counter_delta`` does, so the floats are the same.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import isfinite
from types import MappingProxyType

from karkhana.config.factory import StateMap
from karkhana.models import MachineState, Quality
from services.kpi.components import DOWN_CATEGORIES, OeeComponents
from services.kpi.counters import BAD_COUNTER_VALUE, COUNTER_RESET, _numeric, counter_delta
from services.kpi.engine import (
    NO_DATA,
    REJECTS_EXCEED_TOTAL,
    MachineData,
    MachineSpec,
    _startup_periods,
)
from services.kpi.modes import AUTO, MANUAL, map_mode
from services.kpi.planned import NsInterval, PlannedTime
from services.kpi.source import Point
from services.kpi.timeline import STOP_STATES, UNMAPPED_STATE, canonical_state, is_unmapped

BUCKET_NS = 900 * 1_000_000_000
_NS = 1e9
_NO_FLAGS: frozenset[str] = frozenset()
_RUNNING = MachineState.RUNNING
_FAULT = MachineState.FAULT
_PLANNED_STOP = MachineState.PLANNED_STOP


@dataclass(slots=True)
class BucketColumns:
    """Per-bucket values of ``count`` buckets from ``start_ns``, one list per component
    (integer nanoseconds where the engine counts nanoseconds)."""

    start_ns: int
    count: int
    ideal_cycle_s: float
    calendar_ns: list[int]
    maintenance_ns: list[int]
    run_ns: list[int]
    short_stop_ns: list[int]
    no_data_ns: list[int]
    planned_stop_ns: list[int]
    down_ns: dict[str, list[int]]
    external_ns: dict[str, list[int]]
    failures: list[int]
    total: list[float]
    rejects: list[float]
    energy: list[float]
    startup_rejects: list[float]
    covered_ns: list[int]
    mode_known_ns: list[int]
    mode_auto_ns: list[int]
    interventions: list[int]
    flags: list[frozenset[str]]
    dep_first_ns: list[int]
    dep_last_ns: list[int]
    open: list[bool]
    # Buckets whose value the sweep cannot give (see the module doc): compute them apart.
    redo: list[int] = field(default_factory=list)

    def components(self, k: int) -> OeeComponents:
        """Bucket ``k`` as ``machine_components`` builds it."""
        ideal = self.ideal_cycle_s
        total, rejects = self.total[k], self.rejects[k]
        startup = self.startup_rejects[k]
        return OeeComponents(
            planned_s=(self.calendar_ns[k] - self.planned_stop_ns[k]) / _NS,
            run_s=self.run_ns[k] / _NS,
            short_stop_s=self.short_stop_ns[k] / _NS,
            down_s=MappingProxyType({c: v[k] / _NS for c, v in self.down_ns.items()}),
            no_data_s=self.no_data_ns[k] / _NS,
            planned_stop_s=self.planned_stop_ns[k] / _NS,
            ideal_s=total * ideal,
            total=total,
            good=total - rejects,
            covered_s=self.covered_ns[k] / _NS,
            window_s=BUCKET_NS / _NS,
            external_s=MappingProxyType({c: v[k] / _NS for c, v in self.external_ns.items()}),
            maintenance_s=self.maintenance_ns[k] / _NS,
            startup_rejects=startup,
            startup_reject_s=startup * ideal,
            production_reject_s=(rejects - startup) * ideal,
            failures=self.failures[k],
            energy_kwh=self.energy[k],
            mode_run_s=self.mode_known_ns[k] / _NS,
            auto_run_s=self.mode_auto_ns[k] / _NS,
            manual_interventions=self.interventions[k],
            flags=self.flags[k],
        )

    def flat(self) -> dict[str, list[float]]:
        """Every bucket's components as float columns, named as the bucket table names
        them (``field``, or ``field__key`` for a mapping field), each value what
        ``components(k)`` holds."""
        rng = range(self.count)
        ideal = self.ideal_cycle_s
        cal, stops = self.calendar_ns, self.planned_stop_ns
        total, rejects, startup = self.total, self.rejects, self.startup_rejects

        def seconds(values: list[int]) -> list[float]:
            return [v / _NS for v in values]

        out = {
            "planned_s": [(cal[k] - stops[k]) / _NS for k in rng],
            "run_s": seconds(self.run_ns),
            "short_stop_s": seconds(self.short_stop_ns),
            "no_data_s": seconds(self.no_data_ns),
            "planned_stop_s": seconds(stops),
            "ideal_s": [t * ideal for t in total],
            "total": [float(t) for t in total],
            "good": [total[k] - rejects[k] for k in rng],
            "covered_s": seconds(self.covered_ns),
            "window_s": [BUCKET_NS / _NS] * self.count,
            "maintenance_s": seconds(self.maintenance_ns),
            "startup_rejects": [float(v) for v in startup],
            "startup_reject_s": [v * ideal for v in startup],
            "production_reject_s": [(rejects[k] - startup[k]) * ideal for k in rng],
            "failures": [float(v) for v in self.failures],
            "energy_kwh": [float(v) for v in self.energy],
            "mode_run_s": seconds(self.mode_known_ns),
            "auto_run_s": seconds(self.mode_auto_ns),
            "manual_interventions": [float(v) for v in self.interventions],
        }
        for name, mapping in (("down_s", self.down_ns), ("external_s", self.external_ns)):
            for key, values in mapping.items():
                out[f"{name}__{key}"] = seconds(values)
        return out


class _Grid:
    """Buckets of ``[start_ns, end_ns)`` and the planned time inside them."""

    def __init__(self, start_ns: int, end_ns: int, planned: PlannedTime) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        self.count = (end_ns - start_ns) // BUCKET_NS
        self.before = planned.before
        # Planned time before each bucket edge.
        self.edges = [planned.before(start_ns + k * BUCKET_NS) for k in range(self.count + 1)]

    def zeros(self) -> list[int]:
        return [0] * self.count

    def spread(self, a: int, b: int, acc: list[int]) -> None:
        """Add the planned time of ``[a, b)`` to the buckets it overlaps."""
        s0 = self.start_ns
        if a < s0:
            a = s0
        if b > self.end_ns:
            b = self.end_ns
        if b <= a:
            return
        ka, kb = (a - s0) // BUCKET_NS, (b - 1 - s0) // BUCKET_NS
        before, edges = self.before, self.edges
        if ka == kb:
            acc[ka] += before(b) - before(a)
            return
        acc[ka] += edges[ka + 1] - before(a)
        for k in range(ka + 1, kb):
            acc[k] += edges[k + 1] - edges[k]
        acc[kb] += before(b) - edges[kb]

    def spread_plain(self, a: int, b: int, acc: list[int]) -> None:
        """Add the length of ``[a, b)`` (planned or not) to the buckets it overlaps."""
        s0 = self.start_ns
        if a < s0:
            a = s0
        if b > self.end_ns:
            b = self.end_ns
        if b <= a:
            return
        ka, kb = (a - s0) // BUCKET_NS, (b - 1 - s0) // BUCKET_NS
        if ka == kb:
            acc[ka] += b - a
            return
        acc[ka] += s0 + (ka + 1) * BUCKET_NS - a
        for k in range(ka + 1, kb):
            acc[k] += BUCKET_NS
        acc[kb] += b - (s0 + kb * BUCKET_NS)

    def buckets_touched(self, a: int, b: int) -> range:
        """Indexes of the buckets ``[s, e)`` with ``a < e`` and ``b > s``."""
        first = max((a - self.start_ns) // BUCKET_NS, 0)
        last = min(-((self.start_ns - b) // BUCKET_NS), self.count)
        return range(first, last)


def _canon(states: Sequence[Point], state_map: StateMap) -> list[MachineState | None]:
    """Canonical states, mapping each distinct raw value once."""
    seen: dict[tuple[type, object, Quality], MachineState | None] = {}
    out: list[MachineState | None] = []
    for p in states:
        # The type is part of the key: True, 1 and 1.0 are equal but may map differently.
        key = (type(p.value), p.value, p.quality)
        if key not in seen:
            seen[key] = canonical_state(p, state_map)
        out.append(seen[key])
    return out


@dataclass(slots=True)
class _CounterColumns:
    delta: list[float]
    reset: set[int]
    bad: set[int]
    # Per bucket, the time of its baseline (latest non-bad sample before it), or None.
    base_ts: list[int | None]


def _counter_columns(
    points: Sequence[Point], grid: _Grid, bad_before: int | None = None
) -> _CounterColumns:
    """``counter_delta`` of every bucket's slice (its baseline, then its samples).

    A bucket without a non-bad sample before it still rests on the bad samples the engine
    reads back through looking for one: ``base_ts`` is then the earliest of them
    (``bad_before``: the earliest sample before ``points``, when all of those are bad)."""
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

    bad_quality = Quality.BAD
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
        if quality == bad_quality:
            if earliest_bad is None:
                earliest_bad = ts_ns
            continue
        # ``_numeric``, with the common cases inline.
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
    return _CounterColumns(delta, reset, bad, base_ts)


def _run_pieces_modes(
    grid: _Grid,
    run_pieces: Sequence[tuple[int, int]],
    modes: Sequence[Point],
    mode_map: dict[str, str],
) -> tuple[list[int], list[int], list[int]]:
    """Planned run time with a known mode and in auto per bucket, and interventions."""
    known, auto, interventions = grid.zeros(), grid.zeros(), grid.zeros()
    mapped = [None if p.quality == Quality.BAD else map_mode(p.value, mode_map) for p in modes]
    s0, e0 = grid.start_ns, grid.end_ns
    for k in range(1, len(modes)):
        t = modes[k].ts_ns
        if s0 <= t < e0 and mapped[k] == MANUAL and mapped[k - 1] == AUTO:
            interventions[(t - s0) // BUCKET_NS] += 1
    r, n_run, n = 0, len(run_pieces), len(modes)
    for k in range(n):
        mode = mapped[k]
        if mode is None:
            continue
        lo = modes[k].ts_ns
        hi = modes[k + 1].ts_ns if k + 1 < n else max(e0, lo)
        while r < n_run and run_pieces[r][1] <= lo:
            r += 1
        q = r
        while q < n_run and run_pieces[q][0] < hi:
            a, b = max(run_pieces[q][0], lo), min(run_pieces[q][1], hi)
            grid.spread(a, b, known)
            if mode == AUTO:
                grid.spread(a, b, auto)
            q += 1
    return known, auto, interventions


def sweep_buckets(
    data: MachineData,
    spec: MachineSpec,
    max_gap_s: float,
    shift_intervals: Sequence[NsInterval] | None = None,
    bad_before: tuple[int | None, int | None, int | None] = (None, None, None),
) -> BucketColumns:
    """Components of every bucket of ``[data.start_ns, data.end_ns)`` (on the grid) from the
    machine's data for the whole range (``load_machine_data``). ``shift_intervals``: the
    planned intervals of the range without the machine's maintenance windows (needed when
    ``data.maintenance_ns`` is not 0). ``bad_before``: for the total, reject and energy
    counters without a non-bad sample before the range, the earliest (bad) sample before it,
    which the engine reads when it looks for a baseline."""
    s0, e0 = data.start_ns, data.end_ns
    planned = PlannedTime(data.planned)
    grid = _Grid(s0, e0, planned)
    count = grid.count
    calendar = [grid.edges[k + 1] - grid.edges[k] for k in range(count)]
    maintenance = grid.zeros()
    if data.maintenance_ns and shift_intervals is not None:
        shifts = _Grid(s0, e0, PlannedTime(shift_intervals))
        maintenance = [shifts.edges[k + 1] - shifts.edges[k] - calendar[k] for k in range(count)]
    run, short, no_data, planned_stop = grid.zeros(), grid.zeros(), grid.zeros(), grid.zeros()
    down = {c: grid.zeros() for c in DOWN_CATEGORIES}
    external_causes = spec.external_causes
    external = {cause: grid.zeros() for cause in dict.fromkeys(external_causes.values())}
    failures = grid.zeros()
    unmapped: set[int] = set()
    startups: list[int] = []
    run_pieces: list[tuple[int, int]] = []
    redo: list[int] = []

    states = data.states
    n = len(states)
    ts = [p.ts_ns for p in states]
    canon = _canon(states, spec.state_map)
    threshold_ns = round(spec.short_stop_threshold_s * 1e9)
    # The last sample's value holds past the range.
    far = max(e0, ts[-1]) if n else e0
    spread = grid.spread
    if n == 0:
        no_data = list(calendar)
    else:
        spread(s0, ts[0], no_data)
    i = 0
    while i < n:
        state = canon[i]
        if state in STOP_STATES:
            j = i
            while j + 1 < n and canon[j + 1] in STOP_STATES:
                j += 1
            closed = j + 1 < n
            end = ts[j + 1] if closed else far
            if closed:
                is_short = end - ts[i] < threshold_ns
            else:
                # Open at the end of the data: the engine classifies it by its duration up
                # to each bucket's end. Long here; buckets that see it short are redone.
                is_short = False
                for k in grid.buckets_touched(ts[i], far):
                    if max(s0 + (k + 1) * BUCKET_NS, ts[j]) - ts[i] < threshold_ns:
                        redo.append(k)
            if is_short:
                run_pieces.append((ts[i], end))
                spread(ts[i], end, run)
                spread(ts[i], end, short)
            else:
                for k in range(i, j + 1):
                    seg_end = ts[k + 1] if k + 1 < n else far
                    state_k = canon[k]
                    assert state_k is not None
                    spread(ts[k], seg_end, down[state_k.value])
                    cause = external_causes.get(state_k)
                    if cause is not None:
                        spread(ts[k], seg_end, external[cause])
                    t = ts[k]
                    if (
                        state_k is _FAULT
                        and (k == i or canon[k - 1] is not _FAULT)
                        and s0 <= t < e0
                        and planned.overlap(t, t + 1) > 0
                    ):
                        failures[(t - s0) // BUCKET_NS] += 1
                if closed and canon[j + 1] is _RUNNING:
                    startups.append(ts[j + 1])
            i = j + 1
            continue
        seg_end = ts[i + 1] if i + 1 < n else far
        if state is _RUNNING:
            spread(ts[i], seg_end, run)
            run_pieces.append((ts[i], seg_end))
        elif state is _PLANNED_STOP:
            spread(ts[i], seg_end, planned_stop)
        else:
            spread(ts[i], seg_end, no_data)
            if is_unmapped(states[i], spec.state_map):
                unmapped.update(grid.buckets_touched(ts[i], seg_end))
        i += 1

    totals = _counter_columns(data.total_counts, grid, bad_before[0])
    rejects = _counter_columns(data.reject_counts, grid, bad_before[1])
    energy = _counter_columns(data.energy_counts, grid, bad_before[2])
    startup_rejects = _startup_rejects(
        grid, startups, round(spec.startup_window_s * _NS), data.reject_counts
    )
    known, auto, interventions = _run_pieces_modes(
        grid, run_pieces, data.modes, dict(spec.mode_map)
    )
    covered = grid.zeros()
    times = data.sample_times
    gap_ns = round(max_gap_s * _NS)
    n_times = len(times)
    for k in range(n_times):
        t = times[k]
        hi = t + gap_ns
        if k + 1 < n_times and times[k + 1] < hi:
            hi = times[k + 1]
        # Most intervals lie inside one bucket of the range.
        kb = (t - s0) // BUCKET_NS
        if hi > t and t >= s0 and hi <= e0 and kb == (hi - 1 - s0) // BUCKET_NS:
            covered[kb] += hi - t
        else:
            grid.spread_plain(t, hi, covered)

    flags = _flags(count, unmapped, no_data, totals, rejects, energy)
    dep_first, dep_last, is_open = _dependencies(
        grid, data, ts, canon, spec, totals, rejects, energy
    )
    return BucketColumns(
        start_ns=s0,
        count=count,
        ideal_cycle_s=spec.ideal_cycle_s,
        calendar_ns=calendar,
        maintenance_ns=maintenance,
        run_ns=run,
        short_stop_ns=short,
        no_data_ns=no_data,
        planned_stop_ns=planned_stop,
        down_ns=down,
        external_ns=external,
        failures=failures,
        total=totals.delta,
        rejects=rejects.delta,
        energy=energy.delta,
        startup_rejects=startup_rejects,
        covered_ns=covered,
        mode_known_ns=known,
        mode_auto_ns=auto,
        interventions=interventions,
        flags=flags,
        dep_first_ns=dep_first,
        dep_last_ns=dep_last,
        open=is_open,
        redo=sorted(set(redo)),
    )


def _startup_rejects(
    grid: _Grid, startups: Sequence[int], window_ns: int, rejects: Sequence[Point]
) -> list[float]:
    """Rejects counted in startup windows, per bucket, read as the engine reads them from
    the bucket's own slice of the reject counter (``_delta_in`` over the latest non-bad
    sample before the bucket, then the bucket's samples)."""
    out: list[float] = [0] * grid.count
    if window_ns <= 0 or not startups:
        return out
    per_bucket: dict[int, list[int]] = {}
    for t in startups:
        for k in grid.buckets_touched(t, t + window_ns):
            per_bucket.setdefault(k, []).append(t)
    ts = [p.ts_ns for p in rejects]
    bad = Quality.BAD
    usable = [
        p.quality != bad
        and (isfinite(p.value) if isinstance(p.value, int | float) else _numeric(p) is not None)
        for p in rejects
    ]
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
        total: float = 0
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


def _flags(
    count: int,
    unmapped: set[int],
    no_data: Sequence[int],
    totals: _CounterColumns,
    rejects: _CounterColumns,
    energy: _CounterColumns,
) -> list[frozenset[str]]:
    out = [_NO_FLAGS] * count
    marks: dict[int, set[str]] = {}

    def mark(buckets: Sequence[int] | set[int], flag: str) -> None:
        for k in buckets:
            marks.setdefault(k, set()).add(flag)

    mark(unmapped, UNMAPPED_STATE)
    for c in (totals, rejects, energy):
        mark(c.reset, COUNTER_RESET)
        mark(c.bad, BAD_COUNTER_VALUE)
    mark([k for k in range(count) if no_data[k] > 0], NO_DATA)
    t, r = totals.delta, rejects.delta
    mark([k for k in range(count) if r[k] > t[k]], REJECTS_EXCEED_TOTAL)
    for k, found in marks.items():
        out[k] = frozenset(found)
    return out


def _dependencies(
    grid: _Grid,
    data: MachineData,
    ts: Sequence[int],
    canon: Sequence[MachineState | None],
    spec: MachineSpec,
    totals: _CounterColumns,
    rejects: _CounterColumns,
    energy: _CounterColumns,
) -> tuple[list[int], list[int], list[bool]]:
    """Per bucket: the earliest and latest raw sample time its value rests on, and whether
    a stop event was still open at the end of the data (as the engine's reads record)."""
    n = len(ts)
    stop = [c in STOP_STATES for c in canon]
    # back[k]: latest non-stop index <= k (0: none); fwd[k]: first non-stop index >= k.
    back, last = [0] * n, 0
    for k in range(n):
        if not stop[k]:
            last = k
        back[k] = last
    fwd, nxt = [n] * (n + 1), n
    for k in range(n - 1, -1, -1):
        if not stop[k]:
            nxt = k
        fwd[k] = nxt
    reach_ns = round(spec.startup_window_s * _NS)
    mode_ts = [p.ts_ns for p in data.modes]
    times = data.sample_times
    count, s0 = grid.count, grid.start_ns
    first_out, last_out, open_out = [0] * count, [0] * count, [False] * count
    # Indexes that only move forward as the buckets do (bisections of the engine's reads).
    hi_s = bisect_left(ts, s0)
    reach_idx = bisect_right(ts, s0 - reach_ns)
    for k in range(count):
        s = s0 + k * BUCKET_NS
        e = s + BUCKET_NS
        lo_s = hi_s
        while hi_s < n and ts[hi_s] < e:
            hi_s += 1
        while reach_idx < n and ts[reach_idx] <= s - reach_ns:
            reach_idx += 1
        k0 = min(lo_s - 1, reach_idx - 1)
        first = back[k0] if k0 >= 0 else 0
        is_open = False
        if hi_s > first and stop[hi_s - 1]:
            is_open = fwd[hi_s] >= n
            last_idx = min(fwd[hi_s], n - 1)
        else:
            last_idx = hi_s - 1
        lo, hi = s, e - 1
        if last_idx >= first:
            lo, hi = min(lo, ts[first]), max(hi, ts[last_idx])
        for base in (totals.base_ts[k], rejects.base_ts[k], energy.base_ts[k]):
            if base is not None and base < lo:
                lo = base
        m = bisect_left(mode_ts, s)
        if m > 0 and mode_ts[m - 1] < lo:
            lo = mode_ts[m - 1]
        t_lo, t_hi = bisect_left(times, s), bisect_left(times, e)
        if t_hi > max(t_lo - 1, 0):
            t0 = times[max(t_lo - 1, 0)]
            lo, hi = min(lo, t0), max(hi, t0)
        first_out[k], last_out[k], open_out[k] = lo, hi, is_open
    return first_out, last_out, open_out
