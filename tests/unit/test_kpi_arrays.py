"""The array reads of the SQLite store and the bucket table a cold report writes.

- ``SqliteReader.arrays`` / ``time_array`` hand out exactly the samples the test wrote
  (values of every type, qualities, samples written late into overlapping chunks), as
  ``points`` / ``sample_times`` do.
- The sweep equals the engine bucket by bucket also for counters it sums in sample order
  (fractional values, values too large to sum exactly as floats).
- A cold report stores every bucket of the window, each bucket row equal to the engine's
  direct computation of that bucket (``compute_machine``), and hour rows equal to SQLite's
  own sums of the bucket rows, also for windows that start and end inside an hour and for
  buckets recomputed after late data.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from karkhana.config.factory import MachineRef, load_factory
from karkhana.models import Quality, SampleValue, to_ns
from services.catalog import Level
from services.kpi import compute_machine
from services.kpi.buckets import BUCKET_NS, PeriodKind, _engine_buckets, machine_buckets
from services.kpi.source import Point
from services.kpi_store import HOURS, TABLE, KpiStore, SampleCounter, _q, kpi_path
from services.rollup import period_report
from services.store import open_reader
from tests.helpers.store_builders import Row, write_factory, write_samples
from tests.unit.test_kpi_sweep import MemorySource, assert_same, machine_data

DAY = datetime(2024, 5, 6, tzinfo=UTC)
M1 = "plant/area/line/m1"
M2 = "plant/area/line/m2"
SHIFTS: list[dict[str, object]] = [
    {"name": "a", "start": "06:00", "end": "14:00", "breaks": [{"start": "10:00", "end": "10:30"}]},
    {"name": "b", "start": "14:00", "end": "22:00", "breaks": [{"start": "18:00", "end": "18:20"}]},
]
STATES: list[SampleValue] = ["running", "running", "idle", "fault", "setup", "off", "??", 1, True]


def _at(second: float) -> datetime:
    return DAY + timedelta(seconds=second)


def _machine_rows(machine: str, seed: int, late: bool = False) -> list[Row]:
    """A day of states (every kind of value, some bad), counters with resets and a text
    sample, and a power signal; ``late``: only every third sample (the rest comes later)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    t = 1800.0
    while t < 23 * 3600:
        quality = "bad" if rng.random() < 0.05 else "good"
        rows.append((machine, "state", _at(t), rng.choice(STATES), quality))
        t += rng.choice([5, 40, 90, 119, 121, 300, 900, 2400]) + rng.choice([0, 0.5])
    total = 0
    for k, s in enumerate(range(600, 24 * 3600, 300)):
        total = rng.randint(0, 5) if rng.random() < 0.02 else total + rng.randint(0, 270)
        value: SampleValue = "n/a" if k == 40 else total
        rows.append((machine, "count_total", _at(s), value))
        rows.append((machine, "count_reject", _at(s), total // 30))
    rows += [(machine, "power", _at(s), 1.5) for s in range(0, 24 * 3600, 1000)]
    if late:
        return rows[::3]
    return rows


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path]:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={
            M1: {"ideal_cycle_s": 1.0, "short_stop_threshold_s": 120},
            M2: {"ideal_cycle_s": 2.0, "short_stop_threshold_s": 600, "startup_window_s": 600},
        },
        shifts=SHIFTS,
    )
    db = tmp_path / "store.sqlite"
    write_samples(db, _machine_rows(M1, seed=1) + _machine_rows(M2, seed=2))
    return factory, db


def test_array_reads_hold_the_samples_written(tmp_path: Path) -> None:
    rows = _machine_rows(M1, seed=5)
    db = tmp_path / "store.sqlite"
    # Two thirds first, the rest later: later samples land in chunks overlapping earlier ones.
    early = [r for i, r in enumerate(rows) if i % 3]
    write_samples(db, early)
    write_samples(db, [r for i, r in enumerate(rows) if not i % 3])
    lo, hi = to_ns(_at(3000)), to_ns(_at(20 * 3600 + 7))
    with open_reader(db) as reader:
        for signal in ("state", "count_total", "power", "missing"):
            written = sorted(
                (to_ns(r[2]), r[3], Quality(r[4] if len(r) == 5 else "good"))
                for r in rows
                if r[1] == signal and lo <= to_ns(r[2]) < hi
            )
            got = reader.arrays(M1, signal, lo, hi)
            assert got.ts.dtype.name == "int64"
            triples = [
                (int(t), v, got.quality(i))
                for i, (t, v) in enumerate(zip(got.ts, got.values, strict=True))
            ]
            assert triples == written, signal
            assert [type(v) for _, v, _ in triples] == [type(v) for _, v, _ in written]
            assert got.points() == list(reader.points(M1, signal, lo, hi))
        times = reader.time_array(M1, lo, hi)
        every = sorted({to_ns(r[2]) for r in rows})
        before = max(t for t in every if t < lo)
        assert times.tolist() == [before, *(t for t in every if lo <= t < hi)]
        assert times.tolist() == reader.sample_times(M1, lo, hi)
        # Nothing before or in the range, an unknown asset, a store file not there yet.
        assert reader.time_array(M1, 0, 10**9).tolist() == []
        assert reader.time_array(M2, lo, hi).tolist() == []
        assert len(reader.arrays(M2, "state", lo, hi)) == 0
    with open_reader(tmp_path / "missing.sqlite") as reader:
        assert reader.time_array(M1, lo, hi).tolist() == []
        assert len(reader.arrays(M1, "state", lo, hi)) == 0


