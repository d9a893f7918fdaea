"""KPI report benchmark: OEE of 50 machines x 30 days grouped by shift.

Measures, in one run on one generated SQLite store (Asia/Karachi, three shifts with breaks):

- cold: the report recomputed from raw states and counters (an empty bucket table: every
  15-minute bucket is computed, stored, then summed per shift);
- warm: the same report from the bucket table, in steady state (the late-data check
  included: one fingerprint of the raw samples per machine);
- baseline: a straightforward pandas computation of the same figures from the same store
  (read the samples, build the state timeline, cut it at shift and break edges, classify
  stop events, sum per machine and shift; counter deltas with ``merge_asof``).

Prints figures and a final JSON line (``warm_ms``, ``cold_ms`` medians and their ratios to
the pandas time, ours over pandas'). Asserts nothing about time; it does check that both
computations give the same OEE figures.

    python benchmarks/kpi.py [--machines 50] [--days 30] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from karkhana.calendar import planned_intervals, shift_instances
from karkhana.config.factory import FactoryConfig, load_factory
from karkhana.models import to_ns
from karkhana.storage.sqlite_chunks import ChunkWriter, read_all
from karkhana.storage.sqlite_schema import connect
from services.catalog import Level
from services.kpi import compute_ratios
from services.kpi.buckets import PeriodKind
from services.kpi_store import KpiStore, SampleCounter, kpi_path
from services.rollup import period_report
from services.store import SqliteReader

TZ_OFFSET = timedelta(hours=5)  # Asia/Karachi
START = datetime(2026, 10, 1, tzinfo=UTC) - TZ_OFFSET  # local midnight
COUNTER_EVERY_S = 300
THRESHOLD_S = 120.0
IDEAL_S = 1.0
STOPS = ("idle", "fault", "setup")
SHIFTS = [
    {
        "name": "a",
        "start": "06:00",
        "end": "14:00",
        "breaks": [{"start": "08:30", "end": "08:45"}, {"start": "10:30", "end": "11:00"}],
    },
    {
        "name": "b",
        "start": "14:00",
        "end": "22:00",
        "breaks": [{"start": "16:30", "end": "16:45"}, {"start": "18:30", "end": "19:00"}],
    },
    {
        "name": "c",
        "start": "22:00",
        "end": "06:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat"],
        "breaks": [{"start": "02:00", "end": "02:30"}],
    },
]


def build(workdir: Path, machines: int, days: int, seed: int) -> tuple[Path, Path, int]:
    factory = {
        "version": 1,
        "short_stop_threshold_s": THRESHOLD_S,
        "sites": [
            {
                "id": "bench",
                "timezone": "Asia/Karachi",
                "calendar": {"shifts": SHIFTS},
                "areas": [
                    {
                        "id": "area",
                        "lines": [
                            {
                                "id": f"line-{line}",
                                "machines": [
                                    {"id": f"m{i:02d}", "ideal_cycle_s": IDEAL_S}
                                    for i in range(line, machines, 5)
                                ],
                            }
                            for line in range(min(5, machines))
                        ],
                    }
                ],
            }
        ],
    }
    factory_path = workdir / "factory.yaml"
    factory_path.write_text(yaml.safe_dump(factory))
    db_path = workdir / "store.sqlite"
    conn = connect(db_path)
    rng = random.Random(seed)
    t0 = int((START - timedelta(hours=12)).timestamp())
    t1 = int((START + timedelta(days=days, hours=6)).timestamp())
    written = 0
    for ref in load_factory(factory_path).machines():
        ids = {}
        for signal in ("state", "count_total", "count_reject"):
            cur = conn.execute(
                "INSERT INTO series (asset, signal) VALUES (?, ?) RETURNING id", (ref.path, signal)
            )
            ids[signal] = cur.fetchone()[0]
        rows: list[tuple[Any, ...]] = []
        # Alternate running (mean 20 min) and stops (mean 4 min; a third of them short).
        changes: list[tuple[int, str]] = []
        t, running = t0, True
        while t < t1:
            changes.append((t, "running" if running else rng.choice(STOPS)))
            t += int(rng.expovariate(1 / 1200)) + 1 if running else int(rng.expovariate(1 / 240))
            t += 1
            running = not running
        for ts, state in changes:
            rows.append((ids["state"], ts * 10**9, state))
        # Counters every 5 minutes: units made at 90 % of ideal speed while running.
        total = rejects = 0.0
        k = 0
        for ts in range(t0, t1, COUNTER_EVERY_S):
            while k + 1 < len(changes) and changes[k + 1][0] <= ts:
                k += 1
            if changes[k][1] == "running":
                made = int(COUNTER_EVERY_S * 0.9 / IDEAL_S)
                total += made
                rejects += rng.randint(0, max(1, made // 40))
            rows.append((ids["count_total"], ts * 10**9, int(total)))
            rows.append((ids["count_reject"], ts * 10**9, int(rejects)))
        written += write_rows(conn, rows)
    conn.commit()
    conn.close()
    return factory_path, db_path, written


def write_rows(conn: sqlite3.Connection, rows: list[tuple[int, int, Any]]) -> int:
    """(series id, ts_ns, value) rows into the store's chunks; returns the samples written."""
    per_series: dict[int, tuple[list[int], list[Any]]] = {}
    for sid, ts, value in rows:
        run = per_series.setdefault(sid, ([], []))
        run[0].append(ts)
        run[1].append(value)
    conn.commit()  # the series rows
    conn.execute("BEGIN IMMEDIATE")
    chunks = ChunkWriter(conn)
    chunks.begin()
    written = sum(chunks.add(sid, ts, values) for sid, (ts, values) in per_series.items())
    chunks.flush()
    conn.commit()
    return written


