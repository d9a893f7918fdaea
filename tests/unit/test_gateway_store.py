"""The SQLite store adapter and the writer thread, on real SQLite files."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.deadletters import DeadLetter
from gateway.decode import DecodeResult, NormalizedSample
from gateway.stats import GatewayStats
from gateway.stores import Batch, SqliteStore
from gateway.writer import BatchWriter, Inbound, QueueSource
from karkhana.errors import StoreError
from services.store import StoredDeadLetter, open_reader
from tests.helpers.stored import StoredSample, stored_samples

ASSET = "lahore/weaving/line-1/loom-03"
T0 = 1_714_521_600 * 1_000_000_000  # 2024-05-01T00:00:00Z


def read_samples(db: Path) -> list[StoredSample]:
    return sorted(stored_samples(db), key=lambda r: (r.signal, r.ts_ns))


def test_write_keeps_types_and_quality(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    result = store.write(
        Batch(
            samples=[
                NormalizedSample(ASSET, "count", T0, 42),
                NormalizedSample(ASSET, "speed", T0, 12.5, "uncertain", "m/min"),
                NormalizedSample(ASSET, "auto", T0, True, "bad"),
                NormalizedSample(ASSET, "state", T0, "running"),
            ],
            high_water={"agent-1": 9},
            received_ns=T0,
        )
    )
    store.close()
    assert (result.samples_written, result.samples_duplicate) == (4, 0)
    # quality: 0 good, 1 uncertain, 2 bad.
    rows = read_samples(db)
    assert rows == [
        (ASSET, "auto", T0, True, 2, None),
        (ASSET, "count", T0, 42, 0, None),
        (ASSET, "speed", T0, 12.5, 1, "m/min"),
        (ASSET, "state", T0, "running", 0, None),
    ]
    assert [type(r.value) for r in rows] == [bool, int, float, str]
    reopened = SqliteStore.open(db)
    assert reopened.high_water_marks() == {"agent-1": 9}
    reopened.close()


def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Commits never checkpoint (that would stall ingestion); the store's checkpoint thread
    does, so the WAL is reused instead of growing with everything written."""
    db = tmp_path / "store.sqlite"
    wal = db.with_name(db.name + "-wal")
    store = SqliteStore.open(db, checkpoint_interval_s=0.02)
    batches, per_batch = 40, 5_000
    largest_wal = 0
    for b in range(batches):
        samples = [
            NormalizedSample(ASSET, f"s{i % 50}", T0 + (b * per_batch + i) * 1_000_000, float(i))
            for i in range(per_batch)
        ]
        store.write(Batch(samples=samples))
        time.sleep(0.05)  # room for a checkpoint between commits
        largest_wal = max(largest_wal, wal.stat().st_size)
    assert wal.stat().st_size > 0
    store.close()
    database = db.stat().st_size
    assert database > 1_000_000
    # Without checkpoints the WAL would hold every page written (more than the database).
    assert largest_wal < database / 4, (largest_wal, database)
    assert len(read_samples(db)) == batches * per_batch


