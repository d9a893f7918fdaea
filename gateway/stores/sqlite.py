"""SQLite store adapter (schema: :mod:`karkhana.storage.sqlite_schema`).

One connection, used by the gateway's writer thread only; one transaction per batch.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from gateway.stores.base import Batch, WriteResult
from karkhana.errors import StoreError
from karkhana.storage.sqlite_schema import QUALITY_CODES, ValueType, connect, encode_value

log = logging.getLogger(__name__)

CACHE_MIB = 32
"""SQLite page cache of the writer's connection: with many series, each batch touches one
B-tree leaf per series; the default 2 MiB cache would re-read them from the OS every batch."""

# sqlite3 binds bool as an integer (0/1), so the value needs no conversion; only the type code.
_VTYPES: dict[type, int] = {
    float: int(ValueType.FLOAT),
    int: int(ValueType.INT),
    bool: int(ValueType.BOOL),
    str: int(ValueType.STR),
}

_INSERT_SAMPLE = (
    "INSERT OR IGNORE INTO samples (series_id, ts_ns, value, vtype, quality) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_SERIES = (
    "INSERT INTO series (asset, signal, unit) VALUES (?, ?, ?) "
    "ON CONFLICT (asset, signal) DO UPDATE SET unit = coalesce(excluded.unit, series.unit) "
    "RETURNING id, unit"
)
_UPDATE_UNIT = "UPDATE series SET unit = ? WHERE id = ?"
_UPSERT_SEQ = (
    "INSERT INTO agent_seq (agent, last_seq, updated_ns) VALUES (?, ?, ?) "
    "ON CONFLICT (agent) DO UPDATE SET last_seq = max(agent_seq.last_seq, excluded.last_seq), "
    "updated_ns = excluded.updated_ns"
)
_INSERT_DEAD = (
    "INSERT INTO dead_letters (received_ns, topic, reason, payload, payload_size) "
    "VALUES (?, ?, ?, ?, ?)"
)


class SqliteStore:
    """The embedded store. Create with :meth:`open`; use from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        # (asset, signal) -> (series id, unit); only committed rows.
        self._series: dict[tuple[str, str], tuple[int, str | None]] = {}

    @classmethod
    def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating if needed) the store at ``path``; raises StoreError."""
        p = Path(path)
        try:
            conn = connect(p)
            conn.execute(f"PRAGMA cache_size = -{CACHE_MIB * 1024}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {p}: {exc}") from exc
        store = cls(conn, p)
        try:
            for sid, asset, signal, unit in conn.execute(
                "SELECT id, asset, signal, unit FROM series"
            ):
                store._series[(asset, signal)] = (sid, unit)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot read SQLite store {p}: {exc}") from exc
        return store

    def high_water_marks(self) -> dict[str, int]:
        try:
            return dict(self._conn.execute("SELECT agent, last_seq FROM agent_seq").fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read agent sequence numbers from {self.path}: {exc}") from exc

    def write(self, batch: Batch) -> WriteResult:
        conn = self._conn
        staged: dict[tuple[str, str], tuple[int, str | None]] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows: list[tuple[int, int, object, int, int]] = []
            append = rows.append
            series = self._series
            quality_codes = QUALITY_CODES
            vtypes = _VTYPES
            for s in batch.samples:
                # Hot loop: a known series with an unchanged unit is two dict lookups.
                key = (s.asset, s.signal)
                entry = (staged.get(key) if staged else None) or series.get(key)
                unit = s.unit
                if entry is None or (unit is not None and unit != entry[1]):
                    entry = self._stage_series(key, unit, entry, staged)
                value = s.value
                vtype = vtypes.get(type(value))
                if vtype is None:  # a subclass of a value type: normalize it
                    value, code = encode_value(value)
                    vtype = int(code)
                append((entry[0], s.ts_ns, value, vtype, quality_codes[s.quality]))
            before = conn.total_changes
            conn.executemany(_INSERT_SAMPLE, rows)
            written = conn.total_changes - before
            if batch.high_water:
                conn.executemany(
                    _UPSERT_SEQ,
                    [(agent, seq, batch.received_ns) for agent, seq in batch.high_water.items()],
                )
            if batch.dead_letters:
                conn.executemany(
                    _INSERT_DEAD,
                    [
                        (d.received_ns, d.topic, d.reason, d.payload, d.payload_size)
                        for d in batch.dead_letters
                    ],
                )
            conn.commit()
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"SQLite write to {self.path} failed: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        series.update(staged)
        return WriteResult(samples_written=written, samples_duplicate=len(rows) - written)

    def _stage_series(
        self,
        key: tuple[str, str],
        unit: str | None,
        entry: tuple[int, str | None] | None,
        staged: dict[tuple[str, str], tuple[int, str | None]],
    ) -> tuple[int, str | None]:
        """Create the series or record its new unit, inside the open transaction."""
        if entry is None:
            sid, stored_unit = self._conn.execute(_UPSERT_SERIES, (*key, unit)).fetchone()
            entry = (sid, stored_unit)
        else:
            self._conn.execute(_UPDATE_UNIT, (unit, entry[0]))
            entry = (entry[0], unit)
        staged[key] = entry
        return entry

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except sqlite3.Error as exc:
            log.warning("rollback of %s failed: %s", self.path, exc)

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            log.warning("closing %s failed: %s", self.path, exc)
