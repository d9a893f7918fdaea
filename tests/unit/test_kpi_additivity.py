"""Components are additive over adjacent windows, and agree with a naive second-by-second
reading of docs/kpi.md, on a random-ish timeline stored in SQLite."""

from __future__ import annotations

import bisect
import itertools
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from karkhana.config.factory import load_factory
from services.kpi import OeeComponents, compute_machine
from services.store import open_reader
from tests.helpers.store_builders import Row, write_factory, write_samples

MACHINE = "plant/area/line/m1"
DAY = datetime(2024, 5, 6, tzinfo=UTC)
SHIFTS: list[dict[str, object]] = [
    {"name": "a", "start": "06:00", "end": "14:00", "breaks": [{"start": "10:00", "end": "10:30"}]},
    {"name": "b", "start": "14:00", "end": "22:00", "breaks": [{"start": "18:00", "end": "18:20"}]},
]
THRESHOLD = 120
STATES = ["running", "idle", "stopped", "fault", "setup", "planned_stop", "off", "??"]
WEIGHTS = [8, 2, 3, 2, 1, 1, 1, 1]


def _timeline(seed: int) -> tuple[list[tuple[int, str]], list[tuple[int, int]], list[int]]:
    """(second, state) samples, (second, total counter) samples, power sample seconds."""
    rng = random.Random(seed)
    states: list[tuple[int, str]] = []
    t = 3600
    while t < 23 * 3600:
        states.append((t, rng.choices(STATES, WEIGHTS)[0]))
        t += rng.choice([5, 20, 40, 60, 90, 119, 121, 300, 900, 2400])
    states.append((t, "running"))
    counts: list[tuple[int, int]] = []
    value = 0
    t = 3000
    while t < 24 * 3600:
        value = rng.randint(0, 5) if rng.random() < 0.02 else value + rng.randint(0, 40)
        counts.append((t, value))
        t += rng.randint(1, 400)
    power = sorted(rng.sample(range(0, 24 * 3600), 400))
    return states, counts, power


def _at(second: int) -> datetime:
    return DAY + timedelta(seconds=second)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path, list[tuple[int, str]]]:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={MACHINE: {"ideal_cycle_s": 1.5, "short_stop_threshold_s": THRESHOLD}},
        shifts=SHIFTS,
    )
    states, counts, power = _timeline(seed=11)
    rows: list[Row] = [(MACHINE, "state", _at(s), v) for s, v in states]
    rows += [(MACHINE, "count_total", _at(s), v) for s, v in counts]
    rows += [(MACHINE, "count_reject", _at(s), v // 20) for s, v in counts]
    rows += [(MACHINE, "power", _at(s), 1.0) for s in power]
    db = tmp_path / "store.sqlite"
    write_samples(db, rows)
    return factory, db, states


def _components(factory: Path, db: Path, a: int, b: int) -> OeeComponents:
    ref = load_factory(factory).machine(MACHINE)
    with open_reader(db) as reader:
        return compute_machine(reader, ref, _at(a), _at(b), max_gap_s=300)


def _assert_same(whole: OeeComponents, parts: OeeComponents) -> None:
    for name in ("planned_s", "run_s", "short_stop_s", "no_data_s", "planned_stop_s"):
        assert getattr(whole, name) == pytest.approx(getattr(parts, name), abs=1e-6), name
    assert dict(whole.down_s) == pytest.approx(dict(parts.down_s), abs=1e-6)
    assert whole.covered_s == pytest.approx(parts.covered_s, abs=1e-6)
    assert whole.window_s == pytest.approx(parts.window_s)
    assert (whole.total, whole.good) == (parts.total, parts.good)
    assert whole.ideal_s == pytest.approx(parts.ideal_s)


def test_adjacent_windows_add_up(store: tuple[Path, Path, list[tuple[int, str]]]) -> None:
    factory, db, states = store
    a, c = 2 * 3600, 22 * 3600 + 1800
    whole = _components(factory, db, a, c)
    assert whole.planned_s > 0 and whole.run_s > 0 and whole.short_stop_s > 0
    assert sum(whole.down_s.values()) > 0 and whole.total > 0
    # split points: inside stop events, on sample instants, at shift and break edges
    rng = random.Random(5)
    splits = [6 * 3600, 10 * 3600 + 60, 14 * 3600, 18 * 3600 + 5]
    splits += [s for s, _ in rng.sample(states[5:-5], 15)]
    splits += [s + 1 for s, _ in rng.sample(states[5:-5], 15)]
    for b in sorted({s for s in splits if a < s < c}):
        _assert_same(whole, _components(factory, db, a, b) + _components(factory, db, b, c))
    # and a day cut into hours
    hours = [a + 3600 * k for k in range(21)] + [c]
    total = OeeComponents()
    for lo, hi in itertools.pairwise(hours):
        total = total + _components(factory, db, lo, hi)
    _assert_same(whole, total)


def _planned(second: int) -> bool:
    t = (DAY + timedelta(seconds=second)).time()
    in_shift = time(6) <= t < time(22)
    in_break = time(10) <= t < time(10, 30) or time(18) <= t < time(18, 20)
    return in_shift and not in_break


def test_matches_second_by_second_reading(
    store: tuple[Path, Path, list[tuple[int, str]]],
) -> None:
    """Independent reference: walk every second of the window, find its state, and for a
    stop state walk the samples to the ends of its event."""
    factory, db, states = store
    a, c = 5 * 3600, 21 * 3600
    stops = {"idle", "stopped", "fault", "setup", "off"}
    starts = [s for s, _ in states]
    expect = {"run": 0, "short": 0, "no_data": 0, "planned_stop": 0, "calendar": 0}
    down = dict.fromkeys(sorted(stops), 0)
    for sec in range(a, c):
        if not _planned(sec):
            continue
        expect["calendar"] += 1
        i = bisect.bisect_right(starts, sec) - 1
        state = states[i][1] if i >= 0 else None
        if state == "running":
            expect["run"] += 1
        elif state == "planned_stop":
            expect["planned_stop"] += 1
        elif state in stops:
            lo = i
            while lo > 0 and states[lo - 1][1] in stops:
                lo -= 1
            hi = i
            while hi + 1 < len(states) and states[hi + 1][1] in stops:
                hi += 1
            length = states[hi + 1][0] - states[lo][0]
            if length < THRESHOLD:
                expect["run"] += 1
                expect["short"] += 1
            else:
                down[state] += 1
        else:
            expect["no_data"] += 1
    got = _components(factory, db, a, c)
    assert got.run_s == expect["run"]
    assert got.short_stop_s == expect["short"]
    assert got.no_data_s == expect["no_data"]
    assert got.planned_stop_s == expect["planned_stop"]
    assert got.planned_s == expect["calendar"] - expect["planned_stop"]
    assert {k: got.down_s[k] for k in down} == down
