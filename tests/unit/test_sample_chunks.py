"""Chunked sample storage against a model of its contract: a dict per series where the
first write of a (series, ts) wins, read back in time order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from karkhana.storage.sqlite_chunks import (
    CHUNK_NS,
    ChunkWriter,
    Run,
    count_fingerprint,
    read_all,
    read_range,
    read_times,
    rewrite_range,
    window_counts,
    windows_before,
    windows_from,
)
from karkhana.storage.sqlite_schema import connect, migrate

T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z, on the chunk grid
MINUTE = 60 * 1_000_000_000

# Times spread over a few chunk windows, with many collisions and window edges.
times = st.one_of(
    st.integers(0, 4 * CHUNK_NS),
    st.sampled_from([0, CHUNK_NS - 1, CHUNK_NS, 2 * CHUNK_NS - 1, 2 * CHUNK_NS, 3 * CHUNK_NS]),
).map(lambda offset: T0 + offset)
values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
sample = st.tuples(st.sampled_from([1, 2]), times, values, st.sampled_from([0, 0, 0, 1, 2]))
batches = st.lists(st.lists(sample, max_size=30), min_size=1, max_size=8)


def open_store(tmp: Path) -> sqlite3.Connection:
    conn = connect(tmp / "store.sqlite")
    conn.execute("INSERT INTO series (id, asset, signal) VALUES (1, 'a/b/c/d', 'x')")
    conn.execute("INSERT INTO series (id, asset, signal) VALUES (2, 'a/b/c/d', 'y')")
    conn.commit()
    return conn


def write(conn: sqlite3.Connection, writer: ChunkWriter, batch: list[tuple]) -> int:
    per: dict[int, tuple[list[int], list[object], list[int]]] = {}
    for sid, ts, value, quality in batch:
        run = per.setdefault(sid, ([], [], []))
        run[0].append(ts)
        run[1].append(value)
        run[2].append(quality)
    conn.execute("BEGIN IMMEDIATE")
    writer.begin()
    written = 0
    for sid, (ts, vals, qs) in per.items():
        written += writer.add(sid, ts, vals, qs if any(qs) else None)  # type: ignore[arg-type]
    writer.flush()
    conn.commit()
    return written


def as_list(run: Run) -> list[tuple[int, object, int]]:
    return [
        (t, v, run.quality_at(i)) for i, (t, v) in enumerate(zip(run.ts, run.values, strict=True))
    ]


def same(a: list[tuple[int, object, int]], b: list[tuple[int, object, int]]) -> bool:
    # repr tells 1 from 1.0 and True from 1, and -0.0 from 0.0.
    return [(t, repr(v), type(v), q) for t, v, q in a] == [
        (t, repr(v), type(v), q) for t, v, q in b
    ]


@settings(max_examples=150, deadline=None)
@given(batches=batches, bounds=st.tuples(times, times), all_good=st.booleans())
def test_writes_and_reads_match_first_write_wins(
    tmp_path_factory: object, batches: list[list[tuple]], bounds: tuple[int, int], all_good: bool
) -> None:
    if all_good:  # chunks without quality bytes take the readers' bulk path
        batches = [[(sid, ts, v, 0) for sid, ts, v, _ in batch] for batch in batches]
    tmp = tmp_path_factory.mktemp("chunks")  # type: ignore[attr-defined]
    conn = open_store(tmp)
    writer = ChunkWriter(conn)
    model: dict[int, dict[int, tuple[object, int]]] = {1: {}, 2: {}}
    for batch in batches:
        new = 0
        for sid, ts, value, quality in batch:
            if ts not in model[sid]:
                model[sid][ts] = (value, quality)
                new += 1
        assert write(conn, writer, batch) == new
    lo, hi = sorted(bounds)
    for sid in (1, 2):
        expected = sorted((t, v, q) for t, (v, q) in model[sid].items())
        assert same(as_list(read_all(conn, sid)), expected)
        inside = [e for e in expected if lo <= e[0] < hi]
        assert same(as_list(read_range(conn, sid, lo, hi)), inside)
        assert read_times(conn, sid, lo, hi) == [e[0] for e in inside]
        before = [p for run in windows_before(conn, sid, hi) for p in reversed(as_list(run))]
        assert same(before, [e for e in reversed(expected) if e[0] < hi])
        after = [p for run in windows_from(conn, sid, lo) for p in as_list(run)]
        assert same(after, [e for e in expected if e[0] >= lo])
    counts = window_counts(conn, [1, 2], lo, hi)
    per_window: dict[int, int] = {}
    for sid in (1, 2):
        for t in model[sid]:
            if lo <= t < hi:
                per_window[t - t % CHUNK_NS] = per_window.get(t - t % CHUNK_NS, 0) + 1
    assert counts == per_window
    assert count_fingerprint(conn, [1, 2], lo, hi) == (
        sum(per_window.values()),
        sum(n * ((w // CHUNK_NS) % 1_000_003) for w, n in per_window.items()),
    )
    conn.close()


def test_a_second_connection_writing_is_noticed(tmp_path: Path) -> None:
    """Two writers on one file (two gateways): neither stores a time the other stored."""
    one = open_store(tmp_path)
    two = connect(tmp_path / "store.sqlite")
    w1, w2 = ChunkWriter(one), ChunkWriter(two)
    assert write(one, w1, [(1, T0, 1.0, 0)]) == 1
    assert write(two, w2, [(1, T0 + MINUTE, 2.0, 0)]) == 1
    # w1 last saw T0 as the newest; the other connection's commit must make it look again.
    assert write(one, w1, [(1, T0 + MINUTE, 9.0, 0), (1, T0 + 2 * MINUTE, 3.0, 0)]) == 1
    assert as_list(read_all(one, 1)) == [
        (T0, 1.0, 0),
        (T0 + MINUTE, 2.0, 0),
        (T0 + 2 * MINUTE, 3.0, 0),
    ]


def test_rewrite_range_keeps_what_is_outside(tmp_path: Path) -> None:
    conn = open_store(tmp_path)
    writer = ChunkWriter(conn)
    write(conn, writer, [(1, T0 + k * MINUTE, float(k), 0) for k in range(40)])
    conn.execute("BEGIN IMMEDIATE")
    before, after = rewrite_range(
        conn, 1, T0 + 10 * MINUTE, T0 + 20 * MINUTE, Run([T0 + 12 * MINUTE], [12.0])
    )
    conn.commit()
    assert (before, after) == (10, 1)
    kept = [t for t in read_all(conn, 1).ts]
    assert kept == [T0 + k * MINUTE for k in [*range(10), 12, *range(20, 40)]]
    # One chunk per window afterwards.
    windows = conn.execute("SELECT ts_first / ? FROM sample_chunks", (CHUNK_NS,)).fetchall()
    assert len(windows) == len(set(windows))


def test_a_version_1_store_is_converted(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE series (id INTEGER PRIMARY KEY, asset TEXT NOT NULL, signal TEXT NOT NULL,
            unit TEXT, UNIQUE (asset, signal));
        CREATE TABLE samples (series_id INTEGER NOT NULL, ts_ns INTEGER NOT NULL, value,
            vtype INTEGER NOT NULL, quality INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (series_id, ts_ns)) WITHOUT ROWID;
        INSERT INTO series VALUES (1, 'a/b/c/d', 'state', NULL), (2, 'a/b/c/d', 'auto', NULL);
        """
    )
    # vtype 0 float, 1 int, 2 bool, 3 str (version 1 contract).
    old.executemany(
        "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
        [
            (1, T0, "running", 3, 0),
            (1, T0 + CHUNK_NS + 5, "fault", 3, 2),
            (2, T0, 1, 2, 0),
            (2, T0 + 1, 7, 1, 0),
            (2, T0 + 2, 2.5, 0, 1),
        ],
    )
    old.commit()
    old.close()
    conn = connect(db)
    assert migrate(conn) == 5
    assert as_list(read_all(conn, 1)) == [(T0, "running", 0), (T0 + CHUNK_NS + 5, "fault", 2)]
    assert same(as_list(read_all(conn, 2)), [(T0, True, 0), (T0 + 1, 7, 0), (T0 + 2, 2.5, 1)])
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'samples'").fetchone() is None
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)


def test_many_chunks_of_any_size_read_back_in_order(tmp_path: Path) -> None:
    """Chunk arrays of every MessagePack size class (fixarray, array 16, array 32)."""
    conn = open_store(tmp_path)
    writer = ChunkWriter(conn)
    sizes = [1, 15, 16, 70_000, 3]
    expected: list[tuple[int, object, int]] = []
    t = T0
    for size in sizes:  # one write per size: each lands in its own chunk
        batch = [(1, t + k, float(k), 0) for k in range(size)]
        write(conn, writer, batch)
        expected += [(ts, v, 0) for _, ts, v, _ in batch]
        t += size
    assert same(as_list(read_range(conn, 1, T0, t)), expected)
    assert read_times(conn, 1, T0 + 10, t - 2) == [e[0] for e in expected][10:-2]
