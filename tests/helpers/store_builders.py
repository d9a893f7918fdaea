"""Builders shared by the KPI and API tests: a factory.yaml and a SQLite store in tmp dirs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import yaml

from karkhana.models import SampleValue, to_ns
from karkhana.storage.sqlite_schema import QUALITY_CODES, connect, encode_value

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
    """Store samples the way the gateway does (schema contract); returns rows written."""
    conn = connect(db)
    written = 0
    try:
        series: dict[tuple[str, str], int] = {}
        for row in rows:
            asset, signal, ts, value = row[:4]
            quality = row[4] if len(row) == 5 else "good"
            key = (asset, signal)
            if key not in series:
                conn.execute(
                    "INSERT OR IGNORE INTO series (asset, signal) VALUES (?, ?)", (asset, signal)
                )
                series[key] = conn.execute(
                    "SELECT id FROM series WHERE asset = ? AND signal = ?", key
                ).fetchone()[0]
            raw, vtype = encode_value(value)
            conn.execute(
                "INSERT OR IGNORE INTO samples (series_id, ts_ns, value, vtype, quality) "
                "VALUES (?, ?, ?, ?, ?)",
                (series[key], to_ns(ts), raw, int(vtype), QUALITY_CODES[quality]),
            )
            written += 1
        conn.commit()
    finally:
        conn.close()
    return written
