"""SQLite store schema: the contract between the gateway (writer) and the services (readers).

- ``series``: one row per (asset, signal), with an integer id used as the samples' key.
- ``sample_chunks``: the samples, many per row (:mod:`karkhana.storage.sqlite_chunks`); no
  (series, ts) is stored twice, so writing a point again is harmless.
- ``agent_seq``: per edge agent, the highest envelope ``seq`` committed (dedup key).
- ``dead_letters``: every rejected message with its reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path

from karkhana.models import SampleValue

SCHEMA_VERSION = 2
"""1: one row per sample in ``samples``; 2: ``sample_chunks`` (a version 1 store is
converted by the gateway when it opens it, see :func:`migrate`)."""


class ValueType(IntEnum):
    FLOAT = 0
    INT = 1
    BOOL = 2
    STR = 3


QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAMES = {v: k for k, v in QUALITY_CODES.items()}

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL,
    signal TEXT NOT NULL,
    unit TEXT,
    UNIQUE (asset, signal)
);
CREATE TABLE IF NOT EXISTS sample_chunks (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts_first INTEGER NOT NULL,
    ts_last INTEGER NOT NULL,
    n INTEGER NOT NULL,
    ts BLOB NOT NULL,
    vals BLOB NOT NULL,
    qualities BLOB
);
-- Covers the range filters and the per-window counts without reading the chunk rows.
CREATE INDEX IF NOT EXISTS sample_chunks_series_time
    ON sample_chunks (series_id, ts_last, ts_first, n);
CREATE TABLE IF NOT EXISTS agent_seq (
    agent TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    received_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received_ns);
"""


def encode_value(value: SampleValue) -> tuple[float | int | str, ValueType]:
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return int(value), ValueType.BOOL
    if isinstance(value, int):
        return value, ValueType.INT
    if isinstance(value, float):
        return value, ValueType.FLOAT
    return str(value), ValueType.STR


def decode_value(raw: float | int | str, vtype: int) -> SampleValue:
    """A version 1 ``samples`` row's value back as its Python type."""
    if vtype == ValueType.BOOL:
        return bool(raw)
    if vtype == ValueType.INT:
        return int(raw)
    if vtype == ValueType.FLOAT:
        return float(raw)
    return str(raw)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store with WAL and the schema in place (readers never create it)."""
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.executescript(SCHEMA_SQL)
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )
    conn.commit()
    return conn


def has_v1_samples(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'"
    ).fetchone()
    return row is not None


def migrate(conn: sqlite3.Connection, progress: Callable[[int, int], None] | None = None) -> int:
    """Move a version 1 store's ``samples`` rows into ``sample_chunks``, one series per
    transaction, then drop the table. Safe to interrupt: a series is deleted from ``samples``
    in the transaction that writes its chunks. Returns the samples moved; ``progress`` gets
    (series done, series total)."""
    from karkhana.storage.sqlite_chunks import ChunkWriter

    if not has_v1_samples(conn):
        return 0
    ids = [r[0] for r in conn.execute("SELECT DISTINCT series_id FROM samples ORDER BY 1")]
    writer = ChunkWriter(conn)
    moved = 0
    for done, sid in enumerate(ids, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            writer.begin()
            ts: list[int] = []
            values: list[SampleValue] = []
            qualities: list[int] = []
            for t, raw, vtype, quality in conn.execute(
                "SELECT ts_ns, value, vtype, quality FROM samples WHERE series_id = ? "
                "ORDER BY ts_ns",
                (sid,),
            ):
                ts.append(t)
                values.append(decode_value(raw, vtype))
                qualities.append(quality)
            moved += writer.add(sid, ts, values, qualities if any(qualities) else None)
            writer.flush()
            conn.execute("DELETE FROM samples WHERE series_id = ?", (sid,))
            conn.commit()
        except BaseException:
            conn.rollback()
            writer.forget()
            raise
        if progress is not None:
            progress(done, len(ids))
    conn.execute("DROP TABLE samples")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.commit()
    return moved
