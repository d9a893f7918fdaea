"""Retention and downsampling of the SQLite store, on its own connection and thread.

- **Retention**: samples older than ``retention_days`` are deleted, except the newest one
  of each series before the cutoff, so the state in force and the counter baseline at the
  cutoff stay known. Dead letters older than ``deadletter_retention_days`` are deleted.
- **Downsampling** of numeric gauges: after ``downsample_after_days``, the float samples of
  a series are reduced to the first and the last of each ``downsample_bucket_s`` bucket.
  Only float values are candidates, and never those of signals matching ``keep_raw``
  (state, mode, counters, energy by default): KPIs need every state change and counter value.
  The kept samples are real ones (value, quality and time as received); the last of a
  bucket is the value in force at its end, and keeping the first too leaves the data
  coverage the KPI engine computes unchanged as long as the bucket is at most its
  ``max_gap_s``.

Work is done in transactions of about ``chunk_rows`` rows, so the gateway's writer waits
at most one short chunk for the database lock.
"""

from __future__ import annotations

import fnmatch
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from karkhana.errors import StoreError
from karkhana.models import from_ns, iso_utc
from karkhana.storage.sqlite_chunks import (
    CHUNK_NS,
    Run,
    latest_before,
    next_time,
    read_range,
    rewrite_range,
    window_of,
)
from karkhana.storage.sqlite_schema import connect

log = logging.getLogger(__name__)
T = TypeVar("T")

DAY_NS = 86_400 * 1_000_000_000
WATERMARK_KEY = "downsampled_until_ns"
"""``meta`` key: float samples before this time are already downsampled."""
COMPACTED_KEY = "compacted_until_ns"
"""``meta`` key: the chunk windows before this time are compacted."""
DEFAULT_KEEP_RAW = ("state*", "mode*", "count*", "*counter*", "energy*")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    retention_days: float | None = None
    downsample_after_days: float | None = None
    downsample_bucket_s: float = 60.0
    keep_raw: tuple[str, ...] = DEFAULT_KEEP_RAW
    """fnmatch patterns of signal names never downsampled."""
    deadletter_retention_days: float | None = None
    compact_after_s: float | None = 3600.0
    """Merge the chunks of each series' closed windows older than this into one chunk per
    window (a low-rate series gets one small chunk per batch); None: never."""
    chunk_rows: int = 5000
    """Chunk rows deleted (or dead letters) per transaction."""

    @property
    def removes_data(self) -> bool:
        return any(
            days is not None
            for days in (
                self.retention_days,
                self.downsample_after_days,
                self.deadletter_retention_days,
            )
        )

    @property
    def enabled(self) -> bool:
        return self.removes_data or self.compact_after_s is not None

    def keeps_raw(self, signal: str) -> bool:
        return any(fnmatch.fnmatchcase(signal, pattern) for pattern in self.keep_raw)


@dataclass(slots=True)
class RetentionReport:
    samples_deleted: int = 0
    """Samples older than the retention cutoff."""
    samples_downsampled: int = 0
    """Float samples removed by downsampling."""
    dead_letters_deleted: int = 0
    chunks_compacted: int = 0
    """Chunk rows merged away (the samples stay)."""

    @property
    def removed(self) -> int:
        return self.samples_deleted + self.samples_downsampled + self.dead_letters_deleted


