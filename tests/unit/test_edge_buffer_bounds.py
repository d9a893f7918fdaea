"""Buffer bounds: the oldest unsent data goes first, exact persistent drop counters,
nothing is dropped while within bounds."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from edge.buffer import Buffer, DropCounts
from karkhana.envelope import WireEnvelope
from karkhana.models import Sample

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
TOPIC = "karkhana/v1/edge/edge-1/samples"
BIG = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def samples(n: int, start: int = 0) -> list[Sample]:
    # 100.0 + i with i < 900 and whole seconds within a day: every row has the same length
    return [
        Sample("s/a/l/m", "speed", T0 + timedelta(seconds=start + i), 100.0 + start + i)
        for i in range(n)
    ]


def stored_values(path: Path) -> tuple[list[float], list[list[float]]]:
    """Loose sample values and the values inside each outbox envelope, read from the file."""
    with sqlite3.connect(path) as db:
        loose = [
            msgspec.json.decode(data)["value"]
            for (data,) in db.execute("SELECT data FROM samples ORDER BY id")
        ]
        envelopes = [
            [s.value for s in msgspec.json.decode(p, type=WireEnvelope).samples]
            for (p,) in db.execute("SELECT payload FROM outbox WHERE seq IS NOT NULL ORDER BY id")
        ]
    return loose, envelopes


def file_bytes(path: Path) -> tuple[int, int]:
    """Bytes of loose samples and of outbox payloads, summed by SQLite itself."""
    with sqlite3.connect(path) as db:
        (loose,) = db.execute("SELECT coalesce(sum(length(data)), 0) FROM samples").fetchone()
        (outbox,) = db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
    return int(loose), int(outbox)


def meta(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())


async def test_nothing_dropped_up_to_the_byte_bound_then_the_oldest_sample(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.sqlite"
    async with Buffer(path, max_bytes=BIG) as buf:
        await buf.append(samples(10))
    loose_bytes, _ = file_bytes(path)
    row = loose_bytes // 10
    assert row * 10 == loose_bytes  # all rows have the same size

    async with Buffer(path, max_bytes=loose_bytes) as buf:  # exactly at the bound
        assert buf.dropped == DropCounts()
        assert buf.stored_bytes == loose_bytes
        await buf.append(samples(1, start=10))  # one row over: the oldest row goes
        assert buf.dropped == DropCounts(samples_size=1)
        assert buf.pending_samples == 10
        await buf.append(samples(3, start=11))
        assert buf.dropped == DropCounts(samples_size=4)
    loose, _ = stored_values(path)
    assert loose == [104.0 + i for i in range(10)]
    assert meta(path)["dropped_samples_size"] == 4


async def test_sealed_envelopes_are_dropped_before_newer_loose_samples(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Buffer(path, max_bytes=BIG) as buf:
        await buf.append(samples(6))
        one = await buf.seal("edge-1", TOPIC, 3)
        two = await buf.seal("edge-1", TOPIC, 3)
        assert one is not None and two is not None
        buf.release_leases()  # as after a session: nothing in flight
        await buf.append(samples(4, start=6))
    loose_bytes, outbox_bytes = file_bytes(path)
    # Just under what is stored now: dropping the oldest envelope is enough.
    async with Buffer(path, max_bytes=loose_bytes + outbox_bytes - 1) as buf:
        assert buf.dropped == DropCounts(samples_size=3, envelopes_size=1)
        assert (buf.pending_samples, buf.pending_outbox, buf.pending_outbox_samples) == (4, 1, 3)
    loose, envelopes = stored_values(path)
    assert envelopes == [[103.0, 104.0, 105.0]]
    assert loose == [106.0, 107.0, 108.0, 109.0]
    assert meta(path)["dropped_envelopes_size"] == 1


async def test_old_data_is_dropped_by_age_and_counted_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    clock = Clock()
    async with Buffer(path, max_age_s=100.0, clock=clock) as buf:
        await buf.append(samples(2))  # t = 0
        assert await buf.seal("edge-1", TOPIC, 2) is not None
        buf.release_leases()
        await buf.add_message("karkhana/v1/deadletter", b'{"reason": "bad"}')
        clock.now += 50
        await buf.append(samples(3, start=2))  # t = 50
        clock.now += 50  # t = 100: the first rows are exactly 100 s old, still kept
        assert await buf.enforce_bounds() == DropCounts()
        assert buf.oldest_added == clock.now - 100
        clock.now += 1  # t = 101: the envelope and the dead letter are too old
        assert await buf.enforce_bounds() == DropCounts(
            samples_age=2, envelopes_age=1, letters_age=1
        )
        assert (buf.pending_outbox, buf.pending_outbox_letters, buf.pending_samples) == (0, 0, 3)
        assert buf.oldest_added == clock.now - 51
    clock.now += 50  # t = 151: the rest is too old when the buffer opens again
    async with Buffer(path, max_age_s=100.0, clock=clock) as buf:
        assert buf.dropped == DropCounts(samples_age=5, envelopes_age=1, letters_age=1)
        assert (buf.pending_samples, buf.pending_outbox, buf.stored_bytes) == (0, 0, 0)
        assert buf.oldest_added is None
    assert stored_values(path) == ([], [])
    async with Buffer(path, clock=clock) as buf:  # counters persist
        assert buf.dropped.samples == 5 and buf.dropped.envelopes == 1


async def test_rows_in_flight_are_never_dropped(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Buffer(path, max_bytes=BIG) as buf:
        await buf.append(samples(4))
        assert await buf.seal("edge-1", TOPIC, 2) is not None
        assert await buf.seal("edge-1", TOPIC, 2) is not None
    _, outbox_bytes = file_bytes(path)
    async with Buffer(path, max_bytes=BIG) as buf:
        (first, second) = await buf.outbox_after(0, 10)  # both handed to the client
        buf.max_bytes = outbox_bytes - 1
        assert await buf.enforce_bounds() == DropCounts()  # both may be in flight
        await buf.ack(first)
        assert await buf.enforce_bounds() == DropCounts()  # within bounds now
        buf.max_bytes = 1
        assert await buf.enforce_bounds() == DropCounts()  # second still in flight
        buf.release_leases()
        assert await buf.enforce_bounds() == DropCounts(samples_size=2, envelopes_size=1)
        await buf.ack(second)  # a late PUBACK of a dropped row changes nothing
        assert (buf.pending_outbox, buf.pending_outbox_samples, buf.stored_bytes) == (0, 0, 0)


async def test_a_buffer_file_without_the_added_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);"
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " seq INTEGER, n_samples INTEGER NOT NULL, payload BLOB NOT NULL);"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            "INSERT INTO meta VALUES ('last_seq', 7);"
        )
        db.execute(
            "INSERT INTO samples (data) VALUES (?)",
            (b'{"asset":"s/a/l/m","signal":"speed","ts":"2024-05-01T06:00:00Z","value":1.5}',),
        )
    clock = Clock()
    async with Buffer(path, max_age_s=10.0, clock=clock) as buf:
        assert (buf.pending_samples, buf.last_seq, buf.oldest_added) == (1, 7, clock.now)
        item = await buf.seal("edge-1", TOPIC, 10)
        assert item is not None and item.seq == 8
        assert buf.dropped == DropCounts()
