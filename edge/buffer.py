"""Durable store-and-forward buffer: SQLite (WAL) on disk, driven from one dedicated thread.

Tables:
- ``samples``: readings in arrival order, not yet in an envelope.
- ``outbox``: messages ready to publish, in publish order: envelopes (with their ``seq``) and
  dead letters. A row is deleted only after the broker acknowledged it (PUBACK).
- ``meta``: ``last_seq``, the last sequence number ever assigned (survives restarts), and
  the ``dropped_*`` counters.

Bounds: the stored payload bytes (encoded samples plus outbox payloads) stay under
``max_bytes`` and nothing unsent is older than ``max_age_s`` (the time it entered the
buffer). When a bound is exceeded the OLDEST unsent data goes first: outbox rows in publish
order (whole envelopes and dead letters), then samples in arrival order, until the buffer is
back within bounds. Rows handed to the MQTT client and awaiting their PUBACK are never
dropped. Every drop is counted, by kind and reason, in ``meta`` in the same transaction as
the delete, so the counters are exact and survive restarts. Bounds are checked whenever data
is added, when the buffer opens and on :meth:`Buffer.enforce_bounds`.

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
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
    data BLOB NOT NULL,
    added REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    seq INTEGER,
    n_samples INTEGER NOT NULL,
    payload BLOB NOT NULL,
    added REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

DEFAULT_MAX_BYTES = 1024**3  # 1 GiB of stored payloads
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0  # 7 days
_DROP_CHUNK = 256  # rows looked at per query while choosing what to drop

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


@dataclass(frozen=True, slots=True)
class DropCounts:
    """What the bounds removed before it was sent, by kind and reason (since the buffer
    file was created)."""

    samples_size: int = 0  # samples, loose or inside dropped envelopes
    samples_age: int = 0
    envelopes_size: int = 0
    envelopes_age: int = 0
    letters_size: int = 0  # dead letters
    letters_age: int = 0

    @property
    def samples(self) -> int:
        return self.samples_size + self.samples_age

    @property
    def envelopes(self) -> int:
        return self.envelopes_size + self.envelopes_age

    def plus(self, other: DropCounts) -> DropCounts:
        return DropCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(DropCounts))
        )


_DROP_KEYS = tuple(f"dropped_{f.name}" for f in fields(DropCounts))


@dataclass(frozen=True, slots=True)
class _Removed:
    """Rows one bounds check deleted, to adjust the pending counters."""

    loose_samples: int = 0
    outbox_rows: int = 0
    outbox_samples: int = 0
    outbox_letters: int = 0
    counts: DropCounts = DropCounts()

    @property
    def any(self) -> bool:
        return bool(self.loose_samples or self.outbox_rows)


class Buffer:
    """Async facade over the SQLite file; every sqlite3 call runs on one dedicated thread.

    Counters (``pending_samples``, ``pending_outbox``) are updated on the event loop after
    each operation, so they can be read from it without locking.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self.pending_samples = 0
        self.pending_outbox = 0
        self.pending_outbox_samples = 0
        self.pending_outbox_letters = 0  # outbox messages that are not envelopes
        self.last_seq = 0
        self.dropped = DropCounts()
        # Owned by the database thread; read-only elsewhere (each is replaced atomically).
        self.stored_bytes = 0  # encoded samples + outbox payloads
        self.oldest_added: float | None = None  # clock() when the oldest unsent row arrived
        # Outbox ids handed out by ``outbox_after``/``seal`` and not yet acknowledged: they
        # may be in flight, so the bounds never drop them.
        self._leases: set[int] = set()
        self._lease_lock = threading.Lock()

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-buffer")
        try:
            counts = await self._call(self._open)
            (
                self.pending_samples,
                self.pending_outbox,
                self.pending_outbox_samples,
                self.pending_outbox_letters,
                self.last_seq,
                self.dropped,
            ) = counts
            log.info(
                "buffer %s: %d samples and %d messages pending, last seq %d",
                self.path,
                self.pending_samples,
                self.pending_outbox,
                self.last_seq,
            )
            await self.enforce_bounds()
        except BaseException:
            await self._call(self._close)
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
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
        rows = [_sample_encoder.encode(sample_to_wire(s)) for s in samples]
        removed = await self._call(self._append, rows)
        self.pending_samples += len(rows)
        self._apply(removed)

    async def add_message(self, topic: str, payload: bytes) -> None:
        """Queue a message that is not an envelope (a dead letter) for publishing."""
        removed = await self._call(self._add_message, topic, payload)
        self.pending_outbox += 1
        self.pending_outbox_letters += 1
        self._apply(removed)

    async def enforce_bounds(self) -> DropCounts:
        """Drop the oldest unsent data while over ``max_bytes`` or older than ``max_age_s``;
        returns what this call dropped (nothing while within bounds)."""
        removed = await self._call(self._enforce_tx)
        self._apply(removed)
        return removed.counts

    def release_leases(self) -> None:
        """The uplink session ended: nothing is in flight any more."""
        with self._lease_lock:
            self._leases.clear()

    def _apply(self, removed: _Removed) -> None:
        if not removed.any:
            return
        self.pending_samples -= removed.loose_samples
        self.pending_outbox -= removed.outbox_rows
        self.pending_outbox_samples -= removed.outbox_samples
        self.pending_outbox_letters -= removed.outbox_letters
        self.dropped = self.dropped.plus(removed.counts)

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

    def _open(self) -> tuple[int, int, int, int, int, DropCounts]:
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
            _add_missing_columns(db, self._clock())
            (n_samples, sample_bytes) = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM samples"
            ).fetchone()
            n_outbox, n_outbox_samples, n_letters, outbox_bytes = db.execute(
                "SELECT count(*), coalesce(sum(n_samples), 0), count(*) - count(seq), "
                "coalesce(sum(length(payload)), 0) FROM outbox"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except BaseException:
            db.close()
            raise
        self._db = db
        self.stored_bytes = int(sample_bytes) + int(outbox_bytes)
        self._refresh_oldest()
        last_seq = int(meta.get("last_seq", 0))
        dropped = DropCounts(*(int(meta.get(key, 0)) for key in _DROP_KEYS))
        return (
            int(n_samples),
            int(n_outbox),
            int(n_outbox_samples),
            int(n_letters),
            last_seq,
            dropped,
        )

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _append(self, rows: list[bytes]) -> _Removed:
        db = self._conn()
        now = self._clock()
        with _transaction(db):
            db.executemany(
                "INSERT INTO samples (data, added) VALUES (?, ?)", [(r, now) for r in rows]
            )
            added = sum(len(r) for r in rows)
            removed = self._enforce(db, now, self.stored_bytes + added)
        self.stored_bytes += added - removed[1]
        self._refresh_oldest()
        return removed[0]

    def _add_message(self, topic: str, payload: bytes) -> _Removed:
        db = self._conn()
        now = self._clock()
        with _transaction(db):
            db.execute(
                "INSERT INTO outbox (topic, seq, n_samples, payload, added) "
                "VALUES (?, NULL, 0, ?, ?)",
                (topic, payload, now),
            )
            removed = self._enforce(db, now, self.stored_bytes + len(payload))
        self.stored_bytes += len(payload) - removed[1]
        self._refresh_oldest()
        return removed[0]

    def _enforce_tx(self) -> _Removed:
        db = self._conn()
        with _transaction(db):
            removed, freed = self._enforce(db, self._clock(), self.stored_bytes)
        self.stored_bytes -= freed
        self._refresh_oldest()
        return removed

    def _enforce(self, db: sqlite3.Connection, now: float, total: int) -> tuple[_Removed, int]:
        """Inside a transaction: delete the oldest unsent rows past the bounds and count
        them in ``meta``. Returns what was removed and the bytes freed."""
        cutoff = now - self.max_age_s
        if total <= self.max_bytes and (self.oldest_added is None or self.oldest_added >= cutoff):
            return _Removed(), 0  # within bounds: the common case costs no query
        with self._lease_lock:
            leased = frozenset(self._leases)
        counts = dict.fromkeys(_DROP_KEYS, 0)
        rows = outbox_samples = letters = loose = freed = 0

        # 1. the outbox, oldest first (skipping rows that may be in flight)
        after = 0
        while True:
            chunk = db.execute(
                "SELECT id, seq, n_samples, length(payload), added FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after, _DROP_CHUNK),
            ).fetchall()
            if not chunk:
                break
            doomed: list[tuple[int]] = []
            stop = False
            for row_id, seq, n_samples, size, added in chunk:
                after = row_id
                if row_id in leased:
                    continue
                if added is not None and added < cutoff:
                    reason = "age"
                elif total - freed > self.max_bytes:
                    reason = "size"
                else:
                    stop = True
                    break
                doomed.append((row_id,))
                freed += size
                rows += 1
                outbox_samples += n_samples
                if seq is None:
                    letters += 1
                    counts[f"dropped_letters_{reason}"] += 1
                else:
                    counts[f"dropped_envelopes_{reason}"] += 1
                    counts[f"dropped_samples_{reason}"] += n_samples
            db.executemany("DELETE FROM outbox WHERE id = ?", doomed)
            if stop:
                break

        # 2. loose samples, in arrival order
        after = 0
        while True:
            chunk = db.execute(
                "SELECT id, length(data), added FROM samples WHERE id > ? ORDER BY id LIMIT ?",
                (after, _DROP_CHUNK),
            ).fetchall()
            if not chunk:
                break
            last = None
            stop = False
            for row_id, size, added in chunk:
                if added is not None and added < cutoff:
                    reason = "age"
                elif total - freed > self.max_bytes:
                    reason = "size"
                else:
                    stop = True
                    break
                last = row_id
                freed += size
                loose += 1
                counts[f"dropped_samples_{reason}"] += 1
            if last is not None:
                db.execute("DELETE FROM samples WHERE id > ? AND id <= ?", (after, last))
                after = last
            if stop or last is None:
                break

        if not (rows or loose):
            return _Removed(), 0
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            [(key, n) for key, n in counts.items() if n],
        )
        drop = DropCounts(*(counts[key] for key in _DROP_KEYS))
        log.warning(
            "buffer %s over its bounds: dropped %d samples, %d envelopes, %d dead letters "
            "(oldest first; %d bytes freed)",
            self.path,
            drop.samples,
            drop.envelopes,
            letters,
            freed,
        )
        return _Removed(loose, rows, outbox_samples, letters, drop), freed

    def _refresh_oldest(self) -> None:
        db = self._conn()
        oldest = [
            row[0]
            for row in (
                db.execute("SELECT added FROM outbox ORDER BY id LIMIT 1").fetchone(),
                db.execute("SELECT added FROM samples ORDER BY id LIMIT 1").fetchone(),
            )
            if row is not None and row[0] is not None
        ]
        self.oldest_added = min(oldest) if oldest else None

    def _seal(self, agent_id: str, topic: str, max_samples: int) -> OutboxItem | None:
        db = self._conn()
        with _transaction(db):
            rows = db.execute(
                "SELECT id, data, added FROM samples ORDER BY id LIMIT ?", (max_samples,)
            ).fetchall()
            if not rows:
                return None
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            seq = (int(row[0]) if row else 0) + 1
            wire = [_sample_decoder.decode(data) for _, data, _ in rows]
            times = [added for _, _, added in rows if added is not None]
            payload = encode_envelope(agent_id, seq, utc_now(), wire)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (seq,),
            )
            cursor = db.execute(
                "INSERT INTO outbox (topic, seq, n_samples, payload, added) VALUES (?, ?, ?, ?, ?)",
                (topic, seq, len(rows), payload, min(times) if times else self._clock()),
            )
            db.execute("DELETE FROM samples WHERE id <= ?", (rows[-1][0],))
            item_id = cursor.lastrowid
            if item_id is None:  # pragma: no cover - sqlite always sets it after an INSERT
                raise sqlite3.OperationalError("no row id for the new outbox row")
        self.stored_bytes += len(payload) - sum(len(data) for _, data, _ in rows)
        self._refresh_oldest()
        with self._lease_lock:
            self._leases.add(item_id)
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
        items = [OutboxItem(int(r[0]), r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]
        with self._lease_lock:
            self._leases.update(item.id for item in items)
        return items

    def _ack(self, item_id: int) -> bool:
        db = self._conn()
        with _transaction(db):
            row = db.execute(
                "DELETE FROM outbox WHERE id = ? RETURNING length(payload)", (item_id,)
            ).fetchone()
        with self._lease_lock:
            self._leases.discard(item_id)
        if row is None:
            return False
        self.stored_bytes -= int(row[0])
        self._refresh_oldest()
        return True


def _add_missing_columns(db: sqlite3.Connection, now: float) -> None:
    """Buffer files written before the bounds existed have no ``added`` column: add it and
    date the rows already there to now (their age counts from this start)."""
    for table in ("samples", "outbox"):
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if "added" not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN added REAL")
            db.execute(f"UPDATE {table} SET added = ? WHERE added IS NULL", (now,))


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
