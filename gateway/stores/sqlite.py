"""SQLite store adapter (schema: :mod:`karkhana.storage.sqlite_schema`).

One connection, used by the gateway's writer thread only; one transaction per batch. A
second thread checkpoints the WAL into the database file (copy and fsync), which SQLite
would otherwise do inside every thousandth page's commit, stalling ingestion meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.stores.base import Batch, WriteResult
from karkhana.errors import StoreError
from karkhana.storage.sqlite_chunks import ChunkWriter
from karkhana.storage.sqlite_schema import connect, has_v1_samples, migrate

log = logging.getLogger(__name__)

CACHE_MIB = 32
"""SQLite page cache of the writer's connection: with many series, each batch touches one
B-tree leaf per series; the default 2 MiB cache would re-read them from the OS every batch."""

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


CHECKPOINT_INTERVAL_S = 1.0
"""How often the checkpoint thread copies the WAL into the database file. The WAL holds at
most about this long's writes (it is reused from its start after a complete checkpoint)."""


class Checkpointer:
    """A thread with its own connection that checkpoints the WAL every ``interval_s``.

    PASSIVE checkpoints never block the writer or readers: they copy what no reader still
    needs, and the writer restarts the WAL from its beginning once all of it is copied.
    """

    def __init__(self, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="karkhana-sqlite-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                if conn is None:
                    conn = sqlite3.connect(str(self.path), check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout = 1000")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if failing:
                    log.info("checkpoints of %s work again", self.path)
                failing = False
            except sqlite3.Error as exc:
                if not failing:  # once per failure spell: a full disk would repeat it
                    log.warning("checkpoint of %s failed (retried): %s", self.path, exc)
                failing = True
        if conn is not None:
            conn.close()


class SqliteStore:
    """The embedded store. Create with :meth:`open`; use from one thread at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        self._conn = conn
        self.path = path
        self._checkpointer = Checkpointer(path, checkpoint_interval_s)
        self._checkpointer.start()
        self._chunks = ChunkWriter(conn)
        # (asset, signal) -> (series id, unit); only committed rows.
        self._series: dict[tuple[str, str], tuple[int, str | None]] = {}

    @classmethod
    def open(
        cls, path: str | Path, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S
    ) -> SqliteStore:
        """Open (creating if needed) the store at ``path``; raises StoreError."""
        p = Path(path)
        try:
            conn = connect(p)
            conn.execute(f"PRAGMA cache_size = -{CACHE_MIB * 1024}")
            # Checkpoints run on the store's checkpoint thread, not inside a commit.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {p}: {exc}") from exc
        try:
            if has_v1_samples(conn):
                log.info("converting %s to chunked samples (schema version 2)", p)
                moved = migrate(conn, _migration_progress(p))
                log.info("%s: %d sample(s) converted", p, moved)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot convert the SQLite store {p}: {exc}") from exc
        store = cls(conn, p, checkpoint_interval_s)
        try:
            for sid, asset, signal, unit in conn.execute(
                "SELECT id, asset, signal, unit FROM series"
            ):
                store._series[(asset, signal)] = (sid, unit)
        except sqlite3.Error as exc:
            store.close()
            raise StoreError(f"cannot read SQLite store {p}: {exc}") from exc
        return store

    def high_water_marks(self) -> dict[str, int]:
        try:
            return dict(self._conn.execute("SELECT agent, last_seq FROM agent_seq").fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read agent sequence numbers from {self.path}: {exc}") from exc

    def write(self, batch: Batch) -> WriteResult:
        conn = self._conn
        chunks = self._chunks
        staged: dict[tuple[str, str], tuple[int, str | None]] = {}
        total = written = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            chunks.begin()
            series = self._series
            for run in batch.runs:
                key = (run.asset, run.signal)
                entry = series.get(key)
                unit = run.unit
                if entry is None or (unit is not None and unit != entry[1]):
                    entry = self._stage_series(key, unit, entry, staged)
                total += len(run.ts)
                written += chunks.add(entry[0], run.ts, run.values, run.qualities())
            chunks.flush()
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
        return WriteResult(samples_written=written, samples_duplicate=total - written)

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
        self._chunks.forget()
        try:
            self._conn.rollback()
        except sqlite3.Error as exc:
            log.warning("rollback of %s failed: %s", self.path, exc)

    def close(self) -> None:
        self._checkpointer.stop()
        try:
            self._conn.close()  # the last connection to close checkpoints what is left
        except sqlite3.Error as exc:
            log.warning("closing %s failed: %s", self.path, exc)


def _migration_progress(path: Path) -> Callable[[int, int], None]:
    every = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - every[0] >= 5:
            every[0] = now
            log.info("%s: %d of %d series converted", path, done, total)

    return report
