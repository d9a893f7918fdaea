"""The KPI bucket table: per (machine, 15-minute bucket) OEE components and ratios in SQLite.

It lives in its own file next to the sample store (``karkhana.kpi.sqlite`` beside
``karkhana.sqlite``): the gateway owns the samples schema, the services own this one. Grafana
reads it as the KPI time series (``docs/storage.md``). Columns follow ``OeeComponents``
generically: a number field is one column, a mapping field one column per key
(``down_s__idle``), a set field (``flags``) one comma-separated text column. When the fields
of ``OeeComponents`` change, the table is rebuilt (it is a cache of values computed from raw
data; nothing is lost).

Late data: each row records the span of raw data its value rests on (``dep_first_ns`` ..
``dep_last_ns``, widened to whole buckets) and how many samples of the machine that span held
when it was computed (``dep_count``): the "computed from data up to" marker. Before buckets
are used, ``refresh`` counts the samples again; a row whose count changed, or that is marked
``open`` (a stop event was in progress at the end of the data), is recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate, repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from karkhana.config.factory import MachineRef
from karkhana.errors import StoreError
from karkhana.models import to_ns, utc_now
from karkhana.storage.influx_schema import escape_tag, field_string
from karkhana.storage.sqlite_chunks import (
    CHUNK_NS,
    count_fingerprint,
    counts_fingerprint,
    window_counts,
)
from services.kpi import OeeComponents, compute_ratios
from services.kpi.arrays import SiteCalendars
from services.kpi.buckets import (
    BUCKET_NS,
    BucketBatch,
    BucketResult,
    bucket_batch,
    floor_bucket,
)
from services.kpi.source import SampleSource
from services.kpi.sweep import BoolArray, FloatArray, IntArray

logger = logging.getLogger(__name__)

TABLE = "kpi_buckets"
HOURS = "kpi_hours"
HOUR_NS = 3600 * 1_000_000_000
RATIOS = ("availability", "performance", "quality", "oee")
_SEP = "__"


# --- generic (de)flattening of OeeComponents -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    numbers: tuple[str, ...]
    mappings: tuple[str, ...]
    sets: tuple[str, ...]

    @property
    def signature(self) -> str:
        text = f"{self.numbers}|{self.mappings}|{self.sets}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layout() -> _Layout:
    zero = OeeComponents()
    numbers, mappings, sets = [], [], []
    for f in fields(OeeComponents):
        value = getattr(zero, f.name)
        if isinstance(value, Mapping):
            mappings.append(f.name)
        elif isinstance(value, frozenset | set):
            sets.append(f.name)
        else:
            numbers.append(f.name)
    return _Layout(tuple(numbers), tuple(mappings), tuple(sets))


def flatten(c: OeeComponents, layout: _Layout) -> dict[str, float]:
    """Numeric columns of ``c``: ``field`` or ``field__key`` for mapping fields."""
    out = {name: float(getattr(c, name)) for name in layout.numbers}
    for name in layout.mappings:
        for key, value in getattr(c, name).items():
            out[f"{name}{_SEP}{key}"] = float(value)
    return out


def unflatten(
    numbers: Mapping[str, float], sets: Mapping[str, Iterable[str]], layout: _Layout
) -> OeeComponents:
    return _Unflattener(list(numbers), layout)(list(numbers.values()), sets)


class _Unflattener:
    """Builds ``OeeComponents`` from rows of a fixed column list (resolved once)."""

    def __init__(self, columns: Sequence[str], layout: _Layout) -> None:
        self.layout = layout
        zero = OeeComponents()
        self.plain = [(i, c) for i, c in enumerate(columns) if c in layout.numbers]
        self.keyed: dict[str, list[tuple[int, str]]] = {}
        self.zero_maps = {m: dict(getattr(zero, m)) for m in layout.mappings}
        for i, col in enumerate(columns):
            name, sep, key = col.partition(_SEP)
            if sep and name in self.zero_maps:
                self.keyed.setdefault(name, []).append((i, key))

    def __call__(self, values: Sequence[float], sets: Mapping[str, Iterable[str]]) -> OeeComponents:
        kwargs: dict[str, Any] = {c: values[i] for i, c in self.plain}
        for name, zero in self.zero_maps.items():
            mapping = dict(zero)
            for i, key in self.keyed.get(name, ()):
                mapping[key] = values[i]
            kwargs[name] = MappingProxyType(mapping)
        for name in self.layout.sets:
            kwargs[name] = frozenset(x for x in sets.get(name, ()) if x)
        return OeeComponents(**kwargs)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(batch: BucketBatch, layout: _Layout) -> tuple[dict[str, FloatArray], list[list[str]]]:
    """The numeric columns (``flatten`` names) and the set columns (comma-separated text,
    in ``layout.sets`` order) of every bucket of ``batch``."""
    count = batch.count
    swept = batch.columns
    if swept is not None and layout.sets == ("flags",):
        numbers = swept.flat()
        if set(layout.numbers) <= numbers.keys():
            sets = [[",".join(sorted(f)) if f else "" for f in swept.flags]]
            for k, r in batch.results.items():
                flat = flatten(r.components, layout)
                for name in flat.keys() - numbers.keys():
                    numbers[name] = np.zeros(count)
                for name, column in numbers.items():
                    column[k] = flat.get(name, 0.0)
                sets[0][k] = ",".join(sorted(r.components.flags))
            return numbers, sets
    # Components the sweep does not know: flatten each bucket.
    results = batch.as_results()
    flats = [flatten(r.components, layout) for r in results]
    names = list(dict.fromkeys(k for f in flats for k in f))
    numbers = {n: np.array([f.get(n, 0.0) for f in flats], dtype=np.float64) for n in names}
    return numbers, [
        [",".join(sorted(getattr(r.components, s))) for r in results] for s in layout.sets
    ]


def _ratio_columns(
    numbers: Mapping[str, Sequence[float] | FloatArray],
) -> list[list[float | None]]:
    """Availability, performance, quality and OEE (``RATIOS``) of every bucket, computed as
    ``compute_ratios`` computes them from the bucket's components (None: zero denominator)."""
    planned, run, ideal, good, total = (
        np.asarray(numbers[n], dtype=np.float64)
        for n in ("planned_s", "run_s", "ideal_s", "good", "total")
    )

    def ratio(top: FloatArray, bottom: FloatArray) -> tuple[FloatArray, BoolArray]:
        defined = bottom > 0
        return np.divide(top, bottom, out=np.zeros(len(top)), where=defined), defined

    a, has_a = ratio(run, planned)
    p, has_p = ratio(ideal, run)
    p = np.minimum(p, 1.0)
    q, has_q = ratio(good, total)
    out = []
    for values, defined in ((a, has_a), (p, has_p), (q, has_q), (a * p * q, has_a & has_p & has_q)):
        column: list[float | None] = values.tolist()
        for k in np.flatnonzero(~defined).tolist():
            column[k] = None
        out.append(column)
    return out


