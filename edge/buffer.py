"""Durable store-and-forward buffer: SQLite (WAL) on disk, driven from one dedicated thread.

Tables:
- ``samples``: readings in arrival order, not yet in an envelope.
- ``outbox``: messages ready to publish, in publish order: envelopes (with their ``seq``) and
  dead letters. A row is deleted only after the broker acknowledged it (PUBACK).
- ``meta``: ``last_seq``, the last sequence number ever assigned (survives restarts).

Sealing a batch is one transaction: take up to N samples, assign the next ``seq``, encode the
envelope, insert it into the outbox, delete the samples. So a crash leaves either the samples
or the envelope on disk, never both and never neither; and a re-sent envelope is byte for
byte the one first sent. ``synchronous=FULL`` makes a committed ``seq`` survive a power cut,
which the gateway's dedup on (agent, seq) relies on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import msgspec

from karkhana.envelope import WireSample, encode_envelope, sample_to_wire
from karkhana.errors import KarkhanaError
from karkhana.models import Sample, utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    seq INTEGER,
    n_samples INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_sample_encoder = msgspec.json.Encoder()
_sample_decoder = msgspec.json.Decoder(WireSample)


class EdgeBufferError(KarkhanaError):
    """The on-disk buffer cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    topic: str
    seq: int | None  # None for dead letters
    n_samples: int
    payload: bytes


class Buffer:
    """Async facade over the SQLite file; every sqlite3 call runs on one dedicated thread.

    Counters (``pending_samples``, ``pending_outbox``) are updated on the event loop after
    each operation, so they can be read from it without locking.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self.pending_samples = 0
        self.pending_outbox = 0
        self.pending_outbox_samples = 0
        self.pending_outbox_letters = 0  # outbox messages that are not envelopes
        self.last_seq = 0

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-buffer")
        try:
            counts = await self._call(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        (
            self.pending_samples,
            self.pending_outbox,
            self.pending_outbox_samples,
            self.pending_outbox_letters,
            self.last_seq,
        ) = counts
        log.info(
            "buffer %s: %d samples and %d messages pending, last seq %d",
            self.path,
            self.pending_samples,
            self.pending_outbox,
            self.last_seq,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._executor is None:
            return
        try:
            await asyncio.shield(self._call(self._close))
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise EdgeBufferError(f"buffer {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise EdgeBufferError(f"buffer {self.path}: {exc}") from exc

    # --- public async API -------------------------------------------------------------

    async def append(self, samples: Sequence[Sample]) -> None:
        """Store samples in arrival order (one transaction)."""
        if not samples:
            return
        rows = [(_sample_encoder.encode(sample_to_wire(s)),) for s in samples]
        await self._call(self._append, rows)
        self.pending_samples += len(rows)

    async def add_message(self, topic: str, payload: bytes) -> None:
        """Queue a message that is not an envelope (a dead letter) for publishing."""
        await self._call(self._add_message, topic, payload)
        self.pending_outbox += 1
        self.pending_outbox_letters += 1

    async def seal(self, agent_id: str, topic: str, max_samples: int) -> OutboxItem | None:
        """Move up to ``max_samples`` of the oldest samples into one envelope (one
        transaction). Returns the new outbox item, or None when no sample is pending."""
        item = await self._call(self._seal, agent_id, topic, max_samples)
        if item is not None:
            self.pending_samples -= item.n_samples
            self.pending_outbox += 1
            self.pending_outbox_samples += item.n_samples
            self.last_seq = item.seq or self.last_seq
        return item

    async def outbox_after(self, after_id: int, limit: int) -> list[OutboxItem]:
        """Outbox items with ``id > after_id`` in publish order."""
        return await self._call(self._outbox_after, after_id, limit)

    async def ack(self, item: OutboxItem) -> None:
        """The broker acknowledged ``item``: delete it."""
        deleted = await self._call(self._ack, item.id)
        if deleted:
            self.pending_outbox -= 1
            self.pending_outbox_samples -= item.n_samples
            if item.seq is None:
                self.pending_outbox_letters -= 1

    # --- database thread ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("database is closed")
        return self._db

    def _open(self) -> tuple[int, int, int, int, int]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc}") from exc
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            (n_samples,) = db.execute("SELECT count(*) FROM samples").fetchone()
            n_outbox, n_outbox_samples, n_letters = db.execute(
                "SELECT count(*), coalesce(sum(n_samples), 0), count(*) - count(seq) FROM outbox"
            ).fetchone()
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        except BaseException:
            db.close()
            raise
        self._db = db
        last_seq = int(row[0]) if row else 0
        return int(n_samples), int(n_outbox), int(n_outbox_samples), int(n_letters), last_seq

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _append(self, rows: list[tuple[bytes]]) -> None:
        db = self._conn()
        with _transaction(db):
            db.executemany("INSERT INTO samples (data) VALUES (?)", rows)

    def _add_message(self, topic: str, payload: bytes) -> None:
        db = self._conn()
        with _transaction(db):
            db.execute(
                "INSERT INTO outbox (topic, seq, n_samples, payload) VALUES (?, NULL, 0, ?)",
                (topic, payload),
            )

    def _seal(self, agent_id: str, topic: str, max_samples: int) -> OutboxItem | None:
        db = self._conn()
        with _transaction(db):
            rows = db.execute(
                "SELECT id, data FROM samples ORDER BY id LIMIT ?", (max_samples,)
            ).fetchall()
            if not rows:
                return None
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            seq = (int(row[0]) if row else 0) + 1
            wire = [_sample_decoder.decode(data) for _, data in rows]
            payload = encode_envelope(agent_id, seq, utc_now(), wire)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (seq,),
            )
            cursor = db.execute(
                "INSERT INTO outbox (topic, seq, n_samples, payload) VALUES (?, ?, ?, ?)",
                (topic, seq, len(rows), payload),
            )
            db.execute("DELETE FROM samples WHERE id <= ?", (rows[-1][0],))
            item_id = cursor.lastrowid
            if item_id is None:  # pragma: no cover - sqlite always sets it after an INSERT
                raise sqlite3.OperationalError("no row id for the new outbox row")
        return OutboxItem(item_id, topic, seq, len(rows), payload)

    def _outbox_after(self, after_id: int, limit: int) -> list[OutboxItem]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, topic, seq, n_samples, payload FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            .fetchall()
        )
        return [OutboxItem(int(r[0]), r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]

    def _ack(self, item_id: int) -> bool:
        db = self._conn()
        with _transaction(db):
            cursor = db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        return cursor.rowcount > 0


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (autocommit connection)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
