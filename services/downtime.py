"""Downtime events: a machine's stop events with stable ids, and a Pareto of their reasons.

Stop events come from the KPI engine's own state timeline (``services.kpi.timeline``), so
an event here is exactly the stop the OEE figures count as short or long. Pure functions
over a ``SampleSource``; no web framework imports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from karkhana.config.factory import MachineRef, ReasonCatalogue
from karkhana.models import SEGMENT_RE, MachineState, from_ns
from services.kpi.planned import PlannedTime, planned_ns
from services.kpi.source import SampleSource
from services.kpi.timeline import StopEvent, stop_event_bounds, stop_events
from services.reasons_store import Coding

_NS = 1e9
_START = re.compile(r"[0-9]{1,19}")


class BadEventId(ValueError):
    """The text is not a downtime event id."""


def event_id(asset: str, start_ns: int) -> str:
    """Stable id of the stop event of ``asset`` starting at ``start_ns``: the same event
    gets the same id in every query and after every recomputation. Safe in a URL path."""
    return f"{asset.replace('/', '.')}@{start_ns}"


def parse_event_id(text: str) -> tuple[str, int]:
    """``event_id``'s inverse: (machine path, start in ns); BadEventId otherwise."""
    asset, sep, start = text.partition("@")
    segments = asset.split(".")
    if (
        not sep
        or len(segments) != 4
        or not all(SEGMENT_RE.fullmatch(s) for s in segments)
        or not _START.fullmatch(start)
        or int(start) >= 2**63  # beyond what a store timestamp can be
    ):
        raise BadEventId(
            f"{text!r} is not a downtime event id; ids look like "
            "'site.area.line.machine@<start in ns since the epoch>', as GET /api/v1/downtime "
            "returns them"
        )
    return "/".join(segments), int(start)


@dataclass(frozen=True, slots=True)
class DowntimeEvent:
    """A stop event of one machine, seen from a query window ``[window_start, window_end)``.

    ``end_ns`` is when the event ended or, while ``open``, the time it is measured up to.
    ``planned_s`` is the calendar planned time inside the whole event; the ``window_*``
    fields are the parts inside the query window (what the window's Pareto adds up).
    """

    id: str
    asset: str
    start_ns: int
    end_ns: int
    open: bool
    short: bool
    state: MachineState
    state_s: Mapping[str, float]
    duration_s: float
    planned_s: float
    window_s: float
    window_planned_s: float


def _overlap(a: int, b: int, lo: int, hi: int) -> int:
    return max(0, min(b, hi) - max(a, lo))


def _describe(
    ref: MachineRef, ev: StopEvent, planned: PlannedTime, lo: int, hi: int
) -> DowntimeEvent:
    by_state: dict[str, int] = {}
    for state, a, b in ev.segments:
        by_state[state.value] = by_state.get(state.value, 0) + b - a
    # The state the event spent most time in; the earliest one on a tie.
    main = max(ev.segments, key=lambda seg: by_state[seg[0].value])[0]
    return DowntimeEvent(
        id=event_id(ref.path, ev.start_ns),
        asset=ref.path,
        start_ns=ev.start_ns,
        end_ns=ev.end_ns,
        open=ev.open,
        short=ev.short,
        state=main,
        state_s=MappingProxyType({k: v / _NS for k, v in by_state.items()}),
        duration_s=(ev.end_ns - ev.start_ns) / _NS,
        planned_s=planned.overlap(ev.start_ns, ev.end_ns) / _NS,
        window_s=_overlap(ev.start_ns, ev.end_ns, lo, hi) / _NS,
        window_planned_s=planned.overlap(max(ev.start_ns, lo), min(ev.end_ns, hi)) / _NS,
    )


def _describe_all(
    ref: MachineRef, events: Sequence[StopEvent], lo: int, hi: int
) -> list[DowntimeEvent]:
    if not events:
        return []
    span_lo = min(lo, events[0].start_ns)
    span_hi = max(hi, events[-1].end_ns)
    planned = PlannedTime(planned_ns(ref.site, from_ns(span_lo), from_ns(span_hi), ref.path))
    return [_describe(ref, ev, planned, lo, hi) for ev in events]


def machine_events(
    source: SampleSource, ref: MachineRef, start_ns: int, end_ns: int
) -> list[DowntimeEvent]:
    """Stop events of ``ref`` overlapping ``[start_ns, end_ns)``, oldest first, each whole
    (an event in progress at ``start_ns`` keeps its real start)."""
    signal = ref.machine.signals.state
    states = stop_event_bounds(
        ref.state_map,
        source.points_before(ref.path, signal, start_ns),
        source.points(ref.path, signal, start_ns, end_ns),
        source.points_from(ref.path, signal, end_ns),
    )
    events = [
        ev
        for ev in stop_events(states, ref.state_map, end_ns, ref.short_stop_threshold_s)
        if ev.start_ns < end_ns and ev.end_ns > start_ns
    ]
    return _describe_all(ref, events, start_ns, end_ns)


def find_event(
    source: SampleSource, ref: MachineRef, start_ns: int, now_ns: int
) -> DowntimeEvent | None:
    """The stop event of ``ref`` that starts exactly at ``start_ns``; an open one is
    measured up to ``now_ns``. None when no stop event starts there."""
    signal = ref.machine.signals.state
    states = stop_event_bounds(
        ref.state_map,
        source.points_before(ref.path, signal, start_ns),
        source.points(ref.path, signal, start_ns, start_ns + 1),
        source.points_from(ref.path, signal, start_ns + 1),
    )
    end_ns = max(now_ns, start_ns + 1)
    found = [
        ev
        for ev in stop_events(states, ref.state_map, end_ns, ref.short_stop_threshold_s)
        if ev.start_ns == start_ns
    ]
    return _describe_all(ref, found, start_ns, end_ns)[0] if found else None


@dataclass(frozen=True, slots=True)
class ParetoBucket:
    """One reason's share of the downtime in a window; ``reason`` None is "not coded".

    ``name``/``category`` are None for the uncoded bucket and for a code the catalogue no
    longer has."""

    reason: str | None
    name: str | None
    category: str | None
    seconds: float
    planned_s: float
    count: int


def pareto(
    events: Iterable[DowntimeEvent], codings: Mapping[str, Coding], catalogue: ReasonCatalogue
) -> list[ParetoBucket]:
    """Seconds (inside the window), planned seconds and count of events per reason, the
    biggest first (then by count, then by code; ties keep the uncoded bucket last)."""
    seconds: dict[str | None, float] = {}
    planned: dict[str | None, float] = {}
    counts: dict[str | None, int] = {}
    for ev in events:
        coding = codings.get(ev.id)
        key = coding.reason if coding is not None else None
        seconds[key] = seconds.get(key, 0.0) + ev.window_s
        planned[key] = planned.get(key, 0.0) + ev.window_planned_s
        counts[key] = counts.get(key, 0) + 1
    buckets = []
    for key in seconds:
        reason = catalogue.get(key) if key is not None else None
        buckets.append(
            ParetoBucket(
                reason=key,
                name=reason.name if reason else None,
                category=reason.category.value if reason else None,
                seconds=seconds[key],
                planned_s=planned[key],
                count=counts[key],
            )
        )
    buckets.sort(key=lambda b: (-b.seconds, -b.count, b.reason is None, b.reason or ""))
    return buckets