def read_rows(conn: sqlite3.Connection) -> list[tuple[str, str, int, Any]]:
    """Every stored sample as (asset, signal, ts_ns, value)."""
    out: list[tuple[str, str, int, Any]] = []
    for sid, asset, signal in conn.execute("SELECT id, asset, signal FROM series").fetchall():
        run = read_all(conn, sid)
        out += [(asset, signal, t, v) for t, v in zip(run.ts, run.values, strict=True)]
    return out


Figures = dict[tuple[str, str], float | None]


def ours(factory: FactoryConfig, db: Path, start: datetime, end: datetime) -> Figures:
    store = KpiStore.open(kpi_path(db))
    counter = SampleCounter(db)
    reader = SqliteReader.open(db)
    try:
        report, _ = period_report(
            store,
            counter,
            reader,
            factory.machines(),
            start,
            end,
            PeriodKind.SHIFT,
            Level.MACHINE,
            300.0,
        )
    finally:
        reader.close()
        counter.close()
        store.close()
    return {
        (pg.group.asset, pg.period.label): compute_ratios(pg.group.components).oee for pg in report
    }


def with_pandas(factory: FactoryConfig, db: Path, start: datetime, end: datetime) -> Figures:
    """The same OEE per machine and shift, the way one would write it with pandas."""
    refs = factory.machines()
    site = refs[0].site
    start_ns, end_ns = to_ns(start), to_ns(end)
    conn = sqlite3.connect(db)
    samples = pd.DataFrame(read_rows(conn), columns=["asset", "signal", "ts_ns", "value"])
    conn.close()
    shifts = pd.DataFrame(
        [
            (f"{i.day.isoformat()}/{i.name}", to_ns(max(i.start, start)), to_ns(min(i.end, end)))
            for i in shift_instances(site, start, end)
        ],
        columns=["shift", "s_start", "s_end"],
    )
    planned = planned_intervals(site, start, end)
    # Every edge at which something can change: shift and planned-time boundaries.
    edges = np.unique(
        np.concatenate(
            [
                shifts[["s_start", "s_end"]].to_numpy().ravel(),
                np.array([to_ns(x) for ab in planned for x in ab], dtype=np.int64),
                np.array([start_ns, end_ns], dtype=np.int64),
            ]
        )
    )
    p_starts = np.array([to_ns(a) for a, _ in planned], dtype=np.int64)
    p_ends = np.array([to_ns(b) for _, b in planned], dtype=np.int64)

    states = samples[samples.signal == "state"].sort_values(["asset", "ts_ns"])
    states = states.assign(is_stop=states.value.isin(STOPS))
    nxt = states.groupby("asset").ts_ns.shift(-1)
    states = states.assign(next_ts=nxt.fillna(end_ns).astype("int64"))
    event = (states.is_stop != states.groupby("asset").is_stop.shift()).cumsum()
    states = states.assign(event=event)
    length = states.groupby("event").next_ts.transform("max") - states.groupby(
        "event"
    ).ts_ns.transform("min")
    short = states.is_stop & (length < THRESHOLD_S * 1e9)
    states = states.assign(
        kind=np.where(
            states.value.eq("running") | short, "run", np.where(states.is_stop, "down", "other")
        )
    )
    # Cut the timeline at every edge: one row per (machine, piece), its kind carried forward.
    grid = pd.DataFrame(
        [(a, t) for a in states.asset.unique() for t in edges], columns=["asset", "ts_ns"]
    )
    timeline = (
        pd.concat([states[["asset", "ts_ns", "kind"]], grid])
        .sort_values(["asset", "ts_ns"], kind="stable")
        .reset_index(drop=True)
    )
    timeline["kind"] = timeline.groupby("asset").kind.ffill()
    timeline["end"] = timeline.groupby("asset").ts_ns.shift(-1)
    timeline = timeline.dropna(subset=["end"])
    timeline = timeline[(timeline.ts_ns >= start_ns) & (timeline.end <= end_ns)]
    idx = np.searchsorted(p_starts, timeline.ts_ns.to_numpy(), side="right") - 1
    in_plan = (idx >= 0) & (timeline.ts_ns.to_numpy() < p_ends[np.clip(idx, 0, None)])
    timeline = timeline[in_plan]
    timeline = pd.merge_asof(
        timeline.sort_values("ts_ns"), shifts, left_on="ts_ns", right_on="s_start"
    )
    timeline = timeline[timeline.ts_ns < timeline.s_end]
    timeline["dur"] = (timeline.end - timeline.ts_ns) / 1e9
    times = timeline.pivot_table(
        index=["asset", "shift"], columns="kind", values="dur", aggfunc="sum", fill_value=0.0
    )
    planned_s = times.sum(axis=1)

    counters = samples[samples.signal != "state"].assign(value=lambda d: d.value.astype(float))
    bounds = pd.concat(
        [
            shifts.assign(at=shifts.s_start, side="lo"),
            shifts.assign(at=shifts.s_end, side="hi"),
        ]
    ).sort_values("at")
    deltas = {}
    for signal in ("count_total", "count_reject"):
        series = counters[counters.signal == signal].sort_values("ts_ns")
        per = []
        for asset, group in series.groupby("asset"):
            at = pd.merge_asof(
                bounds.assign(at=bounds["at"] - 1),
                group[["ts_ns", "value"]],
                left_on="at",
                right_on="ts_ns",
            )
            wide = at.pivot_table(index="shift", columns="side", values="value")
            per.append((wide.hi - wide.lo).rename(asset))
        deltas[signal] = pd.concat(per, axis=1).stack().swaplevel().sort_index()
    total = deltas["count_total"].reindex(times.index, fill_value=0.0)
    rejects = deltas["count_reject"].reindex(times.index, fill_value=0.0)
    run = times.get("run", 0.0)
    availability = run / planned_s
    performance = (total * IDEAL_S / run).clip(upper=1.0)
    quality = (total - rejects) / total
    oee = availability * performance * quality
    return {(asset, shift): (None if pd.isna(v) else float(v)) for (asset, shift), v in oee.items()}


