"""Data coverage: the share of a window in which a machine's data was fresh."""

from __future__ import annotations

from collections.abc import Sequence


def covered_ns(times: Sequence[int], start_ns: int, end_ns: int, max_gap_ns: int) -> int:
    """Time of ``[start_ns, end_ns)`` covered by samples at ``times`` (sorted, any signal).

    Each sample covers the time up to the next sample, but at most ``max_gap_ns``; the last
    sample covers ``max_gap_ns`` after it. Include the last sample before the window so the
    window's start is covered by it.
    """
    covered = 0
    n = len(times)
    for i, t in enumerate(times):
        hi = t + max_gap_ns
        if i + 1 < n and times[i + 1] < hi:
            hi = times[i + 1]
        lo = t if t > start_ns else start_ns
        if hi > end_ns:
            hi = end_ns
        if hi > lo:
            covered += hi - lo
    return covered
