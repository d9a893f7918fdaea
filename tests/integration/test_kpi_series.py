"""The KPI time series for Grafana: per machine and 15-minute bucket, components and ratios
in the SQLite bucket table and in InfluxDB's measurement ``kpi`` (a real ``influxd``).

Expected values are worked out by hand from the samples each test writes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.decode import NormalizedSample
from gateway.stores.base import Batch
from gateway.stores.influx import InfluxStore
from karkhana.models import to_ns
from karkhana.storage.influx_schema import InfluxTarget
from services.api import ApiSettings, create_app
from tests.helpers.api import api_client
from tests.helpers.influx_servers import Influxd, run_influxd
from tests.helpers.store_builders import Row, write_factory, write_samples

pytestmark = pytest.mark.integration

M1 = "plant/assembly/line-1/m1"


def at(hh: int, mm: int = 0) -> datetime:
    return datetime(2024, 5, 6, hh, mm, tzinfo=UTC)


# m1 runs 06:00-06:20, faults 06:20-06:40 (a long stop), runs again; 2 s per unit ideal,
# so 600 units in the first 20 minutes is full speed; 30 of them rejected.
ROWS: list[Row] = [
    (M1, "state", at(6), "running"),
    (M1, "state", at(6, 20), "fault"),
    (M1, "state", at(6, 40), "running"),
    (M1, "count_total", at(6), 0),
    (M1, "count_reject", at(6), 0),
    (M1, "count_total", at(6, 10), 300),
    (M1, "count_reject", at(6, 10), 30),
    (M1, "count_total", at(6, 20), 600),
    (M1, "count_reject", at(6, 20), 30),
]
QUERY = {"asset": M1, "from": "2024-05-06T06:00:00Z", "to": "2024-05-06T07:00:00Z"}


def check_first_two_buckets(rows: dict[int, dict[str, Any]]) -> None:
    first, second = rows[to_ns(at(6))], rows[to_ns(at(6, 15))]
    # 06:00-06:15: running; the counter moves 0 -> 300 (30 rejected) inside the bucket.
    assert first["planned_s"] == 900 and first["run_s"] == 900
    assert first["total"] == 300 and first["good"] == 270
    assert first["availability"] == 1.0
    assert first["performance"] == pytest.approx(600 / 900)
    assert first["quality"] == pytest.approx(0.9)
    # 06:15-06:30: running until 06:20, then the fault (long: 20 min) for 10 minutes; the
    # counter moves 300 -> 600 without rejects; performance is capped (600 s ideal > 300 s).
    assert second["run_s"] == 300 and second["down_s__fault"] == 600
    assert second["total"] == 300 and second["good"] == 300
    assert second["availability"] == pytest.approx(300 / 900)
    assert second["performance"] == 1.0 and second["oee"] == pytest.approx(300 / 900)


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )


def test_sqlite_bucket_table_holds_the_kpi_series(factory: Path, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    write_samples(db, ROWS)
    with api_client(create_app(ApiSettings(factory=factory, db=db)), "viewer") as client:
        response = client.get("/api/v1/kpi/oee", params={**QUERY, "bucket": "hour"})
        assert response.status_code == 200, response.text
    conn = sqlite3.connect(tmp_path / "store.kpi.sqlite")
    conn.row_factory = sqlite3.Row
    rows = {
        r["start_ns"]: dict(r)
        for r in conn.execute("SELECT * FROM kpi_buckets WHERE machine = ?", (M1,))
    }
    conn.close()
    assert len(rows) == 4
    check_first_two_buckets(rows)


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    with run_influxd(tmp_path / "influxd") as server:
        yield server


def test_influx_store_gets_the_kpi_measurement(
    influxd: Influxd, factory: Path, tmp_path: Path
) -> None:
    target = InfluxTarget(url=influxd.url, api="v1", database="plant", timeout_s=5)
    store = InfluxStore.open(target)
    try:
        samples = [NormalizedSample(a, s, to_ns(ts), v) for a, s, ts, v in ROWS]  # type: ignore[misc]
        store.write(Batch(samples=samples, received_ns=to_ns(at(7))))
    finally:
        store.close()
    settings = ApiSettings(
        factory=factory,
        store="influxdb",
        influx_url=influxd.url,
        influx_api="v1",
        influx_db="plant",
        keys_db=tmp_path / "keys.sqlite",
    )
    with api_client(create_app(settings), "viewer") as client:
        response = client.get("/api/v1/kpi/oee", params={**QUERY, "bucket": "hour"})
        assert response.status_code == 200, response.text
        (item,) = response.json()
    assert item["components"]["down_s"]["fault"] == 1_200
    body = influxd.query('SELECT * FROM "kpi" GROUP BY *', "plant")
    (series,) = body["results"][0]["series"]  # type: ignore[index]
    assert series["tags"] == {
        "asset": M1,
        "site": "plant",
        "area": "assembly",
        "line": "line-1",
        "machine": "m1",
        "bucket": "15m",
    }
    rows = {
        values[0]: dict(zip(series["columns"], values, strict=True)) for values in series["values"]
    }
    assert len(rows) == 4
    check_first_two_buckets(rows)
    assert rows[to_ns(at(6))]["open"] is False