def median_ms(run: Callable[[], object], repeat: int, before: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 machines x 7 days, 2 repeats")
    args = parser.parse_args()
    machines, days, repeat = (5, 7, 2) if args.quick else (args.machines, args.days, args.repeat)
    start, end = START, START + timedelta(days=days)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"building a store: {machines} machines x {days} days ...", flush=True)
        factory_path, db, rows = build(Path(tmp), machines, days, seed=1)
        factory = load_factory(factory_path)
        kpi_file = kpi_path(db)

        def drop_buckets() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{kpi_file}{suffix}").unlink(missing_ok=True)

        def nothing() -> None:
            pass

        cold_ms = median_ms(lambda: ours(factory, db, start, end), repeat, drop_buckets)
        # Steady state: the first report after the buckets were computed records the raw
        # data span they rest on, the second its fingerprint; later ones check just that.
        ours(factory, db, start, end)
        ours(factory, db, start, end)
        warm_ms = median_ms(lambda: ours(factory, db, start, end), repeat, nothing)
        pandas_ms = median_ms(lambda: with_pandas(factory, db, start, end), repeat, nothing)
        mine = ours(factory, db, start, end)
        theirs = with_pandas(factory, db, start, end)
    diffs = [abs((mine[k] or 0.0) - (theirs.get(k) or 0.0)) for k in mine if mine[k] is not None]
    result = {
        "machines": machines,
        "days": days,
        "raw_samples": rows,
        "machine_shifts": len(mine),
        "max_oee_diff_vs_pandas_pp": round(max(diffs, default=0.0) * 100, 4),
        "pandas_ms": round(pandas_ms, 1),
        "warm_ms": round(warm_ms, 1),
        "cold_ms": round(cold_ms, 1),
        "warm_ratio_vs_pandas": round(warm_ms / pandas_ms, 3),
        "cold_ratio_vs_pandas": round(cold_ms / pandas_ms, 3),
    }
    print(f"{rows} raw samples; {len(mine)} machine-shifts")
    print(f"pandas: {result['pandas_ms']} ms, cold: {result['cold_ms']} ms, warm: {warm_ms:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
