"""Read-only access to the embedded SQLite store (schema: ``karkhana.storage.sqlite_schema``).

Implements ``services.kpi.SampleSource``. A store file that does not exist yet (or whose
schema the gateway has not created yet) reads as empty, so the API answers before the first
sample arrives. One reader per request: open with ``SqliteReader.open`` and close it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from karkhana.errors import StoreError
from karkhana.models import Quality
from karkhana.storage.sqlite_chunks import (
    Run,
    latest_before,
    read_range,
    read_times,
    windows_before,
    windows_from,
)
from karkhana.storage.sqlite_schema import QUALITY_NAMES, connect
from services.kpi.arrays import EMPTY, SampleArrays
from services.kpi.source import Point

logger = logging.getLogger(__name__)
T = TypeVar("T")

_QUALITIES = {code: Quality(name) for code, name in QUALITY_NAMES.items()}
_new_point = partial(tuple.__new__, Point)


def _points(run: Run) -> list[Point]:
    # tuple.__new__ over zip builds the points without a Python-level call per sample
    # (Point's own __new__ is one): a month of a machine's samples is a million points.
    if run.qualities is None:
        return list(map(_new_point, zip(run.ts, run.values, repeat(Quality.GOOD))))
    qualities = [_QUALITIES.get(q, Quality.BAD) for q in run.qualities]
    return list(map(_new_point, zip(run.ts, run.values, qualities, strict=True)))


def _missing_schema(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)


class SqliteReader:
    """A read-only view of one SQLite store file."""

    def __init__(self, path: Path, conn: sqlite3.Connection | None) -> None:
        self.path = path
        self._conn = conn
        self._series: dict[tuple[str, str], int | None] = {}
        self._asset_series: dict[str, list[int]] = {}
        # Sample times of the ranges ``arrays`` read last, for one asset.
        self._times_asset: str | None = None
        self._times: dict[tuple[int, int, int], NDArray[np.int64]] = {}

    @classmethod
    def open(cls, path: str | Path) -> SqliteReader:
        p = Path(path)
        if not p.exists():
            return cls(p, None)
        try:
            conn = connect(p, readonly=True)
            conn.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {p}: {exc}") from exc
        return cls(p, conn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def exists(self) -> bool:
        return self._conn is not None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        none: list[tuple[Any, ...]] = []
        return self._read(lambda conn: conn.execute(sql, params).fetchall(), none)

    def _read(self, read: Callable[[sqlite3.Connection], T], empty: T) -> T:
        if self._conn is None:
            return empty
        try:
            return read(self._conn)
        except sqlite3.Error as exc:
            if _missing_schema(exc):
                return empty
            raise StoreError(f"reading the SQLite store {self.path} failed: {exc}") from exc

    def _iterate(self, runs: Callable[[sqlite3.Connection], Iterator[Run]]) -> Iterator[Run]:
        if self._conn is None:
            return
        try:
            yield from runs(self._conn)
        except sqlite3.Error as exc:
            if _missing_schema(exc):
                return
            raise StoreError(f"reading the SQLite store {self.path} failed: {exc}") from exc

    def series_id(self, asset: str, signal: str) -> int | None:
        key = (asset, signal)
        if key not in self._series:
            rows = self._query(
                "SELECT id FROM series WHERE asset = ? AND signal = ?", (asset, signal)
            )
            self._series[key] = int(rows[0][0]) if rows else None
        return self._series[key]

    def asset_series(self, asset: str) -> list[int]:
        if asset not in self._asset_series:
            rows = self._query("SELECT id FROM series WHERE asset = ? ORDER BY id", (asset,))
            self._asset_series[asset] = [int(r[0]) for r in rows]
        return self._asset_series[asset]

    # --- SampleSource -----------------------------------------------------------------

    def points(self, asset: str, signal: str, start_ns: int, end_ns: int) -> list[Point]:
        sid = self.series_id(asset, signal)
        if sid is None:
            return []
        return _points(self._read(lambda c: read_range(c, sid, start_ns, end_ns), Run([], [])))

    def points_before(self, asset: str, signal: str, before_ns: int) -> Iterator[Point]:
        sid = self.series_id(asset, signal)
        if sid is None:
            return iter(())
        runs = self._iterate(lambda c: windows_before(c, sid, before_ns))
        return (p for run in runs for p in reversed(_points(run)))

    def points_from(self, asset: str, signal: str, from_ns: int) -> Iterator[Point]:
        sid = self.series_id(asset, signal)
        if sid is None:
            return iter(())
        runs = self._iterate(lambda c: windows_from(c, sid, from_ns))
        return (p for run in runs for p in _points(run))

    # --- ArraySource (services.kpi.arrays) --------------------------------------------

    def arrays(self, asset: str, signal: str, start_ns: int, end_ns: int) -> SampleArrays:
        """``points`` of the same range as arrays (no tuple per sample)."""
        sid = self.series_id(asset, signal)
        if sid is None:
            return EMPTY
        run = self._read(lambda c: read_range(c, sid, start_ns, end_ns), Run([], []))
        ts = np.array(run.ts, dtype=np.int64)
        # Kept for ``time_array`` of the same asset and range (the usual next read).
        if self._times_asset != asset:
            self._times_asset, self._times = asset, {}
        self._times[(sid, start_ns, end_ns)] = ts
        if not run.ts:
            return EMPTY
        qualities = None
        if run.qualities is not None and any(run.qualities):
            qualities = [_QUALITIES.get(q, Quality.BAD) for q in run.qualities]
        return SampleArrays(ts, run.values, qualities)

    def time_array(self, asset: str, start_ns: int, end_ns: int) -> NDArray[np.int64]:
        """``sample_times`` of the same range as an array (reusing the times of the series
        ``arrays`` just read over that range)."""
        previous: int | None = None
        parts = []
        read = self._times if self._times_asset == asset else {}
        # Used once: later reads of the range may hold more samples.
        self._times_asset, self._times = None, {}
        for sid in self.asset_series(asset):
            before = self._read(partial(latest_before, series_id=sid, before_ns=start_ns), None)
            if before is not None and (previous is None or before > previous):
                previous = before
            times = read.get((sid, start_ns, end_ns))
            if times is None:
                none: list[int] = []
                found = self._read(
                    partial(read_times, series_id=sid, start_ns=start_ns, end_ns=end_ns), none
                )
                times = np.array(found, dtype=np.int64)
            parts.append(times)
        if previous is not None:
            parts.append(np.array([previous], dtype=np.int64))
        times = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        if len(times) < 2:
            return times
        return times[np.concatenate(([True], times[1:] != times[:-1]))]

    def sample_times(self, asset: str, start_ns: int, end_ns: int) -> list[int]:
        ids = self.asset_series(asset)
        if not ids:
            return []
        previous: int | None = None
        times: set[int] = set()
        for sid in ids:
            before = self._read(partial(latest_before, series_id=sid, before_ns=start_ns), None)
            if before is not None and (previous is None or before > previous):
                previous = before
            times.update(
                self._read(partial(read_times, series_id=sid, start_ns=start_ns, end_ns=end_ns), [])
            )
        ordered = sorted(times)
        return [previous, *ordered] if previous is not None else ordered

    # --- health -----------------------------------------------------------------------

    def sample_count(self) -> int:
        rows = self._query("SELECT COALESCE(SUM(n), 0) FROM sample_chunks")
        return int(rows[0][0]) if rows else 0

    # --- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int, before_id: int | None = None) -> list[StoredDeadLetter]:
        """Up to ``limit`` dead letters with an id below ``before_id``, newest first."""
        rows = self._query(
            "SELECT id, received_ns, topic, reason, payload, payload_size FROM dead_letters "
            "WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**63 - 1, limit),
        )
        return [StoredDeadLetter(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def dead_letter_count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM dead_letters")
        return int(rows[0][0]) if rows else 0


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A row of the ``dead_letters`` table (``payload`` is truncated by the gateway)."""

    id: int
    received_ns: int
    topic: str
    reason: str
    payload: bytes
    payload_size: int


@contextmanager
def open_reader(path: str | Path) -> Iterator[SqliteReader]:
    """A reader for one unit of work, closed afterwards."""
    reader = SqliteReader.open(path)
    try:
        yield reader
    finally:
        reader.close()
