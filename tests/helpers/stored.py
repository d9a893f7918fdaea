"""What a SQLite sample store holds, read back independently of the services' reader."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

from karkhana.models import SampleValue
from karkhana.storage.sqlite_chunks import read_all


class StoredSample(NamedTuple):
    asset: str
    signal: str
    ts_ns: int
    value: SampleValue
    quality: int
    """0 good, 1 uncertain, 2 bad."""
    unit: str | None


def stored_samples(db: Path | str | sqlite3.Connection) -> list[StoredSample]:
    """Every stored sample, ordered by asset, signal and time."""
    conn = db if isinstance(db, sqlite3.Connection) else sqlite3.connect(db, timeout=30)
    try:
        out: list[StoredSample] = []
        series = conn.execute(
            "SELECT id, asset, signal, unit FROM series ORDER BY asset, signal"
        ).fetchall()
        for sid, asset, signal, unit in series:
            run = read_all(conn, sid)
            for i, (ts, value) in enumerate(zip(run.ts, run.values, strict=True)):
                out.append(StoredSample(asset, signal, ts, value, run.quality_at(i), unit))
        return out
    finally:
        if not isinstance(db, sqlite3.Connection):
            conn.close()


def stored_count(db: Path | str | sqlite3.Connection, signal: str | None = None) -> int:
    """How many samples the store holds (of ``signal``); 0 before the store exists."""
    if not isinstance(db, sqlite3.Connection) and not Path(db).exists():
        return 0
    conn = db if isinstance(db, sqlite3.Connection) else sqlite3.connect(db, timeout=30)
    try:
        if signal is None:
            row = conn.execute("SELECT COALESCE(SUM(n), 0) FROM sample_chunks").fetchone()
        else:
            row = conn.execute(
                "SELECT COALESCE(SUM(c.n), 0) FROM sample_chunks c "
                "JOIN series s ON s.id = c.series_id WHERE s.signal = ?",
                (signal,),
            ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0  # the gateway has not created the schema yet
        raise
    finally:
        if not isinstance(db, sqlite3.Connection):
            conn.close()
