"""Machine state timeline -> planned run, short-stop, down, planned-stop and no-data time.

A state value holds from its timestamp until the next state sample; before the first
sample the state is unknown. A sample whose value the machine's state map does not know, or
whose quality is ``bad``, makes the state unknown from its timestamp on (flag
``unmapped_state`` for unmapped values). Stop events are maximal runs of consecutive stop
states over the whole timeline, classified short or long on their whole duration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from karkhana.config.factory import StateMap, map_state
from karkhana.models import MachineState, Quality
from services.kpi.components import DOWN_CATEGORIES
from services.kpi.planned import PlannedTime
from services.kpi.source import Point

UNMAPPED_STATE = "unmapped_state"

STOP_STATES: frozenset[MachineState] = frozenset(MachineState(c) for c in DOWN_CATEGORIES)


def canonical_state(point: Point, state_map: StateMap) -> MachineState | None:
    """The canonical state a sample stands for; None (unknown) when unmapped or bad."""
    if point.quality == Quality.BAD:
        return None
    return map_state(point.value, state_map)


def is_unmapped(point: Point, state_map: StateMap) -> bool:
    return point.quality != Quality.BAD and map_state(point.value, state_map) is None


@dataclass(slots=True)
class StateTimes:
    """Integer nanoseconds of planned time by what the machine was doing."""

    calendar_ns: int = 0
    run_ns: int = 0
    short_stop_ns: int = 0
    down_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOWN_CATEGORIES, 0))
    no_data_ns: int = 0
    planned_stop_ns: int = 0
    # Part of down_ns in states declared external, by cause.
    external_ns: dict[str, int] = field(default_factory=dict)
    # Instants where running resumes after a long stop event (startups), in time order.
    startups_ns: list[int] = field(default_factory=list)
    # Spans counted as run time (running, short stops), unclipped, in time order.
    run_spans: list[tuple[int, int]] = field(default_factory=list)
    # Entries into fault inside long stop events, starting in the window's planned time.
    failures: int = 0
    flags: set[str] = field(default_factory=set)

    @property
    def planned_ns(self) -> int:
        return self.calendar_ns - self.planned_stop_ns


def state_times(
    states: Sequence[Point],
    state_map: StateMap,
    planned: PlannedTime,
    start_ns: int,
    end_ns: int,
    short_stop_threshold_s: float,
    external_causes: Mapping[MachineState, str] | None = None,
) -> StateTimes:
    """Split the planned time of ``[start_ns, end_ns)`` by machine state.

    ``states`` are the machine's state samples in time order, reaching back before
    ``start_ns`` to the start of any stop event in progress there and ahead past ``end_ns``
    to the sample ending any stop event in progress there. ``planned`` must lie inside the
    window. One linear pass; planned-time overlaps are O(log n) lookups. Long-stop time in a
    state of ``external_causes`` is also counted in ``external_ns`` under its cause; every
    ``running`` sample that ends a long stop event is a startup (``startups_ns``). Every
    entry into ``fault`` inside a long stop event that starts in the window, in planned time,
    is a failure (``failures``).
    """
    external = external_causes or {}
    out_external = dict.fromkeys(external.values(), 0)
    out = StateTimes(calendar_ns=planned.total, external_ns=out_external)
    n = len(states)
    if n == 0:
        out.no_data_ns = planned.total
        return out
    threshold_ns = round(short_stop_threshold_s * 1e9)
    ts = [p.ts_ns for p in states]
    canon = [canonical_state(p, state_map) for p in states]

    def seg_end(k: int) -> int:
        return ts[k + 1] if k + 1 < n else max(end_ns, ts[k])

    # Unknown before the first sample.
    out.no_data_ns += planned.overlap(start_ns, ts[0])
    i = 0
    while i < n:
        state = canon[i]
        if state in STOP_STATES:
            j = i
            while j + 1 < n and canon[j + 1] in STOP_STATES:
                j += 1
            # An event still open at the end of the data is classified by its duration up
            # to the end of the window (or its last sample, when that is later).
            event_ns = seg_end(j) - ts[i]
            short = event_ns < threshold_ns
            if short:
                out.run_spans.append((ts[i], seg_end(j)))
            for k in range(i, j + 1):
                p = planned.overlap(ts[k], seg_end(k))
                if short:
                    out.run_ns += p
                    out.short_stop_ns += p
                else:
                    state_k = canon[k]
                    if (
                        state_k is MachineState.FAULT
                        and (k == i or canon[k - 1] is not MachineState.FAULT)
                        and start_ns <= ts[k] < end_ns
                        and planned.overlap(ts[k], ts[k] + 1) > 0
                    ):
                        out.failures += 1
                    out.down_ns[str(state_k)] += p
                    cause = external.get(state_k) if state_k is not None else None
                    if cause is not None:
                        out.external_ns[cause] = out.external_ns.get(cause, 0) + p
            if not short and j + 1 < n and canon[j + 1] is MachineState.RUNNING:
                out.startups_ns.append(ts[j + 1])
            i = j + 1
            continue
        p = planned.overlap(ts[i], seg_end(i))
        if state is MachineState.RUNNING:
            out.run_ns += p
            out.run_spans.append((ts[i], seg_end(i)))
        elif state is MachineState.PLANNED_STOP:
            out.planned_stop_ns += p
        else:
            out.no_data_ns += p
            if ts[i] < end_ns and seg_end(i) > start_ns and is_unmapped(states[i], state_map):
                out.flags.add(UNMAPPED_STATE)
        i += 1
    return out


def stop_event_bounds(
    state_map: StateMap,
    before: Iterator[Point],
    window: Sequence[Point],
    after: Iterator[Point],
    reach_back_to_ns: int | None = None,
) -> list[Point]:
    """Assemble the state samples ``state_times`` needs.

    ``before``: samples before the window, newest first; taken back to (and including) the
    first one that is not a stop state, which bounds the stop event in progress at the
    window start, and at least to ``reach_back_to_ns`` (so that a startup shortly before the
    window is seen with the stop event it ends). ``after``: samples from the window end on,
    oldest first; taken while a stop event is in progress, up to (and including) the sample
    that ends it.
    """
    back: list[Point] = []
    for p in before:
        back.append(p)
        if canonical_state(p, state_map) not in STOP_STATES and (
            reach_back_to_ns is None or p.ts_ns <= reach_back_to_ns
        ):
            break
    back.reverse()
    timeline = back + list(window)
    if timeline and canonical_state(timeline[-1], state_map) in STOP_STATES:
        for p in after:
            timeline.append(p)
            if canonical_state(p, state_map) not in STOP_STATES:
                break
    return timeline


@dataclass(frozen=True, slots=True)
class CurrentState:
    state: MachineState | None
    since_ns: int


def current_state(
    newest_first: Iterator[Point], state_map: StateMap, max_scan: int = 100_000
) -> CurrentState | None:
    """Latest canonical state and when it began (walking back over samples with the same
    canonical state, at most ``max_scan`` of them); None when there is no sample."""
    latest: CurrentState | None = None
    for count, p in enumerate(newest_first):
        state = canonical_state(p, state_map)
        if latest is None:
            latest = CurrentState(state, p.ts_ns)
        elif state != latest.state or count >= max_scan:
            break
        else:
            latest = CurrentState(state, p.ts_ns)
    return latest


@dataclass(frozen=True, slots=True)
class StopEvent:
    """One stop event as ``state_times`` sees it: consecutive stop-state segments.

    ``segments`` are ``(state, start_ns, end_ns)``; ``end_ns`` is the sample that ends the
    event or, when ``open``, the window end (or the last sample, when that is later).
    """

    start_ns: int
    end_ns: int
    open: bool
    short: bool
    segments: tuple[tuple[MachineState, int, int], ...]


def stop_events(
    states: Sequence[Point], state_map: StateMap, end_ns: int, short_stop_threshold_s: float
) -> list[StopEvent]:
    """The stop events of ``states`` (samples as ``state_times`` takes them), classified
    short or long by the same rule as ``state_times``."""
    threshold_ns = round(short_stop_threshold_s * 1e9)
    n = len(states)
    ts = [p.ts_ns for p in states]
    canon = [canonical_state(p, state_map) for p in states]
    events: list[StopEvent] = []
    i = 0
    while i < n:
        if canon[i] not in STOP_STATES:
            i += 1
            continue
        j = i
        while j + 1 < n and canon[j + 1] in STOP_STATES:
            j += 1
        ends = [ts[k + 1] if k + 1 < n else max(end_ns, ts[k]) for k in range(i, j + 1)]
        segments = tuple((MachineState(str(canon[k])), ts[k], ends[k - i]) for k in range(i, j + 1))
        events.append(
            StopEvent(ts[i], ends[-1], j + 1 >= n, ends[-1] - ts[i] < threshold_ns, segments)
        )
        i = j + 1
    return events