class SqliteRetention:
    """Applies a :class:`RetentionPolicy` to one SQLite store file (blocking calls)."""

    def __init__(self, path: Path, policy: RetentionPolicy) -> None:
        self.path = path
        self.policy = policy
        self._bucket_ns = max(1, int(policy.downsample_bucket_s * 1_000_000_000))

    def run_once(self, now_ns: int, stop: threading.Event | None = None) -> RetentionReport:
        """One pass; returns what it removed. ``stop`` ends it between chunks."""
        stop = stop or threading.Event()
        report = RetentionReport()
        try:
            conn = connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"retention cannot open the SQLite store {self.path}: {exc}") from exc
        try:
            self._pass(conn, now_ns, stop, report)
        except sqlite3.Error as exc:
            raise StoreError(f"retention on the SQLite store {self.path} failed: {exc}") from exc
        finally:
            conn.close()
        if report.chunks_compacted:
            log.debug("%s: %d chunk row(s) merged", self.path, report.chunks_compacted)
        if report.removed:
            log.info(
                "retention on %s: %d old sample(s) deleted, %d gauge sample(s) downsampled, "
                "%d dead letter(s) deleted",
                self.path,
                report.samples_deleted,
                report.samples_downsampled,
                report.dead_letters_deleted,
            )
        return report

    def _pass(
        self, conn: sqlite3.Connection, now_ns: int, stop: threading.Event, report: RetentionReport
    ) -> None:
        p = self.policy
        series = conn.execute("SELECT id, signal FROM series ORDER BY id").fetchall()
        if p.retention_days is not None:
            cutoff = now_ns - int(p.retention_days * DAY_NS)
            for sid, _ in series:
                if stop.is_set():
                    return
                report.samples_deleted += self._delete_old(conn, sid, cutoff, stop)
        if p.deadletter_retention_days is not None:
            cutoff = now_ns - int(p.deadletter_retention_days * DAY_NS)
            report.dead_letters_deleted += self._delete_dead_letters(conn, cutoff, stop)
        if p.downsample_after_days is not None:
            until = now_ns - int(p.downsample_after_days * DAY_NS)
            until -= until % self._bucket_ns  # whole buckets only
            report.samples_downsampled += self._downsample(conn, series, until, stop)
        if p.compact_after_s is not None:
            until = window_of(now_ns - int(p.compact_after_s * 1e9))
            report.chunks_compacted += self._compact(conn, series, until, stop)

    # -- retention -------------------------------------------------------------------------

    def _delete_old(
        self, conn: sqlite3.Connection, sid: int, cutoff: int, stop: threading.Event
    ) -> int:
        """Delete the series' samples before ``cutoff`` except the newest of them."""
        keep_from = latest_before(conn, sid, cutoff)
        if keep_from is None:
            return 0
        deleted = 0
        # Whole chunks first, a bounded number per transaction.
        while not stop.is_set():
            rows = conn.execute(
                "SELECT id, n FROM sample_chunks WHERE series_id = ? AND ts_last < ? LIMIT ?",
                (sid, keep_from, self.policy.chunk_rows),
            ).fetchall()
            if not rows:
                break
            ids = [(r[0],) for r in rows]
            self._in_transaction(
                conn, conn.executemany, "DELETE FROM sample_chunks WHERE id = ?", ids
            )
            deleted += sum(r[1] for r in rows)
        if stop.is_set():
            return deleted
        # Then the older part of the chunk(s) holding the sample kept.
        lo = window_of(keep_from)
        removed = self._in_transaction(
            conn, lambda: rewrite_range(conn, sid, lo, keep_from, Run([], []))[0]
        )
        return deleted + removed

    def _delete_dead_letters(
        self, conn: sqlite3.Connection, cutoff: int, stop: threading.Event
    ) -> int:
        deleted = 0
        while not stop.is_set():
            n = self._in_transaction(
                conn,
                lambda: (
                    conn.execute(
                        "DELETE FROM dead_letters WHERE id IN "
                        "(SELECT id FROM dead_letters WHERE received_ns < ? LIMIT ?)",
                        (cutoff, self.policy.chunk_rows),
                    ).rowcount
                ),
            )
            deleted += n
            if n < self.policy.chunk_rows:
                break
        return deleted

    # -- downsampling ----------------------------------------------------------------------

    def _downsample(
        self,
        conn: sqlite3.Connection,
        series: list[tuple[int, str]],
        until: int,
        stop: threading.Event,
    ) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (WATERMARK_KEY,)).fetchone()
        since = int(row[0]) if row is not None else 0
        if until <= since:
            return 0
        removed = 0
        for sid, signal in series:
            if self.policy.keeps_raw(signal):
                continue
            if stop.is_set():
                return removed  # the watermark stays: the next pass redoes this range
            removed += self._downsample_series(conn, sid, since, until, stop)
        self._in_transaction(
            conn,
            lambda: conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (WATERMARK_KEY, str(until)),
            ),
        )
        log.debug("float samples before %s downsampled", iso_utc(from_ns(until)))
        return removed

    def _downsample_series(
        self, conn: sqlite3.Connection, sid: int, since: int, until: int, stop: threading.Event
    ) -> int:
        bucket = self._bucket_ns
        # Steps of whole buckets, at least one chunk window long.
        step = bucket * max(1, -(-CHUNK_NS // bucket))
        removed = 0
        lo = since
        while not stop.is_set():
            first = next_time(conn, sid, lo)
            if first is None or first >= until:
                break
            lo = first - first % bucket
            hi = min(lo + step, until)
            removed += self._in_transaction(conn, _downsample_range, conn, sid, lo, hi, bucket)
            lo = hi
        return removed

    # -- compaction ------------------------------------------------------------------------

    def _compact(
        self,
        conn: sqlite3.Connection,
        series: list[tuple[int, str]],
        until: int,
        stop: threading.Event,
    ) -> int:
        """One chunk per series and window for the windows in [watermark, until)."""
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (COMPACTED_KEY,)).fetchone()
        since = int(row[0]) if row is not None else 0
        if until <= since:
            return 0
        merged = 0
        for sid, _ in series:
            if stop.is_set():
                return merged  # the watermark stays: the next pass redoes this range
            windows = Counter(
                window_of(first)
                for (first,) in conn.execute(
                    "SELECT ts_first FROM sample_chunks WHERE series_id = ? "
                    "AND ts_last >= ? AND ts_last < ?",
                    (sid, since, until),
                )
            )
            for w, chunks in sorted(windows.items()):
                if chunks > 1 and not stop.is_set():
                    self._in_transaction(conn, _compact_window, conn, sid, w)
                    merged += chunks - 1
        self._in_transaction(
            conn,
            conn.execute,
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (COMPACTED_KEY, str(until)),
        )
        return merged

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, work: Callable[..., T], *args: Any) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(*args)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return result


