"""Calendar planned time as sorted nanosecond intervals with O(log n) overlap queries."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime

from karkhana.calendar import planned_intervals
from karkhana.config.factory import Site
from karkhana.models import to_ns

NsInterval = tuple[int, int]


def planned_ns(
    site: Site, start: datetime, end: datetime, machine_path: str | None = None
) -> list[NsInterval]:
    """The site's planned production intervals within ``[start, end)``: shifts (not on
    holidays) minus breaks, and minus the maintenance windows of ``machine_path`` if given."""
    return [(to_ns(a), to_ns(b)) for a, b in planned_intervals(site, start, end, machine_path)]


class PlannedTime:
    """Measure of planned time before an instant, for disjoint sorted intervals.

    ``overlap(a, b)`` is the planned time inside ``[a, b)``.
    """

    __slots__ = ("_cum", "_ends", "_starts", "total")

    def __init__(self, intervals: Sequence[NsInterval]) -> None:
        ordered = sorted(intervals)
        self._starts = [a for a, _ in ordered]
        self._ends = [b for _, b in ordered]
        self._cum: list[int] = []
        acc = 0
        for i, (a, b) in enumerate(ordered):
            if b <= a or (i and a < self._ends[i - 1]):
                raise ValueError("planned intervals must be non-empty and disjoint")
            self._cum.append(acc)
            acc += b - a
        self.total = acc

    def before(self, t: int) -> int:
        """Planned time in ``(-inf, t)``."""
        i = bisect_right(self._starts, t) - 1
        if i < 0:
            return 0
        return self._cum[i] + min(t, self._ends[i]) - self._starts[i]

    def overlap(self, a: int, b: int) -> int:
        if b <= a:
            return 0
        return self.before(b) - self.before(a)
