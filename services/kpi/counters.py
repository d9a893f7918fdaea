"""Counter deltas over a window, with resets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from karkhana.models import Quality
from services.kpi.source import Point

COUNTER_RESET = "counter_reset"
BAD_COUNTER_VALUE = "bad_counter_value"


@dataclass(slots=True)
class CounterDelta:
    delta: float = 0.0
    flags: set[str] = field(default_factory=set)


def _numeric(p: Point) -> float | None:
    value = p.value
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) else None
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def counter_delta(points: Sequence[Point], start_ns: int) -> CounterDelta:
    """Units counted in the window.

    ``points``: the counter's samples in time order: optionally its last sample before the
    window (``ts < start_ns``, the baseline), then its samples in the window. Without a
    baseline the first sample in the window is the baseline. A decrease is a reset: the value
    after it counts from zero (flag ``counter_reset``). Samples of bad quality are skipped;
    non-numeric values are skipped with the flag ``bad_counter_value``.
    """
    out = CounterDelta()
    previous: float | None = None
    for p in points:
        if p.quality == Quality.BAD:
            continue
        value = _numeric(p)
        if value is None:
            out.flags.add(BAD_COUNTER_VALUE)
            continue
        if previous is not None:
            if value >= previous:
                out.delta += value - previous
            else:
                out.delta += value
                if p.ts_ns >= start_ns:
                    out.flags.add(COUNTER_RESET)
        previous = value
    return out
