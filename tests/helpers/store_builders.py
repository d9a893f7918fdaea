"""Builders shared by the KPI and API tests: a factory.yaml and a SQLite store in tmp dirs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import yaml

from karkhana.models import SampleValue, to_ns
from karkhana.storage.sqlite_chunks import ChunkWriter
from karkhana.storage.sqlite_schema import QUALITY_CODES, connect

Row = tuple[str, str, datetime, SampleValue] | tuple[str, str, datetime, SampleValue, str]


def write_factory(
    path: Path,
    *,
    machines: dict[str, dict[str, object]],
    shifts: list[dict[str, object]],
    timezone: str = "UTC",
    short_stop_threshold_s: float = 120,
    site_name: str | None = None,
) -> Path:
    """A factory.yaml with the given machines (``site/area/line/machine`` -> its keys)."""
    sites: dict[str, dict[str, dict[str, list[dict[str, object]]]]] = {}
    for full_path, spec in machines.items():
        site, area, line, machine = full_path.split("/")
        sites.setdefault(site, {}).setdefault(area, {}).setdefault(line, []).append(
            {"id": machine, **spec}
        )
    doc = {
        "version": 1,
        "short_stop_threshold_s": short_stop_threshold_s,
        "sites": [
            {
                "id": site,
                "name": site_name,
                "timezone": timezone,
                "calendar": {"shifts": shifts},
                "areas": [
                    {
                        "id": area,
                        "lines": [{"id": line, "machines": ms} for line, ms in lines.items()],
                    }
                    for area, lines in areas.items()
                ],
            }
            for site, areas in sites.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def write_samples(db: Path, rows: Iterable[Row]) -> int:
    """Store samples the way the gateway does (schema contract): a repeated (series, ts)
    keeps the first value. Returns the rows given."""
    conn = connect(db)
    given = 0
    try:
        per_series: dict[tuple[str, str], tuple[list[int], list[SampleValue], list[int]]] = {}
        for row in rows:
            asset, signal, ts, value = row[:4]
            quality = row[4] if len(row) == 5 else "good"
            run = per_series.setdefault((asset, signal), ([], [], []))
            run[0].append(to_ns(ts))
            run[1].append(value)
            run[2].append(QUALITY_CODES[quality])
            given += 1
        conn.execute("BEGIN IMMEDIATE")
        chunks = ChunkWriter(conn)
        chunks.begin()
        for (asset, signal), (ts_ns, values, qualities) in per_series.items():
            conn.execute(
                "INSERT OR IGNORE INTO series (asset, signal) VALUES (?, ?)", (asset, signal)
            )
            (sid,) = conn.execute(
                "SELECT id FROM series WHERE asset = ? AND signal = ?", (asset, signal)
            ).fetchone()
            chunks.add(sid, ts_ns, values, qualities if any(qualities) else None)
        chunks.flush()
        conn.commit()
    finally:
        conn.close()
    return given
