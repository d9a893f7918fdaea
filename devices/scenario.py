"""The scenario engine: a deterministic, seeded state timeline per machine (no I/O).

Each shift instance of the site is generated on its own from a random generator seeded with
the simulation seed, a stable hash of the machine path (``zlib.crc32``) and the shift's start,
so the timeline of a shift does not depend on when the simulation started or how far ahead
it has been generated.

Inside a shift, the calendar comes first: site-wide power outages put the machine ``off``,
planned maintenance windows in ``planned_stop``, planned breaks in ``idle``. The remaining
production windows are filled with running time interrupted by incidents (short stops,
breakdowns, changeovers, idle periods), and running time is modulated by periods of reduced
speed and reject bursts. Outside shifts the machine is ``off``.

Units are produced only while running: a running segment completes unit ``k`` at
``anchor + k * cycle_us`` (strictly inside the segment), where ``cycle_us`` is the ideal
cycle divided by the speed factor (and the reduced-speed factor).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devices.timeutil import US, IntervalUs, daily_windows, from_us, merge, to_us
from karkhana.calendar import ShiftInstance, shift_instances
from karkhana.config.factory import Site
from karkhana.models import MachineState

# Running always lasts at least this long between two incidents (keeps events distinct).
MIN_RUN_US = 5 * US
_GENERATE_AHEAD_US = 6 * 3600 * US


@dataclass(frozen=True, slots=True)
class ScenarioParams:
    """Scenario parameters of one machine (see docs/simulator.md for their meaning)."""

    ideal_cycle_s: float
    speed_factor: float = 0.95
    breakdowns_per_hour: float = 0.15
    repair_min: float = 12.0
    short_stops_per_hour: float = 4.0
    short_stop_s: float = 30.0
    changeovers_per_shift: float = 1.0
    changeover_min: float = 15.0
    idle_per_shift: float = 1.0
    idle_min: float = 6.0
    slow_periods_per_shift: float = 1.0
    slow_period_min: float = 20.0
    slow_factor: float = 0.7
    reject_rate: float = 0.01
    reject_bursts_per_shift: float = 0.5
    reject_burst_min: float = 5.0
    reject_burst_rate: float = 0.25
    # Daily local windows (hour, minute, duration_min).
    planned_stops: tuple[tuple[int, int, float], ...] = ()
    power_outages: tuple[tuple[int, int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Segment:
    """The machine in one state over ``[start, end)`` (microseconds since the epoch)."""

    start: int
    end: int
    state: MachineState
    cycle_us: int = 0  # > 0 only while running
    anchor: int = 0  # units complete at anchor + k * cycle_us, k >= 1
    rejects: tuple[int, ...] = ()  # sorted unit indices k that are rejects
    speed_ratio: float = 0.0  # actual / ideal speed while running

    def _k_range(self, until: int) -> tuple[int, int]:
        """First and last unit index completed in ``(start, min(until, end))``."""
        c = self.cycle_us
        k_first = (self.start - self.anchor) // c + 1
        k_last = (min(until, self.end) - self.anchor - 1) // c
        return k_first, k_last

    def units_before(self, until: int) -> tuple[int, int, int | None, int | None]:
        """(units, rejects, last unit ts, last reject ts) completed in the segment before
        ``until`` (exclusive)."""
        if self.cycle_us <= 0 or until <= self.start:
            return 0, 0, None, None
        k_first, k_last = self._k_range(until)
        if k_last < k_first:
            return 0, 0, None, None
        lo = bisect.bisect_left(self.rejects, k_first)
        hi = bisect.bisect_right(self.rejects, k_last)
        last_reject = self.anchor + self.rejects[hi - 1] * self.cycle_us if hi > lo else None
        return (
            k_last - k_first + 1,
            hi - lo,
            self.anchor + k_last * self.cycle_us,
            last_reject,
        )

    def unit_times(self) -> list[tuple[int, bool]]:
        """Every unit completion ``(ts, is_reject)`` of the segment (for tests and tools)."""
        if self.cycle_us <= 0:
            return []
        k_first, k_last = self._k_range(self.end)
        rejects = set(self.rejects)
        return [(self.anchor + k * self.cycle_us, k in rejects) for k in range(k_first, k_last + 1)]

    def clipped(self, start: int, end: int) -> Segment:
        return Segment(
            max(self.start, start),
            min(self.end, end),
            self.state,
            self.cycle_us,
            self.anchor,
            self.rejects,
            self.speed_ratio,
        )


def machine_seed(seed: int, path: str) -> int:
    """Stable per-machine seed (``hash()`` is salted per process; crc32 is not)."""
    return seed * (1 << 32) + zlib.crc32(path.encode("utf-8"))


def _rng(seed: int, path: str, salt: int) -> random.Random:
    return random.Random(machine_seed(seed, path) * (1 << 64) + salt)


def _uniform_around(rng: random.Random, mean_us: float) -> int:
    """A duration uniformly drawn in [0.5, 1.5] x mean (at least 1 s)."""
    return max(US, round(mean_us * rng.uniform(0.5, 1.5)))


def _poisson_intervals(
    rng: random.Random, start: int, end: int, per_span: float, mean_us: float
) -> list[IntervalUs]:
    """Intervals starting as a Poisson process with ``per_span`` expected starts in
    ``[start, end)``, each about ``mean_us`` long."""
    out: list[IntervalUs] = []
    span = end - start
    if per_span <= 0 or span <= 0:
        return out
    mean_gap = span / per_span
    t = start + rng.expovariate(1.0) * mean_gap
    while t < end:
        a = round(t)
        out.append((a, a + _uniform_around(rng, mean_us)))
        t += rng.expovariate(1.0) * mean_gap
    return merge(out)


def _reject_indices(rng: random.Random, n_units: int, p: float) -> tuple[int, ...]:
    if p <= 0 or n_units <= 0:
        return ()
    if p >= 1:
        return tuple(range(1, n_units + 1))
    log_q = math.log1p(-p)
    out: list[int] = []
    k = 0
    while True:
        # Geometric gap: the number of good units before the next reject.
        k += 1 + int(math.log(1.0 - rng.random()) / log_q)
        if k > n_units:
            return tuple(out)
        out.append(k)


def _frame(
    span: IntervalUs,
    breaks: list[IntervalUs],
    planned_stops: list[IntervalUs],
    outages: list[IntervalUs],
) -> list[tuple[int, int, MachineState | None]]:
    """Split a shift into calendar pieces: None = production, else the forced state.
    Priority: power outage (off) > planned maintenance > break (idle)."""
    s, e = span
    cuts = {s, e}
    layers = [(outages, MachineState.OFF), (planned_stops, MachineState.PLANNED_STOP)]
    layers.append((breaks, MachineState.IDLE))
    for intervals, _ in layers:
        for a, b in intervals:
            if a < e and b > s:
                cuts.update((max(a, s), min(b, e)))
    points = sorted(cuts)
    pieces: list[tuple[int, int, MachineState | None]] = []
    for a, b in itertools.pairwise(points):
        kind: MachineState | None = None
        for intervals, state in layers:
            if any(lo <= a and b <= hi for lo, hi in intervals):
                kind = state
                break
        if pieces and pieces[-1][2] == kind and pieces[-1][1] == a:
            pieces[-1] = (pieces[-1][0], b, kind)
        else:
            pieces.append((a, b, kind))
    return pieces


def _covering(intervals: list[IntervalUs], t: int) -> bool:
    i = bisect.bisect_right(intervals, (t, math.inf)) - 1
    return i >= 0 and intervals[i][0] <= t < intervals[i][1]


def generate_shift(
    params: ScenarioParams,
    rng: random.Random,
    span: IntervalUs,
    breaks: list[IntervalUs],
    planned_stops: list[IntervalUs],
    outages: list[IntervalUs],
) -> list[Segment]:
    """The segments of one shift instance covering ``span`` exactly."""
    s, e = span
    slow = _poisson_intervals(
        rng, s, e, params.slow_periods_per_shift, params.slow_period_min * 60 * US
    )
    bursts = _poisson_intervals(
        rng, s, e, params.reject_bursts_per_shift, params.reject_burst_min * 60 * US
    )
    frame = _frame(span, breaks, planned_stops, outages)
    production_us = sum(b - a for a, b, kind in frame if kind is None)
    kinds: list[tuple[MachineState, float, float]] = []  # (state, rate per us, mean length us)
    hour = 3600 * US
    if params.short_stops_per_hour > 0:
        kinds.append(
            (MachineState.STOPPED, params.short_stops_per_hour / hour, params.short_stop_s * US)
        )
    if params.breakdowns_per_hour > 0:
        kinds.append(
            (MachineState.FAULT, params.breakdowns_per_hour / hour, params.repair_min * 60 * US)
        )
    if production_us > 0:
        if params.changeovers_per_shift > 0:
            kinds.append(
                (
                    MachineState.SETUP,
                    params.changeovers_per_shift / production_us,
                    params.changeover_min * 60 * US,
                )
            )
        if params.idle_per_shift > 0:
            kinds.append(
                (
                    MachineState.IDLE,
                    params.idle_per_shift / production_us,
                    params.idle_min * 60 * US,
                )
            )
    total_rate = sum(rate for _, rate, _ in kinds)

    raw: list[tuple[int, int, MachineState]] = []
    for a, b, kind in frame:
        if kind is not None:
            raw.append((a, b, kind))
            continue
        cursor = a
        while cursor < b:
            if total_rate <= 0:
                raw.append((cursor, b, MachineState.RUNNING))
                break
            t = cursor + MIN_RUN_US + round(rng.expovariate(total_rate))
            if t >= b:
                raw.append((cursor, b, MachineState.RUNNING))
                break
            raw.append((cursor, t, MachineState.RUNNING))
            pick = rng.random() * total_rate
            state, mean = kinds[-1][0], kinds[-1][2]
            for k_state, rate, k_mean in kinds:
                if pick < rate:
                    state, mean = k_state, k_mean
                    break
                pick -= rate
            end = min(b, t + _uniform_around(rng, mean))
            raw.append((t, end, state))
            cursor = end

    segments: list[Segment] = []
    for a, b, state in raw:
        if state is not MachineState.RUNNING:
            segments.append(Segment(a, b, state))
            continue
        # Split running time where reduced speed or a reject burst begins or ends.
        cuts = {a, b}
        for lo, hi in (*slow, *bursts):
            for t in (lo, hi):
                if a < t < b:
                    cuts.add(t)
        points = sorted(cuts)
        for lo, hi in itertools.pairwise(points):
            ratio = params.speed_factor * (params.slow_factor if _covering(slow, lo) else 1.0)
            p = params.reject_burst_rate if _covering(bursts, lo) else params.reject_rate
            cycle_us = max(1, round(params.ideal_cycle_s / ratio * US))
            n_units = (hi - lo - 1) // cycle_us
            segments.append(
                Segment(
                    lo,
                    hi,
                    MachineState.RUNNING,
                    cycle_us=cycle_us,
                    anchor=lo,
                    rejects=_reject_indices(rng, n_units, p),
                    speed_ratio=params.ideal_cycle_s * US / cycle_us,
                )
            )
    return segments


@dataclass
class MachineScenario:
    """The lazily generated timeline of one machine from ``origin`` onwards."""

    path: str
    site: Site
    params: ScenarioParams
    seed: int
    origin: int  # microseconds since the epoch
    segments: list[Segment] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)
    # Prefix sums over segments[:i]: units, rejects, last unit ts, last reject ts.
    _cum_units: list[int] = field(default_factory=lambda: [0])
    _cum_rejects: list[int] = field(default_factory=lambda: [0])
    _last_unit: list[int | None] = field(default_factory=lambda: [None])
    _last_reject: list[int | None] = field(default_factory=lambda: [None])
    _generated_until: int = -1

    def __post_init__(self) -> None:
        self._generated_until = self.origin

    @property
    def generated_until(self) -> int:
        return self._generated_until

    def extend_to(self, until: int) -> None:
        """Generate the timeline at least up to ``until`` (microseconds)."""
        while self._generated_until < until:
            window_end = self._generated_until + _GENERATE_AHEAD_US
            cursor = self._generated_until
            for inst in shift_instances(self.site, from_us(cursor), from_us(window_end)):
                i_start, i_end = to_us(inst.start), to_us(inst.end)
                if i_end <= cursor:
                    continue
                if i_start > cursor:
                    self._append(Segment(cursor, i_start, MachineState.OFF))
                for seg in self._shift_segments(inst, i_start, i_end):
                    if seg.end > cursor:
                        self._append(seg.clipped(cursor, i_end))
                cursor = i_end
            if cursor < window_end:
                self._append(Segment(cursor, window_end, MachineState.OFF))
                cursor = window_end
            self._generated_until = cursor

    def _shift_segments(self, inst: ShiftInstance, s: int, e: int) -> list[Segment]:
        tz = self.site.tz
        breaks = [(to_us(a), to_us(b)) for a, b in inst.breaks]
        stops = daily_windows(list(self.params.planned_stops), tz, s, e)
        outages = daily_windows(list(self.params.power_outages), tz, s, e)
        rng = _rng(self.seed, self.path, s // US)
        return generate_shift(self.params, rng, (s, e), breaks, stops, outages)

    def _append(self, seg: Segment) -> None:
        if seg.end <= seg.start:
            return
        last = self.segments[-1] if self.segments else None
        if (
            last is not None
            and last.state is seg.state
            and seg.state is not MachineState.RUNNING
            and last.end == seg.start
        ):
            merged = Segment(last.start, seg.end, seg.state)
            self.segments[-1] = merged
            return
        n, r, lu, lr = seg.units_before(seg.end)
        self.segments.append(seg)
        self._starts.append(seg.start)
        self._cum_units.append(self._cum_units[-1] + n)
        self._cum_rejects.append(self._cum_rejects[-1] + r)
        self._last_unit.append(lu if lu is not None else self._last_unit[-1])
        self._last_reject.append(lr if lr is not None else self._last_reject[-1])

    def force(self, start: int, end: int, state: MachineState) -> None:
        """Put the machine in the stop ``state`` over ``[start, end)``, replacing what the
        scenario had there (the control hook of docs/simulator.md). Only the future may be
        changed: the caller passes a ``start`` after everything already published, so the
        units and rejects published so far stay what they were, and the ground truth
        (built from these segments) includes the forced span."""
        if state is MachineState.RUNNING:
            raise ValueError("only a stop state can be forced (running needs a cycle)")
        if end <= start:
            raise ValueError("the forced span must have a positive duration")
        self.extend_to(end + 1)
        before = [s.clipped(s.start, start) for s in self.segments if s.start < start]
        after = [s.clipped(end, s.end) for s in self.segments if s.end > end]
        self.segments, self._starts = [], []
        self._cum_units, self._cum_rejects = [0], [0]
        self._last_unit, self._last_reject = [None], [None]
        for seg in (*before, Segment(start, end, state), *after):
            self._append(seg)

    def index_at(self, t: int) -> int:
        """Index of the segment containing ``t`` (generating as needed)."""
        self.extend_to(t + 1)
        return max(0, bisect.bisect_right(self._starts, t) - 1)

    def segment_at(self, t: int) -> Segment:
        return self.segments[self.index_at(t)]

    def state_at(self, t: int) -> MachineState:
        return self.segment_at(t).state

    def state_changes(self, after: int, until: int) -> list[tuple[int, MachineState]]:
        """State changes with timestamps in ``(after, until]``, in time order."""
        self.extend_to(until + 1)
        out: list[tuple[int, MachineState]] = []
        i = bisect.bisect_right(self._starts, after)
        while i < len(self.segments) and self.segments[i].start <= until:
            seg = self.segments[i]
            if i == 0 or self.segments[i - 1].state is not seg.state:
                out.append((seg.start, seg.state))
            i += 1
        return out

    def counts_before(self, t: int) -> tuple[int, int, int | None, int | None]:
        """(units, rejects, last unit ts, last reject ts) completed in ``(origin, t)``."""
        if t <= self.origin:
            return 0, 0, None, None
        i = self.index_at(t - 1)
        n, r, lu, lr = self.segments[i].units_before(t)
        return (
            self._cum_units[i] + n,
            self._cum_rejects[i] + r,
            lu if lu is not None else self._last_unit[i],
            lr if lr is not None else self._last_reject[i],
        )

    def reject_times(self, since: int, until: int) -> list[int]:
        """Completion times of the rejected units completed in ``[since, until)``: the
        difference of ``counts_before(until)`` and ``counts_before(since)``, one by one."""
        self.extend_to(until)
        out: list[int] = []
        i = max(0, bisect.bisect_right(self._starts, since) - 1)
        while i < len(self.segments) and self.segments[i].start < until:
            seg = self.segments[i]
            i += 1
            c = seg.cycle_us
            if c <= 0 or not seg.rejects:
                continue
            k_first, k_last = seg._k_range(until)
            k_first = max(k_first, -((seg.anchor - since) // c))  # ceil((since - anchor) / c)
            lo = bisect.bisect_left(seg.rejects, k_first)
            hi = bisect.bisect_right(seg.rejects, k_last)
            out.extend(seg.anchor + k * c for k in seg.rejects[lo:hi])
        return out

    def spans(self, until: int) -> list[tuple[int, int, MachineState]]:
        """The state timeline ``(start, end, state)`` from ``origin`` to ``until``."""
        self.extend_to(until)
        out: list[tuple[int, int, MachineState]] = []
        for seg in self.segments:
            if seg.start >= until:
                break
            end = min(seg.end, until)
            if out and out[-1][2] is seg.state and out[-1][1] == seg.start:
                out[-1] = (out[-1][0], end, seg.state)
            else:
                out.append((seg.start, end, seg.state))
        return out

    def segments_between(self, start: int, end: int) -> list[Segment]:
        self.extend_to(end)
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        while i < len(self.segments) and self.segments[i].start < end:
            out.append(self.segments[i].clipped(start, end))
            i += 1
        return out


def default_start(sites: list[Site], now: datetime) -> datetime:
    """Start of the latest shift instance (of any site) that starts at or before ``now``."""
    best: datetime | None = None
    for site in sites:
        for inst in shift_instances(site, now - timedelta(days=8), now + timedelta(seconds=1)):
            if inst.start <= now and (best is None or inst.start > best):
                best = inst.start
    return best if best is not None else now
