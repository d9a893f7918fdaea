"""SQLite store schema: the contract between the gateway (writer) and the services (readers).

- ``series``: one row per (asset, signal), with an integer id used as the samples' key.
- ``samples``: keyed by (series_id, ts_ns) so writing a point twice is harmless
  (``INSERT OR IGNORE``). ``value`` keeps SQLite's native type (INTEGER, REAL or TEXT);
  ``vtype`` says how to turn it back into the sample's Python type.
- ``agent_seq``: per edge agent, the highest envelope ``seq`` committed (dedup key).
- ``dead_letters``: every rejected message with its reason.
"""

from __future__ import annotations

import sqlite3
from enum import IntEnum
from pathlib import Path

from karkhana.models import SampleValue

SCHEMA_VERSION = 1


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
CREATE TABLE IF NOT EXISTS samples (
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts_ns INTEGER NOT NULL,
    value,
    vtype INTEGER NOT NULL,
    quality INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (series_id, ts_ns)
) WITHOUT ROWID;
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
