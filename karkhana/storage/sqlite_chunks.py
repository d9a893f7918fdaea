"""Samples stored as per-series chunks: one SQLite row holds many samples of one series.

A row per sample costs about a microsecond of SQLite work (and ~40 bytes) per sample; a
chunk row costs that once for all its samples, so the gateway's writer keeps up with the
broker and range reads decode arrays instead of stepping through rows.

Layout (table ``sample_chunks``, see :mod:`karkhana.storage.sqlite_schema`):

- Every chunk lies inside one aligned window of ``CHUNK_NS`` (15 minutes, the KPI bucket),
  so a time-range query scans a bounded slice of the ``(series_id, ts_last)`` index, and the
  samples per KPI bucket are a sum over chunk rows.
- ``ts``: the sample times, strictly increasing, as a MessagePack array of integers (ns since
  the epoch).
- ``vals``: the values as a MessagePack array (keeps bool, int, float and str apart).
- ``qualities``: NULL when every sample is good, else one byte per sample (0 good,
  1 uncertain, 2 bad).

No (series, ts) is ever stored twice: a write drops the samples whose time the series
already holds (the first write wins, like ``INSERT OR IGNORE``). Chunks of one series may
still overlap in time (a late sample lands in a new chunk); readers merge them.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import msgspec

from karkhana.models import SampleValue

CHUNK_NS = 15 * 60 * 1_000_000_000
"""Every chunk lies inside one aligned window of this length (equal to the KPI bucket)."""

_encode = msgspec.msgpack.Encoder().encode
_decode_ts = msgspec.msgpack.Decoder(list[int]).decode
_decode_values = msgspec.msgpack.Decoder().decode

_INSERT = (
    "INSERT INTO sample_chunks (series_id, ts_first, ts_last, n, ts, vals, qualities) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Chunks of a series overlapping [lo, hi]: a chunk's ts_first is at most CHUNK_NS before its
# ts_last, so the index range on ts_last is bounded on both sides.
_OVERLAPPING = (
    "SELECT id, ts, vals, qualities FROM sample_chunks WHERE series_id = ? "
    "AND ts_last >= ? AND ts_last < ? AND ts_first <= ? ORDER BY ts_first"
)


def encode_ts(ts: Sequence[int]) -> bytes:
    return _encode(ts)


def decode_ts(blob: bytes) -> list[int]:
    return _decode_ts(blob)


def encode_values(values: Sequence[SampleValue]) -> bytes:
    return _encode(values)


def decode_values(blob: bytes) -> list[SampleValue]:
    values: list[SampleValue] = _decode_values(blob)
    return values


def window_of(ts_ns: int) -> int:
    """Start of the chunk window holding ``ts_ns``."""
    return ts_ns - ts_ns % CHUNK_NS


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _window_end(ts_ns: int) -> int:
    """End of the chunk window holding ``ts_ns``, as an SQLite integer."""
    return min(window_of(ts_ns) + CHUNK_NS, _I64_MAX)


def _i64(ts_ns: int) -> int:
    """A time bound as an SQLite integer (callers may pass open bounds beyond int64)."""
    return min(max(ts_ns, _I64_MIN), _I64_MAX)


@dataclass(slots=True)
class Run:
    """Samples of one series in time order with distinct times (a chunk's content)."""

    ts: list[int]
    values: list[SampleValue]
    qualities: list[int] | None = None
    """One code per sample; None when all are good."""

    def __len__(self) -> int:
        return len(self.ts)

    def quality_at(self, i: int) -> int:
        return 0 if self.qualities is None else self.qualities[i]

    def select(self, keep: Iterable[int]) -> Run:
        idx = list(keep)
        q = self.qualities
        return Run(
            [self.ts[i] for i in idx],
            [self.values[i] for i in idx],
            None if q is None or not any(q[i] for i in idx) else [q[i] for i in idx],
        )

    def slice(self, i: int, j: int) -> Run:
        if i <= 0 and j >= len(self.ts):
            return self
        q = self.qualities
        return Run(self.ts[i:j], self.values[i:j], None if q is None else q[i:j])

    def between(self, lo: int, hi: int) -> Run:
        """The samples with ``lo <= ts < hi``."""
        return self.slice(bisect_left(self.ts, lo), bisect_left(self.ts, hi))


def normalize_run(ts: list[int], values: list[SampleValue], qualities: list[int] | None) -> Run:
    """Samples in arrival order -> time order with distinct times (the first of a time wins)."""
    n = len(ts)
    if n < 2 or (ts == sorted(ts) and len(set(ts)) == n):
        return Run(ts, values, qualities)
    first: dict[int, int] = {}
    for i, t in enumerate(ts):
        first.setdefault(t, i)
    order = sorted(first.values(), key=ts.__getitem__)
    return Run(ts, values, qualities).select(order)


def _row_run(ts_blob: bytes, vals_blob: bytes, q_blob: bytes | None) -> Run:
    return Run(
        decode_ts(ts_blob), decode_values(vals_blob), None if q_blob is None else list(q_blob)
    )


def _merge(runs: list[Run]) -> Run:
    """Runs of one series (no time in two runs) -> one run in time order."""
    runs = [r for r in runs if r.ts]
    if not runs:
        return Run([], [])
    if len(runs) == 1:
        return runs[0]
    ordered = all(a.ts[-1] < b.ts[0] for a, b in pairwise(runs))
    ts: list[int] = []
    values: list[SampleValue] = []
    any_quality = any(r.qualities is not None for r in runs)
    qualities: list[int] | None = [] if any_quality else None
    for r in runs:
        ts += r.ts
        values += r.values
        if qualities is not None:
            qualities += r.qualities if r.qualities is not None else [0] * len(r.ts)
    merged = Run(ts, values, qualities)
    if ordered:
        return merged
    return merged.select(sorted(range(len(ts)), key=ts.__getitem__))


class ChunkWriter:
    """Writes runs as chunks on a connection whose transaction the caller opens and commits.

    Keeps, per series, the newest time it knows is stored, so the common case (samples newer
    than anything stored) needs no query. Call :meth:`begin` right after ``BEGIN IMMEDIATE``
    (it notices commits by other connections, e.g. a second gateway or retention) and
    :meth:`forget` after a rollback.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._newest: dict[int, int] = {}
        self._data_version: int | None = None
        self._rows: list[tuple[int, int, int, int, bytes, bytes, bytes | None]] = []

    def begin(self) -> None:
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._newest.clear()
            self._data_version = version

    def forget(self) -> None:
        self._newest.clear()
        self._data_version = None
        self._rows.clear()

    def add(
        self,
        series_id: int,
        ts: list[int],
        values: list[SampleValue],
        qualities: list[int] | None = None,
    ) -> int:
        """Stage samples (any order, repeats allowed); returns how many are new."""
        run = normalize_run(ts, values, qualities)
        if not run.ts:
            return 0
        newest = self._newest.get(series_id)
        if newest is None:
            row = self._conn.execute(
                "SELECT max(ts_last) FROM sample_chunks WHERE series_id = ?", (series_id,)
            ).fetchone()
            newest = -1 if row[0] is None else int(row[0])
        first, last = run.ts[0], run.ts[-1]
        written = 0
        if first // CHUNK_NS == last // CHUNK_NS and first > newest:
            written = self._stage(series_id, run)
        else:
            w = window_of(first)
            while w <= last:
                part = run.between(w, w + CHUNK_NS)
                if part.ts:
                    if part.ts[0] <= newest:
                        part = self._without_stored(series_id, part)
                    written += self._stage(series_id, part)
                w += CHUNK_NS
        self._newest[series_id] = max(newest, last)
        return written

    def _without_stored(self, series_id: int, run: Run) -> Run:
        lo, hi = run.ts[0], run.ts[-1]
        stored: set[int] = set()
        for _, ts_blob, _, _ in self._conn.execute(
            _OVERLAPPING, (series_id, lo, _window_end(hi), hi)
        ):
            stored.update(decode_ts(ts_blob))
        # Rows staged in this transaction but not yet inserted count as stored too.
        for sid, first, last, _, ts_blob, _, _ in self._rows:
            if sid == series_id and first <= hi and last >= lo:
                stored.update(decode_ts(ts_blob))
        if not stored:
            return run
        return run.select(i for i, t in enumerate(run.ts) if t not in stored)

    def _stage(self, series_id: int, run: Run) -> int:
        if run.ts:
            self._rows.append(chunk_row(series_id, run))
        return len(run.ts)

    def flush(self) -> None:
        """Insert what is staged (inside the caller's transaction)."""
        if self._rows:
            self._conn.executemany(_INSERT, self._rows)
            self._rows.clear()


# --- reading ------------------------------------------------------------------------------


def read_range(conn: sqlite3.Connection, series_id: int, start_ns: int, end_ns: int) -> Run:
    """The series' samples with ``start_ns <= ts < end_ns``, in time order."""
    start_ns, end_ns = _i64(start_ns), _i64(end_ns)
    if end_ns <= start_ns:
        return Run([], [])
    bounds = (series_id, start_ns, _window_end(end_ns - 1), end_ns - 1)
    bulk = _read_bulk(conn, bounds)
    if bulk is not None:
        return bulk.between(start_ns, end_ns)
    rows = conn.execute(_OVERLAPPING, bounds).fetchall()
    return _merge([_row_run(r[1], r[2], r[3]).between(start_ns, end_ns) for r in rows])


# The chunks of _OVERLAPPING with their arrays' headers cut off by SQLite (MessagePack's
# shortest header, as the encoder writes it: 1 byte up to 15 elements, 3 up to 65,535, else
# 5), so that many chunks decode as one array; only when every sample is good.
_BODY = "CASE WHEN n < 16 THEN 2 WHEN n < 65536 THEN 4 ELSE 6 END"
_OVERLAPPING_BODIES = (
    f"SELECT n, substr(ts, {_BODY}), substr(vals, {_BODY}), qualities IS NULL "
    "FROM sample_chunks WHERE series_id = ? AND ts_last >= ? AND ts_last < ? "
    "AND ts_first <= ? ORDER BY ts_first"
)


def _read_bulk(conn: sqlite3.Connection, bounds: tuple[int, int, int, int]) -> Run | None:
    """The chunks of ``bounds`` decoded as one array each for times and values, when all
    their samples are good and they do not overlap in time (the common case); else None."""
    rows = conn.execute(_OVERLAPPING_BODIES, bounds).fetchall()
    if len(rows) < 2 or not all([r[3] for r in rows]):
        return None
    counts = [r[0] for r in rows]
    ts = _decode_bodies(counts, [r[1] for r in rows], _decode_ts)
    if ts is None or ts != sorted(ts):
        return None
    values = _decode_bodies(counts, [r[2] for r in rows], _decode_values)
    return None if values is None else Run(ts, values)


def _decode_bodies(counts: list[int], bodies: list[bytes], decode: Any) -> list[Any] | None:
    """Header-less MessagePack array bodies of ``counts`` elements each -> one list, or None
    when they do not decode to exactly that many elements (a header of another size)."""
    total = sum(counts)
    if total < 16:
        header = bytes((0x90 | total,))
    elif total < 2**16:
        header = b"\xdc" + total.to_bytes(2, "big")
    else:
        header = b"\xdd" + total.to_bytes(4, "big")
    try:
        out: list[Any] = decode(header + b"".join(bodies))
    except msgspec.DecodeError:
        return None
    return out if len(out) == total else None


def read_all(conn: sqlite3.Connection, series_id: int) -> Run:
    """Every sample of the series, in time order (for exports and checks; use
    :func:`read_range` for bounded reads)."""
    rows = conn.execute(
        "SELECT ts, vals, qualities FROM sample_chunks WHERE series_id = ? ORDER BY ts_first",
        (series_id,),
    ).fetchall()
    return _merge([_row_run(*r) for r in rows])


def read_times(conn: sqlite3.Connection, series_id: int, start_ns: int, end_ns: int) -> list[int]:
    """Only the times of :func:`read_range` (the values are not decoded)."""
    start_ns, end_ns = _i64(start_ns), _i64(end_ns)
    if end_ns <= start_ns:
        return []
    where = "WHERE series_id = ? AND ts_last >= ? AND ts_last < ? AND ts_first < ?"
    bounds = (series_id, start_ns, _window_end(end_ns - 1), end_ns)
    rows = conn.execute(
        f"SELECT n, substr(ts, {_BODY}) FROM sample_chunks {where}", bounds
    ).fetchall()
    if not rows:
        return []
    ts = _decode_bodies([r[0] for r in rows], [r[1] for r in rows], _decode_ts)
    if ts is None:  # a header of another size: one chunk at a time
        blobs = conn.execute(f"SELECT ts FROM sample_chunks {where}", bounds).fetchall()
        ts = [t for (blob,) in blobs for t in decode_ts(blob)]
    ts.sort()
    return ts[bisect_left(ts, start_ns) : bisect_left(ts, end_ns)]


def windows_before(conn: sqlite3.Connection, series_id: int, before_ns: int) -> Iterator[Run]:
    """The series' samples before ``before_ns``, one window at a time, newest window first
    (each run in time order)."""
    before_ns = _i64(before_ns)
    hi = before_ns
    while True:
        row = conn.execute(
            "SELECT ts_first FROM sample_chunks WHERE series_id = ? AND ts_last < ? "
            "AND ts_first < ? ORDER BY ts_last DESC LIMIT 1",
            (series_id, _window_end(hi - 1), hi),
        ).fetchone()
        if row is None:
            return
        w = window_of(int(row[0]))
        run = read_range(conn, series_id, w, hi)
        if run.ts:
            yield run
        hi = w


def windows_from(conn: sqlite3.Connection, series_id: int, from_ns: int) -> Iterator[Run]:
    """The series' samples at or after ``from_ns``, one window at a time, oldest first."""
    from_ns = _i64(from_ns)
    lo = from_ns
    while True:
        row = conn.execute(
            "SELECT ts_first FROM sample_chunks WHERE series_id = ? AND ts_last >= ? "
            "ORDER BY ts_last LIMIT 1",
            (series_id, lo),
        ).fetchone()
        if row is None:
            return
        w = window_of(int(row[0]))
        run = read_range(conn, series_id, max(lo, w), w + CHUNK_NS)
        if run.ts:
            yield run
        lo = w + CHUNK_NS


def latest_before(conn: sqlite3.Connection, series_id: int, before_ns: int) -> int | None:
    """The newest sample time of the series before ``before_ns``."""
    for run in windows_before(conn, series_id, before_ns):
        return run.ts[-1]
    return None


def next_time(conn: sqlite3.Connection, series_id: int, from_ns: int) -> int | None:
    """The oldest sample time of the series at or after ``from_ns``."""
    for run in windows_from(conn, series_id, from_ns):
        return run.ts[0]
    return None


def _edge_counts(
    conn: sqlite3.Connection, marks: str, ids: Sequence[int], start_ns: int, end_ns: int
) -> Iterator[tuple[int, int]]:
    """(window, samples in range) of each chunk cut by ``start_ns`` or ``end_ns`` (such a
    chunk lies in the window of ``start_ns`` or of ``end_ns - 1``: two short index ranges)."""
    rows = conn.execute(
        f"SELECT ts_first, ts FROM sample_chunks WHERE series_id IN ({marks}) "
        "AND ts_last >= ? AND ts_last < ? AND ts_first < ? "
        "UNION ALL "
        f"SELECT ts_first, ts FROM sample_chunks WHERE series_id IN ({marks}) "
        "AND ts_last >= ? AND ts_last < ? AND ts_first < ? AND ts_first >= ?",
        (
            *ids,
            start_ns,
            _window_end(start_ns),
            start_ns,
            *ids,
            end_ns,
            _window_end(end_ns - 1),
            end_ns,
            start_ns,
        ),
    )
    for first, blob in rows:
        ts = decode_ts(blob)
        yield window_of(first), bisect_left(ts, end_ns) - bisect_left(ts, start_ns)


def _inside(marks: str) -> str:
    """WHERE clause of the chunks of the given series wholly inside [start, end)."""
    return f"series_id IN ({marks}) AND ts_last >= ? AND ts_last < ? AND ts_first >= ?"


def window_counts(
    conn: sqlite3.Connection, series_ids: Sequence[int], start_ns: int, end_ns: int
) -> dict[int, int]:
    """Window start -> samples of the given series with ``start_ns <= ts < end_ns``.

    Chunks wholly inside the range are summed by SQLite; only the chunks cut by
    ``start_ns`` or ``end_ns`` have their times decoded.
    """
    start_ns, end_ns = _i64(start_ns), _i64(end_ns)
    if not series_ids or end_ns <= start_ns:
        return {}
    marks = ",".join("?" * len(series_ids))
    counts: dict[int, int] = dict(
        conn.execute(
            f"SELECT ts_first / {CHUNK_NS} * {CHUNK_NS}, SUM(n) FROM sample_chunks "
            f"WHERE {_inside(marks)} GROUP BY 1",
            (*series_ids, start_ns, end_ns, start_ns),
        )
    )
    for w, n in _edge_counts(conn, marks, series_ids, start_ns, end_ns):
        if n:
            counts[w] = counts.get(w, 0) + n
    return counts


FINGERPRINT_MODULUS = 1_000_003


def counts_fingerprint(counts: dict[int, int]) -> tuple[int, int]:
    """:func:`count_fingerprint` from per-window counts (window start -> samples), for a
    store that counts per window itself."""
    checksum = sum(n * ((w // CHUNK_NS) % FINGERPRINT_MODULUS) for w, n in counts.items())
    return (sum(counts.values()), checksum)


def count_fingerprint(
    conn: sqlite3.Connection, series_ids: Sequence[int], start_ns: int, end_ns: int
) -> tuple[int, int]:
    """(samples, sum over windows of samples x (window number mod FINGERPRINT_MODULUS)) of
    the given series in ``[start_ns, end_ns)``: what :func:`window_counts` gives, in two
    numbers computed by SQLite."""
    start_ns, end_ns = _i64(start_ns), _i64(end_ns)
    if not series_ids or end_ns <= start_ns:
        return (0, 0)
    marks = ",".join("?" * len(series_ids))
    total, checksum = conn.execute(
        f"SELECT COALESCE(SUM(n), 0), "
        f"COALESCE(SUM(n * ((ts_first / {CHUNK_NS}) % {FINGERPRINT_MODULUS})), 0) "
        f"FROM sample_chunks WHERE {_inside(marks)}",
        (*series_ids, start_ns, end_ns, start_ns),
    ).fetchone()
    for w, n in _edge_counts(conn, marks, series_ids, start_ns, end_ns):
        total += n
        checksum += n * ((w // CHUNK_NS) % FINGERPRINT_MODULUS)
    return (int(total), int(checksum))


def rewrite_range(
    conn: sqlite3.Connection, series_id: int, lo: int, hi: int, keep: Run
) -> tuple[int, int]:
    """Replace the samples of ``[lo, hi)`` by ``keep`` (in time order, inside ``[lo, hi)``),
    leaving samples outside the range as they are; one chunk per window afterwards.
    Returns (samples before, samples after) in the range. Runs in the caller's transaction."""
    if hi <= lo:
        return (0, 0)
    rows = conn.execute(_OVERLAPPING, (series_id, lo, _window_end(hi - 1), hi - 1)).fetchall()
    if not rows:
        return (0, len(keep.ts))
    merged = _merge([_row_run(r[1], r[2], r[3]) for r in rows])
    i, j = bisect_left(merged.ts, lo), bisect_left(merged.ts, hi)
    combined = _merge([r for r in (merged.slice(0, i), keep, merged.slice(j, len(merged))) if r.ts])
    conn.executemany("DELETE FROM sample_chunks WHERE id = ?", [(r[0],) for r in rows])
    conn.executemany(_INSERT, [chunk_row(series_id, part) for part in split_windows(combined)])
    return (j - i, len(keep.ts))


def split_windows(run: Run) -> Iterator[Run]:
    """A run in time order -> one run per chunk window."""
    ts, k = run.ts, 0
    while k < len(ts):
        end = bisect_left(ts, _window_end(ts[k]))
        yield run.slice(k, end)
        k = end


def chunk_row(series_id: int, run: Run) -> tuple[int, int, int, int, bytes, bytes, bytes | None]:
    """The ``sample_chunks`` row of a non-empty run inside one window (without its id)."""
    q = run.qualities
    return (
        series_id,
        run.ts[0],
        run.ts[-1],
        len(run.ts),
        encode_ts(run.ts),
        encode_values(run.values),
        None if q is None or not any(q) else bytes(q),
    )
