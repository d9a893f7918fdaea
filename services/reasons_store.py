"""Operators' downtime codings (event id -> reason, comment, who, when) in a SQLite file.

The API owns this file (``ApiSettings.reasons_db``); the gateway's store stays read-only to
the API. A coding is keyed by the stop event's stable id (``services.downtime.event_id``),
so it survives recomputation of the events. One store per request: ``open_reasons``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from karkhana.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS codings (
    event_id  TEXT PRIMARY KEY,
    asset     TEXT NOT NULL,
    start_ns  INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    comment   TEXT NOT NULL DEFAULT '',
    coded_by  TEXT,
    coded_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS codings_asset_start ON codings (asset, start_ns);
"""


@dataclass(frozen=True, slots=True)
class Coding:
    """An operator's answer to "why did this machine stop?"."""

    event_id: str
    asset: str
    start_ns: int
    reason: str
    comment: str
    coded_by: str | None
    coded_ns: int


class ReasonsStore:
    """Read and write codings; every method maps ``sqlite3`` errors to ``StoreError``."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: str | Path) -> ReasonsStore:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(p, timeout=5.0)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the downtime reasons store {p}: {exc}") from exc
        return cls(p, conn)

    def close(self) -> None:
        self._conn.close()

    def put(self, coding: Coding) -> None:
        """Store ``coding``, replacing any earlier coding of the same event."""
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO codings (event_id, asset, start_ns, reason, comment,"
                    " coded_by, coded_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        coding.event_id,
                        coding.asset,
                        coding.start_ns,
                        coding.reason,
                        coding.comment,
                        coding.coded_by,
                        coding.coded_ns,
                    ),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"writing to the downtime reasons store {self.path}: {exc}") from exc

    def get_many(self, event_ids: Iterable[str]) -> dict[str, Coding]:
        """The codings of those of ``event_ids`` that are coded."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, Coding] = {}
        # SQLite limits the number of bound parameters; ask in chunks.
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._conn.execute(
                    "SELECT event_id, asset, start_ns, reason, comment, coded_by, coded_ns "
                    f"FROM codings WHERE event_id IN ({marks})",
                    chunk,
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"reading the downtime reasons store {self.path}: {exc}") from exc
            for row in rows:
                coding = Coding(*row)
                out[coding.event_id] = coding
        return out

    def get(self, event_id: str) -> Coding | None:
        return self.get_many([event_id]).get(event_id)


@contextmanager
def open_reasons(path: str | Path) -> Iterator[ReasonsStore]:
    store = ReasonsStore.open(path)
    try:
        yield store
    finally:
        store.close()
