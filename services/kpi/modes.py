"""Operating mode (auto / manual) over a machine's run time, and manual interventions.

A mode sample holds from its timestamp until the next mode sample; before the first one,
and from a sample of bad quality or a value the machine's ``mode_map`` does not know, the
mode is unknown. Run time with an unknown mode counts neither as auto nor as manual, so
the automation rate rests only on run time whose mode the data tells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from karkhana.models import Quality
from services.kpi.planned import PlannedTime
from services.kpi.source import Point

AUTO = "auto"
MANUAL = "manual"
_MODES = frozenset({AUTO, MANUAL})


def map_mode(value: object, mode_map: Mapping[str, str]) -> str | None:
    """``auto`` / ``manual`` for a raw mode value (code or text); None when unknown."""
    if isinstance(value, bool):
        key = "1" if value else "0"
    elif isinstance(value, float) and value.is_integer():
        key = str(int(value))
    else:
        key = str(value).strip()
    found = mode_map.get(key)
    if found is None and key.lower() in _MODES:
        found = key.lower()
    return found if found in _MODES else None


@dataclass(frozen=True, slots=True)
class ModeTimes:
    """Planned run time with a known mode, the part of it in auto, and the interventions."""

    known_ns: int = 0
    auto_ns: int = 0
    interventions: int = 0


def mode_times(
    run_spans: Sequence[tuple[int, int]],
    modes: Sequence[Point],
    mode_map: Mapping[str, str],
    planned: PlannedTime,
    start_ns: int,
    end_ns: int,
) -> ModeTimes:
    """Split the planned part of ``run_spans`` (sorted, disjoint) by mode, and count the
    manual interventions: samples in ``[start_ns, end_ns)`` reading manual whose previous
    mode sample read auto. ``modes``: the latest mode sample before the window (when there
    is one), then the window's samples, in time order. ``planned`` lies inside the window."""
    mapped = [None if p.quality == Quality.BAD else map_mode(p.value, mode_map) for p in modes]
    interventions = sum(
        1
        for k in range(1, len(modes))
        if start_ns <= modes[k].ts_ns < end_ns and mapped[k] == MANUAL and mapped[k - 1] == AUTO
    )
    known = auto = 0
    r = 0
    n = len(modes)
    for k in range(n):
        mode = mapped[k]
        if mode is None:
            continue
        lo = modes[k].ts_ns
        hi = modes[k + 1].ts_ns if k + 1 < n else max(end_ns, lo)
        # Run spans ending before this piece cannot overlap it or any later piece.
        while r < len(run_spans) and run_spans[r][1] <= lo:
            r += 1
        q = r
        while q < len(run_spans) and run_spans[q][0] < hi:
            a, b = max(run_spans[q][0], lo), min(run_spans[q][1], hi)
            p = planned.overlap(a, b)
            known += p
            if mode == AUTO:
                auto += p
            q += 1
    return ModeTimes(known, auto, interventions)