def test_same_series_and_ts_is_written_once(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    first = store.write(Batch(samples=[NormalizedSample(ASSET, "count", T0, 1)]))
    again = store.write(
        Batch(
            samples=[
                NormalizedSample(ASSET, "count", T0, 999),  # same key: ignored
                NormalizedSample(ASSET, "count", T0 + 1, 2),
                NormalizedSample(ASSET, "count", T0 + 1, 3),  # repeated within the batch
            ]
        )
    )
    store.close()
    assert (first.samples_written, first.samples_duplicate) == (1, 0)
    assert (again.samples_written, again.samples_duplicate) == (1, 2)
    assert [(row[2], row[3]) for row in read_samples(db)] == [(T0, 1), (T0 + 1, 2)]


def test_high_water_mark_never_goes_down(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "store.sqlite")
    store.write(Batch(high_water={"a": 10}))
    store.write(Batch(high_water={"a": 4, "b": 1}))
    assert store.high_water_marks() == {"a": 10, "b": 1}
    store.close()


def test_unit_is_updated_when_it_changes(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    store.write(Batch(samples=[NormalizedSample(ASSET, "speed", T0, 1.0, "good", "m/min")]))
    store.write(Batch(samples=[NormalizedSample(ASSET, "speed", T0 + 1, 1.0, "good", None)]))
    store.write(Batch(samples=[NormalizedSample(ASSET, "speed", T0 + 2, 1.0, "good", "m/s")]))
    store.close()
    assert [row.unit for row in read_samples(db)] == ["m/s", "m/s", "m/s"]


def test_dead_letters_are_stored(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    store.write(
        Batch(
            dead_letters=[
                DeadLetter(T0, "karkhana/v1/edge/a/samples", "first", b"x", 1),
                DeadLetter(T0 + 1, "karkhana/v1/edge/b/samples", "second", b"yy", 10),
            ]
        )
    )
    store.close()
    letters = dead_letters(db, limit=10)
    assert [(d.reason, d.topic, d.payload, d.payload_size) for d in letters] == [
        ("second", "karkhana/v1/edge/b/samples", b"yy", 10),
        ("first", "karkhana/v1/edge/a/samples", b"x", 1),
    ]
    assert [d.reason for d in dead_letters(db, limit=1, before_id=letters[0].id)] == ["first"]


def test_failed_write_keeps_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    store._conn.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(StoreError):
        store.write(Batch(samples=[NormalizedSample(ASSET, "count", T0, 1)], high_water={"a": 1}))
    blocker.rollback()
    blocker.close()
    # The series created in the failed transaction must not be cached.
    result = store.write(Batch(samples=[NormalizedSample(ASSET, "count", T0, 1)]))
    assert result.samples_written == 1
    assert store.high_water_marks() == {}
    store.close()
    assert len(read_samples(db)) == 1


def test_open_fails_with_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        SqliteStore.open(tmp_path / "dir.sqlite")


def envelope_result(agent: str, seq: int, *values: int, reason: str | None = None) -> Inbound:
    samples = [NormalizedSample(ASSET, "count", T0 + v, v) for v in values]
    result = DecodeResult(
        topic=f"karkhana/v1/edge/{agent}/samples",
        payload=b"{}",
        received_ns=T0,
        agent=agent,
        seq=seq,
        samples=samples,
        reason=reason,
    )
    return Inbound(result, token=(agent, seq))


async def test_writer_dedups_by_seq_and_acknowledges_everything(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    store = SqliteStore.open(db)
    store.write(Batch(high_water={"a": 3}))  # committed earlier
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=100)
    committed: list[object] = []
    letters: list[DeadLetter] = []
    stats = GatewayStats()

    def on_commit(items: list[Inbound], batch: Batch) -> None:
        committed.extend(item.token for item in items)
        letters.extend(batch.dead_letters)

    writer = BatchWriter(store, QueueSource(inbox), stats=stats, on_commit=on_commit)
    items = [
        # Older than the seq another gateway committed, but never written itself: with
        # several gateways (or a redelivery) seqs arrive out of order, so it is stored.
        envelope_result("a", 2, 100),
        envelope_result("a", 4, 1, 2),
        envelope_result("a", 4, 1, 2),  # same envelope again in the same batch
        envelope_result("b", 1, 3, reason="1 of 2 samples rejected: ..."),
        envelope_result("a", 5, 2, 4),  # sample at T0+2 already written by seq 4
        Inbound(
            DecodeResult(
                topic="karkhana/v1/edge/x/samples",
                payload=b"nope",
                received_ns=T0,
                reason="payload is not JSON: ...",
            ),
            token="bad",
        ),
    ]
    for item in items:
        inbox.put(item)
    writer.start()
    writer.request_stop()
    await asyncio.wait_for(writer.done, 10)

    assert committed == [item.token for item in items]
    assert [d.reason for d in letters] == [
        "1 of 2 samples rejected: ...",
        "payload is not JSON: ...",
    ]
    assert (stats.messages, stats.envelopes_duplicate, stats.dead_letters) == (6, 1, 2)
    assert (stats.samples_written, stats.samples_duplicate) == (5, 1)
    assert [row[3] for row in read_samples(db)] == [1, 2, 3, 4, 100]
    check = SqliteStore.open(db)
    assert check.high_water_marks() == {"a": 5, "b": 1}
    check.close()


async def test_writer_stop_with_empty_inbox(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "store.sqlite")
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=1)
    committed: list[Inbound] = []
    writer = BatchWriter(
        store, QueueSource(inbox), stats=GatewayStats(), on_commit=lambda i, d: committed.extend(i)
    )
    writer.start()
    writer.request_stop()
    await asyncio.wait_for(writer.done, 10)
    assert inbox.empty() and not committed


async def test_writer_batches_respect_max_samples(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "store.sqlite")
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=100)
    stats = GatewayStats()
    source = QueueSource(inbox)
    writer = BatchWriter(store, source, stats=stats, on_commit=lambda i, d: None, max_samples=4)
    for seq in range(1, 7):  # 6 envelopes of 2 samples each -> at most 4 samples per batch
        inbox.put(envelope_result("a", seq, 2 * seq, 2 * seq + 1))
    writer.start()
    writer.request_stop()
    await asyncio.wait_for(writer.done, 10)
    assert stats.samples_written == 12
    assert stats.batches == 3


def dead_letters(db: Path, limit: int, before_id: int | None = None) -> list[StoredDeadLetter]:
    """Dead letters newest first, read as the API reads them."""
    with open_reader(db) as reader:
        return reader.dead_letters(limit, before_id)