_T = TypeVar("_T")
# A chunk window must be one KPI bucket for ``SampleCounter.counts`` to be per bucket.
if CHUNK_NS != BUCKET_NS:
    raise RuntimeError("the sample store's chunk window must equal the KPI bucket")

# --- counting raw samples ----------------------------------------------------------------------


class SampleCounter:
    """Samples per machine and bucket, read from the SQLite sample store."""

    def __init__(self, db: Path | None) -> None:
        """``db`` None (or a file that does not exist yet) counts nothing."""
        self._conn: sqlite3.Connection | None = None
        if db is not None and db.exists():
            try:
                self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                self._conn.execute("PRAGMA busy_timeout = 5000")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite store {db}: {exc}") from exc
        self._ids: dict[str, list[int]] = {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _series_ids(self, asset: str) -> list[int]:
        conn = self._conn
        if conn is None:
            return []
        if asset not in self._ids:
            none: list[tuple[int]] = []
            rows = self._read(
                lambda: conn.execute("SELECT id FROM series WHERE asset = ?", (asset,)).fetchall(),
                none,
            )
            self._ids[asset] = [int(r[0]) for r in rows]
        return self._ids[asset]

    def fingerprint(self, asset: str, start_ns: int, end_ns: int) -> tuple[int, int]:
        """(samples, a checksum of their counts per bucket) of ``asset`` in
        ``[start_ns, end_ns)``. The store only adds samples (a repeated time is dropped) or
        removes them (retention), so the counts per bucket, weighted by the bucket's
        position, change whenever the data does; rewriting chunks without changing their
        samples (compaction) leaves it as it was."""
        ids = self._series_ids(asset)
        if self._conn is None or not ids:
            return (0, 0)
        conn = self._conn
        return self._read(lambda: count_fingerprint(conn, ids, start_ns, end_ns), (0, 0))

    def counts(self, asset: str, start_ns: int, end_ns: int) -> dict[int, int]:
        """Bucket start -> samples (all signals of ``asset``) in ``[start_ns, end_ns)``."""
        ids = self._series_ids(asset)
        if self._conn is None or not ids:
            return {}
        conn = self._conn
        # A chunk lies inside one chunk window, and a window is one bucket.
        none: dict[int, int] = {}
        return self._read(lambda: window_counts(conn, ids, start_ns, end_ns), none)

    def _read(self, read: Callable[[], _T], empty: _T) -> _T:
        try:
            return read()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return empty
            raise StoreError(f"reading the SQLite store failed: {exc}") from exc


class _Prefix:
    """Sample counts over whole-bucket spans, from per-bucket counts."""

    def __init__(self, counts: Mapping[int, int], start_ns: int, end_ns: int) -> None:
        self.start_ns = start_ns
        per = [counts.get(b, 0) for b in range(start_ns, end_ns, BUCKET_NS)]
        self._cum = [0, *accumulate(per)]

    def span(self, first_ns: int, last_ns: int) -> int:
        """Samples in the buckets from the one holding ``first_ns`` to the one holding
        ``last_ns``, both included."""
        i = (floor_bucket(first_ns) - self.start_ns) // BUCKET_NS
        j = (floor_bucket(last_ns) - self.start_ns) // BUCKET_NS + 1
        return self._cum[j] - self._cum[i]

    def spans(self, first_ns: IntArray, last_ns: IntArray) -> IntArray:
        """``span`` of each pair."""
        cum = np.array(self._cum, dtype=np.int64)
        i = (first_ns - self.start_ns) // BUCKET_NS
        j = (last_ns - self.start_ns) // BUCKET_NS + 1
        return np.asarray(cum[j] - cum[i], dtype=np.int64)


# --- the bucket table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
    lo_ns: int
    hi_ns: int
    fingerprint: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class _Marker:
    dep_first_ns: int
    dep_last_ns: int
    dep_count: int
    open: bool


class KpiStore:
    """The bucket table of one KPI file. ``open`` creates it; one instance per unit of work."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self.layout = _layout()
        self._columns: list[str] = []
        self._ensure_schema()

    @classmethod
    def open(cls, path: str | Path) -> KpiStore:
        p = Path(path)
        try:
            if str(p) != ":memory:":
                p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(p), check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 10000")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the KPI bucket store {p}: {exc}") from exc
        return cls(p, conn)

    def close(self) -> None:
        self._conn.close()

    def _ensure_schema(self) -> None:
        c = self._conn
        c.execute("CREATE TABLE IF NOT EXISTS kpi_meta (key TEXT PRIMARY KEY, value TEXT)")
        # Per machine and window asked for: the raw-data span its buckets rest on and that
        # span's sample fingerprint when it was last checked (see ``refresh``).
        c.execute(
            "CREATE TABLE IF NOT EXISTS kpi_checks (machine TEXT NOT NULL, "
            "start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, lo_ns INTEGER NOT NULL, "
            "hi_ns INTEGER NOT NULL, n INTEGER, checksum INTEGER, "
            "PRIMARY KEY (machine, start_ns, end_ns)) WITHOUT ROWID"
        )
        row = c.execute("SELECT value FROM kpi_meta WHERE key = 'layout'").fetchone()
        if row is None or row[0] != self.layout.signature:
            # The components changed shape: the cached buckets are stale, rebuild them.
            c.execute(f"DROP TABLE IF EXISTS {TABLE}")
            c.execute(f"DROP TABLE IF EXISTS {HOURS}")
            c.execute("DELETE FROM kpi_checks")
        numeric = flatten(OeeComponents(), self.layout)
        cols = [f"{_q(n)} REAL NOT NULL DEFAULT 0" for n in numeric]
        cols += [f"{_q(n)} REAL" for n in RATIOS]
        cols += [f"{_q(n)} TEXT NOT NULL DEFAULT ''" for n in self.layout.sets]
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (machine TEXT NOT NULL, "
            "start_ns INTEGER NOT NULL, open INTEGER NOT NULL, dep_first_ns INTEGER NOT NULL, "
            "dep_last_ns INTEGER NOT NULL, dep_count INTEGER NOT NULL, "
            f"computed_ns INTEGER NOT NULL, {', '.join(cols)}, "
            "PRIMARY KEY (machine, start_ns)) WITHOUT ROWID"
        )
        # A covering index for the late-data checks, which read no components.
        c.execute(
            f"CREATE INDEX IF NOT EXISTS {TABLE}_marks ON {TABLE} "
            "(machine, start_ns, open, dep_first_ns, dep_last_ns, dep_count)"
        )
        # Sums of the buckets of each UTC hour, kept with them: a month's report reads a
        # quarter of the rows. Whole hours inside a period come from here.
        hour_cols = [f"{_q(n)} REAL NOT NULL DEFAULT 0" for n in numeric]
        hour_cols += [f"{_q(n)} TEXT" for n in self.layout.sets]
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {HOURS} (machine TEXT NOT NULL, "
            f"start_ns INTEGER NOT NULL, buckets INTEGER NOT NULL, {', '.join(hour_cols)}, "
            "PRIMARY KEY (machine, start_ns)) WITHOUT ROWID"
        )
        c.execute(
            "INSERT OR REPLACE INTO kpi_meta (key, value) VALUES ('layout', ?)",
            (self.layout.signature,),
        )
        c.commit()
        self._columns = [r[1] for r in c.execute(f"PRAGMA table_info({TABLE})")]

    def _number_columns(self) -> list[str]:
        fixed = {"machine", "start_ns", "open", "dep_first_ns", "dep_last_ns", "dep_count"}
        fixed |= {"computed_ns", *RATIOS, *self.layout.sets}
        return [c for c in self._columns if c not in fixed]

    def _add_columns(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._columns:
                # A mapping key seen for the first time: 0 in every older row is right.
                for table in (TABLE, HOURS):
                    self._conn.execute(
                        f"ALTER TABLE {table} ADD COLUMN {_q(name)} REAL NOT NULL DEFAULT 0"
                    )
                self._columns.append(name)

    def markers(self, machine: str, start_ns: int, end_ns: int) -> dict[int, _Marker]:
        rows = self._conn.execute(
            f"SELECT start_ns, dep_first_ns, dep_last_ns, dep_count, open FROM {TABLE} "
            "WHERE machine = ? AND start_ns >= ? AND start_ns < ?",
            (machine, start_ns, end_ns),
        ).fetchall()
        return {r[0]: _Marker(r[1], r[2], r[3], bool(r[4])) for r in rows}

    def write(
        self, machine: str, batch: BucketBatch, counts: _Prefix, reopen: bool = False
    ) -> None:
        """Store the buckets of ``batch`` with their late-data markers and update the hours
        they fall in. ``reopen``: mark every bucket open (checked again next time)."""
        if not batch.count:
            return
        numbers, sets = _table(batch, self.layout)
        names = list(numbers)
        self._add_columns(names)
        count, start_ns = batch.count, batch.start_ns
        end_ns = start_ns + count * BUCKET_NS
        first, last, is_open = batch.dep_arrays()
        starts = start_ns + np.arange(count, dtype=np.int64) * BUCKET_NS
        spans = counts.spans(first - first % BUCKET_NS, last - last % BUCKET_NS)
        # Plain Python values: sqlite3 binds them directly (numpy scalars go through
        # adaptation, several times slower).
        columns: list[list[Any]] = [
            starts.tolist(),
            (is_open | reopen).astype(np.int64).tolist(),
            first.tolist(),
            last.tolist(),
            spans.tolist(),
        ]
        # A column that is zero (NULL, empty) in every row is left to its default: fewer
        # values to bind, the same rows.
        ratios = _ratio_columns(numbers)
        numeric = [np.asarray(numbers[n], dtype=np.float64) for n in names]
        written = [i for i, c in enumerate(numeric) if c.any()]
        names = [names[i] for i in written]
        numeric = [numeric[i] for i in written]
        columns += [c.tolist() for c in numeric]
        ratio_names = [n for n, c in zip(RATIOS, ratios, strict=True) if c.count(None) < count]
        columns += [c for c in ratios if c.count(None) < count]
        set_names = [n for n, c in zip(self.layout.sets, sets, strict=True) if any(c)]
        sets = [c for c in sets if any(c)]
        columns += sets
        now = to_ns(utc_now())
        rows = zip(repeat(machine), *columns[:5], repeat(now), *columns[5:], strict=False)
        head = ["machine", "start_ns", "open", "dep_first_ns", "dep_last_ns", "dep_count"]
        head += ["computed_ns", *names, *ratio_names, *set_names]
        sql = (
            f"INSERT OR REPLACE INTO {TABLE} ({', '.join(map(_q, head))}) "
            f"VALUES ({', '.join('?' * len(head))})"
        )
        self._conn.executemany(sql, rows)
        # Whole hours inside the batch are summed from its columns; the hours it shares
        # with buckets stored before are summed by SQLite.
        h_lo = -((-start_ns) // HOUR_NS) * HOUR_NS
        h_hi = max(end_ns - end_ns % HOUR_NS, h_lo)
        if h_lo > start_ns:
            self._sum_hours(machine, start_ns, min(h_lo, end_ns))
        if h_hi < end_ns and h_hi >= h_lo:
            self._sum_hours(machine, max(h_hi, start_ns), end_ns)
        if h_hi > h_lo:
            offset = (h_lo - start_ns) // BUCKET_NS
            self._write_hours(machine, names, numeric, set_names, sets, offset, h_lo, h_hi)
        self._conn.commit()

    def _write_hours(
        self,
        machine: str,
        names: Sequence[str],
        numeric: Sequence[FloatArray],
        set_names: Sequence[str],
        sets: Sequence[Sequence[str]],
        offset: int,
        h_lo: int,
        h_hi: int,
    ) -> None:
        """The hour rows of ``[h_lo, h_hi)`` (whole hours) from the bucket columns, bucket
        ``offset`` being the first of ``h_lo``: what ``_sum_hours`` gives for them."""
        per = HOUR_NS // BUCKET_NS
        hours = (h_hi - h_lo) // HOUR_NS
        cut = slice(offset, offset + hours * per)
        # Added in bucket order, as SQLite's SUM adds them.
        sums: list[list[float]] = []
        for column in numeric:
            part = column[cut].reshape(hours, per)
            total = part[:, 0].copy()
            for i in range(1, per):
                total += part[:, i]
            sums.append(total.tolist())
        texts: list[list[str | None]] = []
        for column_text in sets:
            part_text = column_text[cut]
            joined: list[str | None] = []
            for h in range(hours):
                found = dict.fromkeys(x for x in part_text[h * per : (h + 1) * per] if x)
                joined.append(",".join(found) if found else None)
            texts.append(joined)
        starts = (h_lo + np.arange(hours, dtype=np.int64) * HOUR_NS).tolist()
        head = ["machine", "start_ns", "buckets", *names, *set_names]
        self._conn.execute(
            f"DELETE FROM {HOURS} WHERE machine = ? AND start_ns >= ? AND start_ns < ?",
            (machine, h_lo, h_hi),
        )
        self._conn.executemany(
            f"INSERT INTO {HOURS} ({', '.join(map(_q, head))}) "
            f"VALUES ({', '.join('?' * len(head))})",
            zip(repeat(machine), starts, repeat(per), *sums, *texts, strict=False),
        )

    def _sum_hours(self, machine: str, start_ns: int, end_ns: int) -> None:
        """Recompute the hour rows of ``machine`` overlapping ``[start_ns, end_ns)``."""
        lo, hi = start_ns - start_ns % HOUR_NS, -((-end_ns) // HOUR_NS) * HOUR_NS
        numbers = self._number_columns()
        names = ", ".join(_q(n) for n in [*numbers, *self.layout.sets])
        sums = [f"SUM({_q(n)})" for n in numbers]
        sums += [f"GROUP_CONCAT(DISTINCT NULLIF({_q(s)}, ''))" for s in self.layout.sets]
        self._conn.execute(
            f"DELETE FROM {HOURS} WHERE machine = ? AND start_ns >= ? AND start_ns < ?",
            (machine, lo, hi),
        )
        self._conn.execute(
            f"INSERT INTO {HOURS} (machine, start_ns, buckets, {names}) "
            f"SELECT machine, start_ns - start_ns % {HOUR_NS}, COUNT(*), {', '.join(sums)} "
            f"FROM {TABLE} WHERE machine = ? AND start_ns >= ? AND start_ns < ? GROUP BY 2",
            (machine, lo, hi),
        )

    def check(self, machine: str, start_ns: int, end_ns: int) -> _Check | None:
        row = self._conn.execute(
            "SELECT lo_ns, hi_ns, n, checksum FROM kpi_checks "
            "WHERE machine = ? AND start_ns = ? AND end_ns = ?",
            (machine, start_ns, end_ns),
        ).fetchone()
        if row is None:
            return None
        fingerprint = (row[2], row[3]) if row[2] is not None else None
        return _Check(row[0], row[1], fingerprint)

    def set_check(self, machine: str, start_ns: int, end_ns: int, check: _Check) -> None:
        n, checksum = check.fingerprint if check.fingerprint is not None else (None, None)
        self._conn.execute(
            "INSERT OR REPLACE INTO kpi_checks VALUES (?, ?, ?, ?, ?, ?, ?)",
            (machine, start_ns, end_ns, check.lo_ns, check.hi_ns, n, checksum),
        )
        self._conn.commit()

    def settled(self, machine: str, start_ns: int, end_ns: int) -> tuple[bool, int, int]:
        """Whether every bucket of the window is stored and not open, and the whole-bucket
        span of raw data the window's buckets rest on."""
        n, opened, lo, hi = self._conn.execute(
            f"SELECT COUNT(*), TOTAL(open), MIN(dep_first_ns), MAX(dep_last_ns) FROM {TABLE} "
            "WHERE machine = ? AND start_ns >= ? AND start_ns < ?",
            (machine, start_ns, end_ns),
        ).fetchone()
        complete = n == (end_ns - start_ns) // BUCKET_NS and opened == 0
        lo = min(start_ns, floor_bucket(lo)) if lo is not None else start_ns
        hi = max(end_ns, floor_bucket(hi) + BUCKET_NS) if hi is not None else end_ns
        return complete, lo, hi

    def sums(
        self, machines: Sequence[str], periods: Sequence[tuple[int, int]]
    ) -> dict[tuple[str, int], OeeComponents]:
        """(machine, period index) -> summed components of the machine's buckets whose
        start lies in the period ``[start_ns, end_ns)``; the summing happens in SQLite."""
        if not machines or not periods:
            return {}
        numbers = self._number_columns()
        c = self._conn
        # Whole hours of a period come from the hour table, its other buckets from the
        # bucket table: start -> period index maps, so the sums are equality joins.
        hours: list[tuple[int, int]] = []
        parts: list[tuple[int, int]] = []
        for i, (a, z) in enumerate(periods):
            ha, hz = -((-a) // HOUR_NS) * HOUR_NS, z - z % HOUR_NS
            if ha >= hz:
                parts += [(i, b) for b in range(a, z, BUCKET_NS)]
                continue
            hours += [(i, h) for h in range(ha, hz, HOUR_NS)]
            parts += [(i, b) for b in range(a, ha, BUCKET_NS)]
            parts += [(i, b) for b in range(hz, z, BUCKET_NS)]
        c.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _sum_machines (pos INTEGER PRIMARY KEY, machine)"
        )
        c.execute("DELETE FROM _sum_machines")
        c.executemany("INSERT INTO _sum_machines VALUES (?, ?)", list(enumerate(machines)))
        # Machines, then periods, then starts in key order: the rows arrive grouped, so
        # SQLite sums them as they come instead of sorting them first.
        select = [f"SUM(k.{_q(n)})" for n in numbers]
        select += [f"GROUP_CONCAT(DISTINCT k.{_q(s)})" for s in self.layout.sets]
        found: dict[tuple[str, int], list[Any]] = {}
        n = len(numbers)
        for table, map_table, starts in (
            (HOURS, "_sum_hours", hours),
            (TABLE, "_sum_buckets", parts),
        ):
            if not starts:
                continue
            c.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {map_table} (idx INTEGER NOT NULL, "
                "start_ns INTEGER NOT NULL, PRIMARY KEY (idx, start_ns)) WITHOUT ROWID"
            )
            c.execute(f"DELETE FROM {map_table}")
            c.executemany(f"INSERT OR IGNORE INTO {map_table} VALUES (?, ?)", starts)
            rows = c.execute(
                f"SELECT mm.machine, m.idx, {', '.join(select)} FROM _sum_machines mm "
                f"CROSS JOIN {map_table} m CROSS JOIN {table} k "
                "WHERE k.machine = mm.machine AND k.start_ns = m.start_ns "
                "GROUP BY mm.pos, m.idx"
            ).fetchall()
            for row in rows:
                key = (row[0], row[1])
                values = list(row[2:])
                seen = found.get(key)
                if seen is None:
                    found[key] = values
                    continue
                # Whole hours and loose buckets of one period: add the two sums.
                for i in range(n):
                    seen[i] = (seen[i] or 0.0) + (values[i] or 0.0)
                for i in range(n, len(values)):
                    seen[i] = ",".join(x for x in (seen[i], values[i]) if x)
        build = _Unflattener(numbers, self.layout)
        out: dict[tuple[str, int], OeeComponents] = {}
        for key, values in found.items():
            sets = {s: (values[n + i] or "").split(",") for i, s in enumerate(self.layout.sets)}
            out[key] = build(values[:n], sets)
        return out


# --- keeping buckets current ----------------------------------------------------------------


@dataclass(slots=True)
class RefreshStats:
    """What a refresh did: buckets recomputed and buckets found stale by late data."""

    recomputed: int = 0
    late: int = 0


def _dirty(
    markers: Mapping[int, _Marker], counter: SampleCounter, asset: str, start_ns: int, end_ns: int
) -> tuple[list[int], int]:
    """Buckets of ``[start_ns, end_ns)`` to recompute, and how many of them are stale
    because their raw data changed (late data)."""
    want = range(start_ns, end_ns, BUCKET_NS)
    stored = [m for b, m in markers.items() if not m.open]
    dirty = [b for b in want if b not in markers or markers[b].open]
    if not stored:
        return dirty, 0
    lo = min(start_ns, floor_bucket(min(m.dep_first_ns for m in stored)))
    hi = max(end_ns, floor_bucket(max(m.dep_last_ns for m in stored)) + BUCKET_NS)
    prefix = _Prefix(counter.counts(asset, lo, hi), lo, hi)
    late = [
        b
        for b, m in markers.items()
        if not m.open and prefix.span(m.dep_first_ns, m.dep_last_ns) != m.dep_count
    ]
    return sorted(set(dirty) | set(late)), len(late)


BucketSink = Callable[[MachineRef, Sequence[BucketResult]], None]
"""Receives every batch of recomputed buckets (e.g. to write the KPI series to InfluxDB)."""


def refresh(
    store: KpiStore,
    counter: SampleCounter,
    source: SampleSource,
    refs: Sequence[MachineRef],
    start_ns: int,
    end_ns: int,
    max_gap_s: float,
    sink: BucketSink | None = None,
) -> RefreshStats:
    """Make the buckets of ``refs`` over ``[start_ns, end_ns)`` (on the grid) current:
    compute missing and open ones, and recompute those whose raw data changed since.

    Fast path: when the window was checked before, one fingerprint of the raw samples in the
    span its buckets rest on (count and time checksum, taken *before* anything else is read,
    so data arriving meanwhile shows up next time) is compared with the stored one; when it
    is unchanged and every bucket is stored and settled, nothing is read per bucket.
    """
    stats = RefreshStats()
    calendars = SiteCalendars()
    for ref in refs:
        machine = ref.path
        check = store.check(machine, start_ns, end_ns)
        lo, hi = (check.lo_ns, check.hi_ns) if check else (start_ns, end_ns)
        fingerprint = counter.fingerprint(machine, lo, hi)
        unchanged = check is not None and check.fingerprint == fingerprint
        if unchanged and store.settled(machine, start_ns, end_ns)[0]:
            continue
        _refresh_machine(
            store,
            counter,
            source,
            ref,
            start_ns,
            end_ns,
            max_gap_s,
            stats,
            sink,
            taken=(lo, hi, fingerprint),
            calendars=calendars,
        )
        complete, span_lo, span_hi = store.settled(machine, start_ns, end_ns)
        covered = complete and lo <= span_lo and span_hi <= hi
        # Keep the fingerprint only when it covers every sample the buckets rest on.
        store.set_check(
            machine,
            start_ns,
            end_ns,
            _Check(span_lo, span_hi, fingerprint if covered and check is not None else None),
        )
    return stats


def _refresh_machine(
    store: KpiStore,
    counter: SampleCounter,
    source: SampleSource,
    ref: MachineRef,
    start_ns: int,
    end_ns: int,
    max_gap_s: float,
    stats: RefreshStats,
    sink: BucketSink | None,
    *,
    taken: tuple[int, int, tuple[int, int]] | None = None,
    calendars: SiteCalendars | None = None,
) -> None:
    """``taken``: a fingerprint taken just before, with its range; ``calendars``: planned
    intervals shared with the other machines of the refresh."""
    markers = store.markers(ref.path, start_ns, end_ns)
    dirty, late = _dirty(markers, counter, ref.path, start_ns, end_ns)
    if not dirty:
        return
    lo, hi = dirty[0], dirty[-1] + BUCKET_NS
    if taken is not None and taken[:2] == (lo, hi):
        before = taken[2]
    else:
        before = counter.fingerprint(ref.path, lo, hi)
    batch = bucket_batch(source, ref, lo, hi, max_gap_s, calendars)
    first_ns, last_ns, _ = batch.dep_arrays()
    first = int(first_ns.min()) if batch.count else lo
    last = int(last_ns.max()) if batch.count else lo
    c_lo, c_hi = floor_bucket(min(first, lo)), floor_bucket(max(last, hi - 1)) + BUCKET_NS
    counts = counter.counts(ref.path, c_lo, c_hi)
    # Samples arrived while computing: keep the values but check them next time. (The
    # counts were read after the computation; ``[lo, hi)`` is whole windows of them.)
    after = counts_fingerprint({w: n for w, n in counts.items() if lo <= w < hi})
    reopen = after != before
    store.write(ref.path, batch, _Prefix(counts, c_lo, c_hi), reopen)
    if sink is not None:
        results = batch.as_results()
        sink(ref, [_reopen(r) for r in results] if reopen else results)
    stats.recomputed += batch.count
    stats.late += late
    logger.debug("%s: recomputed %d bucket(s), %d after late data", ref.path, batch.count, late)


def _reopen(r: BucketResult) -> BucketResult:
    return BucketResult(r.start_ns, r.components, r.dep_first_ns, r.dep_last_ns, True)


# --- the KPI series in InfluxDB ---------------------------------------------------------------

KPI_MEASUREMENT = "kpi"


def kpi_lines(ref: MachineRef, results: Sequence[BucketResult]) -> list[str]:
    """Line protocol of the measurement ``kpi``, one point per bucket at its start time.

    Tags ``asset``, ``site``, ``area``, ``line``, ``machine``, ``bucket`` (``15m``); fields:
    the components as in the SQLite table (float), ``availability``, ``performance``,
    ``quality``, ``oee`` (only when defined), ``flags`` (string) and ``open`` (boolean). A
    recomputed bucket overwrites its point (same tags and time).
    """
    layout = _layout()
    site, area, line, machine = ref.path.split("/")
    tags = ",".join(
        f"{k}={escape_tag(v)}"
        for k, v in (
            ("asset", ref.path),
            ("site", site),
            ("area", area),
            ("line", line),
            ("machine", machine),
            ("bucket", f"{BUCKET_NS // 60_000_000_000}m"),
        )
    )
    out: list[str] = []
    for r in results:
        values = [f"{k}={float(v)!r}" for k, v in flatten(r.components, layout).items()]
        ratios = compute_ratios(r.components)
        values += [f"{n}={float(v)!r}" for n in RATIOS if (v := getattr(ratios, n)) is not None]
        flags = ",".join(sorted(ratios.flags))
        values += [f"flags={field_string(flags)}", f"open={'true' if r.open else 'false'}"]
        out.append(f"{KPI_MEASUREMENT},{tags} {','.join(values)} {r.start_ns}")
    return out


def kpi_path(db: Path) -> Path:
    """The KPI bucket file that goes with the sample store ``db``."""
    return db.with_name(db.stem + ".kpi.sqlite")
