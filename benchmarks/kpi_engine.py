"""KPI engine benchmark: OEE of one 8-hour shift per machine, straight from raw samples.

Baseline, measured in the same run: reading the same machine's raw samples of the window
from SQLite (the I/O the computation cannot avoid). The ratio says how much the KPI maths
costs on top of that read. Prints figures and a final JSON line; asserts nothing.

    python benchmarks/kpi_engine.py [--machines 5] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from karkhana.config.factory import load_factory
from karkhana.models import to_ns
from karkhana.storage.sqlite_chunks import ChunkWriter, read_range
from karkhana.storage.sqlite_schema import connect
from services.kpi import compute_machine
from services.store import SqliteReader

SHIFT_START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
SHIFT_S = 8 * 3600


def build(workdir: Path, machines: int, seed: int) -> tuple[Path, Path, int]:
    factory = {
        "version": 1,
        "sites": [
            {
                "id": "bench",
                "timezone": "Asia/Karachi",
                "calendar": {
                    "shifts": [
                        {
                            "name": "a",
                            "start": "06:00",
                            "end": "14:00",
                            "breaks": [{"start": "10:30", "end": "11:00"}],
                        }
                    ]
                },
                "areas": [
                    {
                        "id": "area",
                        "lines": [
                            {
                                "id": "line",
                                "machines": [
                                    {"id": f"m{i:02d}", "ideal_cycle_s": 1.0}
                                    for i in range(machines)
                                ],
                            }
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
    rows_per_machine = 0
    for i in range(machines):
        asset = f"bench/area/line/m{i:02d}"
        series = {}
        for signal in ("state", "count_total", "count_reject", "temperature", "power"):
            cur = conn.execute(
                "INSERT INTO series (asset, signal) VALUES (?, ?) RETURNING id", (asset, signal)
            )
            series[signal] = cur.fetchone()[0]
        rows: list[tuple[int, int, Any]] = []
        total, rejects, running = 0, 0, True
        next_change = rng.uniform(60, 900)
        rows.append((series["state"], to_ns(SHIFT_START), "running"))
        for second in range(SHIFT_S):
            ts = SHIFT_START + timedelta(seconds=second)
            if second >= next_change:
                running = not running
                state = "running" if running else rng.choice(["idle", "fault", "setup"])
                rows.append((series["state"], to_ns(ts), state))
                next_change = second + (rng.uniform(60, 900) if running else rng.uniform(20, 600))
            if running:
                total += 1
                rejects += rng.random() < 0.02
                rows.append((series["count_total"], to_ns(ts), total))
                rows.append((series["count_reject"], to_ns(ts), rejects))
            rows.append((series["temperature"], to_ns(ts), 40 + rng.random()))
            rows.append((series["power"], to_ns(ts), 5.0 if running else 0.2))
        conn.commit()  # the series rows
        conn.execute("BEGIN IMMEDIATE")
        chunks = ChunkWriter(conn)
        chunks.begin()
        per_series: dict[int, tuple[list[int], list[Any]]] = {}
        for sid, ts_ns, value in rows:
            run = per_series.setdefault(sid, ([], []))
            run[0].append(ts_ns)
            run[1].append(value)
        for sid, (ts_list, values) in per_series.items():
            chunks.add(sid, ts_list, values)
        chunks.flush()
        conn.commit()
        rows_per_machine += len(rows)
    conn.commit()
    conn.close()
    return factory_path, db_path, rows_per_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 machines, 3 repeats")
    args = parser.parse_args()
    machines, repeat = (2, 3) if args.quick else (args.machines, args.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"building a store: {machines} machines x 8 h ...", flush=True)
        factory_path, db_path, _ = build(Path(tmp), machines, seed=1)
        factory = load_factory(factory_path)
        reader = SqliteReader.open(db_path)
        raw = connect(db_path, readonly=True)
        end = SHIFT_START + timedelta(seconds=SHIFT_S)
        kpi_ms: list[float] = []
        read_ms: list[float] = []
        fetched_rows: list[int] = []
        for _ in range(repeat):
            for ref in factory.machines():
                t0 = time.perf_counter()
                compute_machine(reader, ref, SHIFT_START, end, 300.0)
                kpi_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                fetched = 0  # raw baseline: every sample of the machine, decoded
                for sid in reader.asset_series(ref.path):
                    run = read_range(raw, sid, to_ns(SHIFT_START), to_ns(end))
                    fetched += len(run.values)
                fetched_rows.append(fetched)
                read_ms.append((time.perf_counter() - t0) * 1000)
        reader.close()
        raw.close()
    result = {
        "machines": machines,
        "samples_per_machine_shift": int(statistics.median(fetched_rows)),
        "kpi_shift_ms_median": round(statistics.median(kpi_ms), 1),
        "raw_read_ms_median": round(statistics.median(read_ms), 1),
        "kpi_over_raw_read_ratio": round(statistics.median(kpi_ms) / statistics.median(read_ms), 2),
    }
    rows = result["samples_per_machine_shift"]
    print(f"OEE of one machine-shift from {rows} raw samples: {result['kpi_shift_ms_median']} ms")
    print(f"reading those samples alone: {result['raw_read_ms_median']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
