"""Retention and downsampling of the SQLite store (real SQLite files in tmp dirs)."""

from __future__ import annotations

import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.deadletters import DeadLetter
from gateway.retention import RetentionPolicy, RetentionRunner, SqliteRetention
from gateway.settings import load_settings
from gateway.stores import Batch, SqliteStore
from karkhana.config.factory import load_factory
from karkhana.errors import ConfigError
from karkhana.models import SampleValue
from services.kpi import compute_machine
from services.store import open_reader
from tests.helpers.servers import wait_until
from tests.helpers.store_builders import Row, write_factory, write_samples
from tests.helpers.stored import stored_samples

M1 = "plant/a/l/m1"
DAY = datetime(2024, 5, 6, tzinfo=UTC)
DAY_NS = 86_400 * 1_000_000_000


def ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def rows_of(db: Path, signal: str) -> list[tuple[int, object]]:
    return [(r.ts_ns, r.value) for r in stored_samples(db) if r.signal == signal]


def at(minutes: float) -> datetime:
    return DAY + timedelta(minutes=minutes)


def test_retention_deletes_old_samples_but_keeps_the_value_in_force(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    write_samples(
        db,
        [
            (M1, "state", at(0), 1),
            (M1, "state", at(10), 2),
            (M1, "state", at(20), 1),  # newest before the cutoff at 30 min: kept
            (M1, "state", at(40), 3),
            (M1, "power", at(5), 1.5),
            (M1, "power", at(29), 2.5),  # kept
            (M1, "mode", at(50), "auto"),  # only after the cutoff: untouched
        ],
    )
    now = ns(at(30)) + DAY_NS  # cutoff = now - 1 day = 30 min
    report = SqliteRetention(db, RetentionPolicy(retention_days=1)).run_once(now)
    assert report.samples_deleted == 3
    assert rows_of(db, "state") == [(ns(at(20)), 1), (ns(at(40)), 3)]
    assert rows_of(db, "power") == [(ns(at(29)), 2.5)]
    assert rows_of(db, "mode") == [(ns(at(50)), "auto")]
    again = SqliteRetention(db, RetentionPolicy(retention_days=1)).run_once(now)
    assert again.removed == 0


def test_retention_of_dead_letters(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = SqliteStore.open(db)
    letters = [DeadLetter(ns(at(m)), "t", f"r{m}", b"x", 1) for m in (0, 10, 20, 30, 40)]
    store.write(Batch(dead_letters=letters))
    store.close()
    policy = RetentionPolicy(deadletter_retention_days=1, chunk_rows=2)
    report = SqliteRetention(db, policy).run_once(ns(at(25)) + DAY_NS)
    assert report.dead_letters_deleted == 3
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT reason FROM dead_letters ORDER BY id")] == [
        "r30",
        "r40",
    ]
    conn.close()


def gauge_rows() -> tuple[list[Row], list[tuple[int, float]]]:
    """power at 1 Hz (with jitter) for 10 minutes, and the samples downsampling keeps."""
    rng = random.Random(7)
    rows: list[Row] = []
    by_minute: dict[int, list[tuple[int, float]]] = {}
    t = DAY
    while t < at(10):
        value = round(rng.uniform(0, 50), 3)
        rows.append((M1, "power", t, value))
        minute = (ns(t) // 60_000_000_000) * 60_000_000_000
        by_minute.setdefault(minute, []).append((ns(t), value))
        t += timedelta(milliseconds=rng.randint(500, 1500))
    kept = [p for points in by_minute.values() for p in {points[0], points[-1]}]
    return rows, sorted(kept)


@pytest.mark.parametrize("chunk_rows", [5000, 7, 1])
def test_downsampling_keeps_first_and_last_float_of_each_bucket(
    tmp_path: Path, chunk_rows: int
) -> None:
    db = tmp_path / "s.sqlite"
    gauge, kept = gauge_rows()
    raw_floats: list[Row] = [
        (M1, "state", at(m / 10), float(m % 3))
        for m in range(50)  # 'state*': raw
    ]
    raw_floats += [(M1, "count_metres", at(m / 10), m * 0.25) for m in range(50)]
    ints_and_text: list[Row] = [(M1, "temperature", at(m / 10), m) for m in range(50)]
    ints_and_text += [(M1, "temperature", at(m / 10 + 0.01), f"t{m}") for m in range(50)]
    recent = [(M1, "power", at(2 * 1440 + m / 10), float(m)) for m in range(30)]
    write_samples(db, [*gauge, *raw_floats, *ints_and_text, *recent])
    policy = RetentionPolicy(downsample_after_days=1, chunk_rows=chunk_rows)
    now = ns(at(1440 + 30))  # everything of the first 30 minutes is older than a day
    report = SqliteRetention(db, policy).run_once(now)
    recent_kept = [(ns(r[2]), r[3]) for r in recent]
    assert rows_of(db, "power") == kept + recent_kept
    assert report.samples_downsampled == len(gauge) - len(kept)
    assert len(kept) <= 20  # ten one-minute buckets
    assert len(rows_of(db, "state")) == 50
    assert len(rows_of(db, "count_metres")) == 50
    assert len(rows_of(db, "temperature")) == 100
    # A second pass finds the range done (the watermark) and removes nothing.
    assert SqliteRetention(db, policy).run_once(now).removed == 0


def plant_day() -> list[Row]:
    """Four hours of a machine: state changes, counters, float gauges, a 10-minute outage.

    The total counter counts metres of cloth (floats): only the keep-raw list protects it.
    """
    rng = random.Random(11)
    rows: list[Row] = []
    t = DAY.replace(hour=6)
    end = DAY.replace(hour=10)
    count = 0.0
    reject = 0
    energy = 100.0
    state: SampleValue = 1
    while t < end:
        if DAY.replace(hour=8) <= t < DAY.replace(hour=8, minute=10):
            t += timedelta(seconds=1)  # nothing arrives during the outage
            continue
        if rng.random() < 0.004:
            states: list[SampleValue] = [1, 1, 2, 3, 4, "running", "fault"]
            state = rng.choice(states)
            rows.append((M1, "state", t, state))
        if state in (1, "running") and rng.random() < 0.5:
            count = round(count + rng.uniform(0.5, 1.5), 3)
            reject += rng.random() < 0.05
            rows.append((M1, "count_total", t, count))
            rows.append((M1, "count_reject", t, reject))
        energy += rng.uniform(0, 0.01)
        rows.append((M1, "energy", t, energy))
        rows.append((M1, "power", t, rng.uniform(5, 40)))
        rows.append((M1, "temperature", t, rng.uniform(20, 80)))
        t += timedelta(milliseconds=rng.randint(300, 2000))
    return rows


def test_downsampling_leaves_every_kpi_component_unchanged(tmp_path: Path) -> None:
    factory = load_factory(
        write_factory(
            tmp_path / "factory.yaml",
            machines={M1: {"ideal_cycle_s": 1.5}},
            shifts=[{"name": "a", "start": "06:00", "end": "14:00"}],
        )
    )
    (ref,) = factory.machines()
    db = tmp_path / "s.sqlite"
    write_samples(db, plant_day())
    windows = [
        (DAY.replace(hour=6), DAY.replace(hour=14)),
        (DAY.replace(hour=7, minute=13, second=27), DAY.replace(hour=8, minute=41, second=5)),
        (DAY.replace(hour=8, minute=4), DAY.replace(hour=8, minute=12, second=30)),
        (DAY.replace(hour=9, minute=59, second=59), DAY.replace(hour=10, minute=30)),
    ]

    def components() -> list[object]:
        with open_reader(db) as reader:
            return [compute_machine(reader, ref, a, b, 300.0) for a, b in windows]

    before = components()
    power_before = len(rows_of(db, "power"))
    policy = RetentionPolicy(downsample_after_days=1, downsample_bucket_s=60, chunk_rows=500)
    report = SqliteRetention(db, policy).run_once(ns(DAY) + 2 * DAY_NS)
    assert report.samples_downsampled > 0.9 * 2 * power_before  # power and temperature
    assert len(rows_of(db, "power")) < power_before / 10
    assert components() == before


def test_a_stopped_pass_removes_nothing_and_keeps_the_range_for_later(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    gauge, kept = gauge_rows()
    write_samples(db, gauge)
    retention = SqliteRetention(db, RetentionPolicy(downsample_after_days=1))
    stop = threading.Event()
    stop.set()
    assert retention.run_once(ns(at(3000)), stop).removed == 0
    assert retention.run_once(ns(at(3000))).samples_downsampled == len(gauge) - len(kept)


def test_runner_passes_in_its_thread_until_stopped(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    write_samples(db, [(M1, "power", at(0), 1.0), (M1, "power", at(1), 2.0)])
    runner = RetentionRunner(SqliteRetention(db, RetentionPolicy(retention_days=1)), 3600)
    with runner:
        wait_until(lambda: runner.passes >= 1, 10.0, "the first retention pass")
    assert runner.last_report is not None
    assert runner.last_report.samples_deleted == 1  # at(0); at(1) is the value in force
    assert rows_of(db, "power") == [(ns(at(1)), 2.0)]


def test_settings_refuse_downsampling_after_retention() -> None:
    with pytest.raises(ConfigError, match="downsample_after_days"):
        load_settings(retention_days=7, downsample_after_days=7)


def test_settings_turn_into_a_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARKHANA_GATEWAY_DOWNSAMPLE_KEEP_RAW", '["state*", "spindle_rpm"]')
    settings = load_settings(retention_days=90, downsample_after_days=7)
    policy = settings.retention_policy()
    assert policy.retention_days == 90
    assert policy.downsample_after_days == 7
    assert policy.keeps_raw("spindle_rpm") and policy.keeps_raw("state.code")
    assert not policy.keeps_raw("count_total")  # the patterns replace the defaults
    defaults = load_settings().retention_policy()
    assert (defaults.removes_data, defaults.compact_after_s) == (False, 3600.0)
    assert load_settings(compact_after_s=0).retention_policy().enabled is False


def test_compaction_merges_small_chunks_and_keeps_every_sample(tmp_path: Path) -> None:
    """A slow series gets one chunk per batch; closed windows end up as one chunk each."""
    db = tmp_path / "store.sqlite"
    batches = [[(M1, "temp", at(k), 20.0 + k), (M1, "state", at(k), "running")] for k in range(40)]
    expected: list[tuple[str, int, object]] = []
    for batch in batches:  # one write per batch, as the gateway does at low rates
        write_samples(db, batch)
        expected += [(signal, ns(ts), value) for _, signal, ts, value in batch]
    chunks_before = chunk_rows(db)
    assert chunks_before == 80
    retention = SqliteRetention(db, RetentionPolicy(compact_after_s=600))
    report = retention.run_once(ns(at(40)) + 3600 * 10**9)
    # 40 minutes of samples span three 15-minute windows, per signal.
    assert chunk_rows(db) == 2 * 3
    assert report.chunks_compacted == chunks_before - 6
    assert report.removed == 0
    stored = sorted((r.signal, r.ts_ns, r.value) for r in stored_samples(db))
    assert stored == sorted(expected)
    # A second pass has nothing left to do.
    assert retention.run_once(ns(at(40)) + 3600 * 10**9).chunks_compacted == 0


def chunk_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM sample_chunks").fetchone()[0])
    finally:
        conn.close()