# Each of these reads and rewrites inside one transaction: a sample the gateway writes into
# the range meanwhile (late data) is either read here or written after, never overwritten.


def _downsample_range(conn: sqlite3.Connection, sid: int, lo: int, hi: int, bucket: int) -> int:
    """Downsample the series' floats in [lo, hi); returns the samples removed."""
    run = read_range(conn, sid, lo, hi)
    keep = _first_and_last_floats(run, bucket)
    if len(keep) == len(run):
        return 0
    rewrite_range(conn, sid, lo, hi, keep)
    return len(run) - len(keep)


def _compact_window(conn: sqlite3.Connection, sid: int, w: int) -> None:
    rewrite_range(conn, sid, w, w + CHUNK_NS, read_range(conn, sid, w, w + CHUNK_NS))


def _first_and_last_floats(run: Run, bucket_ns: int) -> Run:
    """Every non-float sample, and the first and last float sample of each bucket."""
    keep: list[int] = []
    spans: dict[int, list[int]] = {}  # bucket -> [first, last] index of its floats
    for i, (ts, value) in enumerate(zip(run.ts, run.values, strict=True)):
        if type(value) is not float:
            keep.append(i)
            continue
        span = spans.get(ts // bucket_ns)
        if span is None:
            spans[ts // bucket_ns] = [i, i]
        else:
            span[1] = i
    keep += [i for first, last in spans.values() for i in {first, last}]
    keep.sort()
    return run.select(keep)


class RetentionRunner:
    """Runs retention every ``interval_s`` in its own thread while the gateway runs.

    ``with RetentionRunner(...)`` starts it (the first pass right away); leaving the block
    stops it after the current chunk.
    """

    def __init__(self, retention: SqliteRetention, interval_s: float) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="karkhana-gateway-retention")
        self.passes = 0
        self.last_report: RetentionReport | None = None

    def __enter__(self) -> RetentionRunner:
        self.start()
        return self

    def start(self) -> None:
        self._thread.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop after the current chunk and wait for the thread (a short blocking join)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self.last_report = self.retention.run_once(time.time_ns(), self._stop)
            except StoreError as exc:
                log.error("%s; retrying in %.0f s", exc, self.interval_s)
            self.passes += 1
            if self._stop.wait(self.interval_s):
                return