def _report(factory: Path, db: Path, start: datetime, end: datetime) -> None:
    refs = load_factory(factory).machines()
    store = KpiStore.open(kpi_path(db))
    counter = SampleCounter(db)
    try:
        with open_reader(db) as reader:
            period_report(
                store, counter, reader, refs, start, end, PeriodKind.HOUR, Level.MACHINE, 300.0
            )
    finally:
        counter.close()
        store.close()


def _check_table(factory: Path, db: Path, start: datetime, end: datetime) -> None:
    """Every bucket of the window stored, equal to the engine on its window alone; every
    hour row the sum of its stored buckets."""
    config = load_factory(factory)
    store = KpiStore.open(kpi_path(db))
    try:
        conn = store._conn
        lo, hi = to_ns(start), to_ns(end)
        starts = list(range(lo, hi, BUCKET_NS))
        with open_reader(db) as reader:
            for machine in (M1, M2):
                stored = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT start_ns FROM {TABLE} WHERE machine = ? AND start_ns >= ? "
                        "AND start_ns < ? ORDER BY start_ns",
                        (machine, lo, hi),
                    )
                ]
                assert stored == starts, machine
                sums = store.sums([machine], [(s, s + BUCKET_NS) for s in starts])
                ref = config.machine(machine)
                for i, s in enumerate(starts):
                    at = datetime.fromtimestamp(s / 1e9, UTC)
                    want = compute_machine(reader, ref, at, at + timedelta(minutes=15), 300.0)
                    got = sums[(machine, i)]
                    assert got.flags == want.flags, (machine, at)
                    for name, value in want.as_dict().items():
                        if isinstance(value, int | float):
                            assert getattr(got, name) == pytest.approx(value, abs=1e-9), (
                                machine,
                                at,
                                name,
                            )
                        elif isinstance(value, dict):
                            mapping = getattr(got, name)
                            for key, v in value.items():
                                assert mapping.get(key, 0.0) == pytest.approx(v, abs=1e-9)
        # The hour rows against SQLite's own sums of the bucket rows.
        numbers = store._number_columns()
        hour_rows = conn.execute(
            f"SELECT machine, start_ns, buckets, {', '.join(map(_q, numbers))}, flags "
            f"FROM {HOURS} ORDER BY 1, 2"
        ).fetchall()
        sql_sums = conn.execute(
            f"SELECT machine, start_ns - start_ns % 3600000000000, COUNT(*), "
            f"{', '.join(f'SUM({_q(n)})' for n in numbers)}, "
            f"GROUP_CONCAT(DISTINCT NULLIF(flags, '')) FROM {TABLE} GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        assert [r[:3] for r in hour_rows] == [r[:3] for r in sql_sums]
        for got_row, want_row in zip(hour_rows, sql_sums, strict=True):
            assert got_row[3:-1] == pytest.approx(want_row[3:-1], abs=1e-9), got_row[:2]
            assert set((got_row[-1] or "").split(",")) == set((want_row[-1] or "").split(","))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("start_s", "end_s"),
    [(4 * 3600, 22 * 3600), (4 * 3600 + 900, 21 * 3600 + 2700), (5 * 3600 + 1800, 5 * 3600 + 2700)],
    ids=["whole-hours", "inside-hours", "one-bucket"],
)
def test_a_cold_report_stores_every_bucket_and_its_hours(
    store: tuple[Path, Path], start_s: int, end_s: int
) -> None:
    factory, db = store
    start, end = _at(start_s), _at(end_s)
    _report(factory, db, start, end)
    _check_table(factory, db, start, end)


def test_late_data_rewrites_buckets_and_hours(tmp_path: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 1.0}},
        shifts=SHIFTS,
    )
    db = tmp_path / "store.sqlite"
    write_samples(db, _machine_rows(M1, seed=3, late=True) + _machine_rows(M2, seed=4))
    start, end = _at(4 * 3600 + 900), _at(22 * 3600)
    _report(factory, db, start, end)
    write_samples(db, _machine_rows(M1, seed=3))
    _report(factory, db, start, end)
    _check_table(factory, db, start, end)


# --- counters the sweep sums in sample order ---------------------------------------------


def _shifted_counters(source: MemorySource, offset: float) -> MemorySource:
    """The same data with ``offset`` added to every numeric counter value: fractional or
    huge values take the sweep's in-order path, and the engine's result moves with them."""
    series = {}
    for signal, points in source.series.items():
        if signal in ("count_total", "count_reject"):
            points = [
                Point(p.ts_ns, p.value + offset, p.quality)
                if isinstance(p.value, int | float) and not isinstance(p.value, bool)
                else p
                for p in points
            ]
        series[signal] = points
    return MemorySource(source.asset, series)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(machine_data(), st.sampled_from([0.25, 2.0**52]))
def test_fractional_and_huge_counters_equal_the_engine_on_each_bucket(
    case: tuple[MachineRef, MemorySource, int, int], offset: float
) -> None:
    ref, source, start, end = case
    source = _shifted_counters(source, offset)
    fast = machine_buckets(source, ref, start, end, max_gap_s=300)
    reference = _engine_buckets(source, ref, start, end, max_gap_s=300)
    for got, want in zip(fast, reference, strict=True):
        assert_same(got, want)
