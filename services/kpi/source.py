"""What the KPI engine needs from a time-series store, as a small protocol.

The SQLite reader (``services.store``) implements it; an InfluxDB reader can slot in.
Timestamps are integer nanoseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from karkhana.models import Quality, SampleValue


class Point(NamedTuple):
    """One stored sample of one signal."""

    ts_ns: int
    value: SampleValue
    quality: Quality = Quality.GOOD


class SampleSource(Protocol):
    """Read access to the samples of one store (one request's worth of work)."""

    def points(self, asset: str, signal: str, start_ns: int, end_ns: int) -> Sequence[Point]:
        """Samples with ``start_ns <= ts < end_ns``, oldest first."""
        ...

    def points_before(self, asset: str, signal: str, before_ns: int) -> Iterator[Point]:
        """Samples with ``ts < before_ns``, newest first (read lazily)."""
        ...

    def points_from(self, asset: str, signal: str, from_ns: int) -> Iterator[Point]:
        """Samples with ``ts >= from_ns``, oldest first (read lazily)."""
        ...

    def sample_times(self, asset: str, start_ns: int, end_ns: int) -> Sequence[int]:
        """Distinct timestamps of all signals of ``asset`` in ``[start_ns, end_ns)``, sorted,
        preceded by the latest timestamp before ``start_ns`` when there is one."""
        ...
