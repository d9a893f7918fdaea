"""The KPI publisher against a real ``influxd``: it writes the buckets, stop events and
canonical states of the publishing window, then only what is new or changed (late data,
a new bucket). Expected values are worked out by hand from the samples written."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.decode import NormalizedSample
from gateway.stores.base import Batch
from gateway.stores.influx import InfluxStore
from karkhana.config.factory import load_factory
from karkhana.models import SampleValue, to_ns
from karkhana.storage.influx_schema import InfluxTarget
from services.kpi_publisher import KpiPublisher
from tests.helpers.influx_servers import Influxd, run_influxd
from tests.helpers.store_builders import write_factory
from tests.integration.test_kpi_series import M1, ROWS, at, check_first_two_buckets

pytestmark = pytest.mark.integration

DB = "plant"
M2 = "plant/assembly/line-1/m2"  # in the factory, but never sends a sample


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    with run_influxd(tmp_path / "influxd") as server:
        yield server


def target(server: Influxd) -> InfluxTarget:
    return InfluxTarget(url=server.url, api="v1", database=DB, timeout_s=5)


def store(server: Influxd, rows: list[tuple[str, str, datetime, SampleValue]]) -> None:
    s = InfluxStore.open(target(server))
    try:
        samples = [NormalizedSample(a, sig, to_ns(ts), v) for a, sig, ts, v in rows]
        s.write(Batch(samples=samples, received_ns=to_ns(at(7))))
    finally:
        s.close()


def points(server: Influxd, q: str) -> dict[int, dict[str, Any]]:
    body = server.query(q, DB)
    out: dict[int, dict[str, Any]] = {}
    for series in body["results"][0].get("series", []):  # type: ignore[index]
        for values in series["values"]:
            row = {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
            out[row["time"]] = row
    return out


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_publisher_writes_the_window_then_only_what_changed(
    influxd: Influxd, tmp_path: Path
) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 2.0}, M2: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    store(influxd, ROWS)  # type: ignore[arg-type]
    clock = Clock(at(7, 5))
    publisher = KpiPublisher(target(influxd), load_factory(factory), max_gap_s=300, clock=clock)
    try:
        first = publisher.publish_once()
        # The window runs from the previous local (UTC) midnight to the current bucket's
        # start: 2024-05-05 00:00 to 2024-05-06 07:00, 31 hours of buckets, for m1 only.
        assert first.buckets == 31 * 4
        kpi = points(influxd, f"SELECT * FROM kpi WHERE asset = '{M1}'")
        assert len(kpi) == 31 * 4
        check_first_two_buckets(kpi)
        assert not points(influxd, f"SELECT * FROM kpi WHERE asset = '{M2}'")

        (event,) = points(influxd, "SELECT * FROM downtime").values()
        assert event["time"] == to_ns(at(6, 20))
        assert (event["machine"], event["state"], event["duration_s"]) == ("m1", "fault", 1200)
        assert (event["short"], event["open"], event["reason"]) == (False, False, "")
        states = points(influxd, "SELECT * FROM machine_state")
        assert [(t, r["state"], r["code"]) for t, r in sorted(states.items())] == [
            (to_ns(at(6)), "running", "running"),
            (to_ns(at(6, 20)), "fault", "fault"),
            (to_ns(at(6, 40)), "running", "running"),
        ]

        # Nothing changed: nothing is written again.
        assert publisher.publish_once().points == 0

        # Late data: 300 more units (10 rejected) counted at 06:50 reach the store now.
        store(influxd, [(M1, "count_total", at(6, 50), 900), (M1, "count_reject", at(6, 50), 40)])
        late = publisher.publish_once()
        assert 1 <= late.buckets <= 3 and late.late >= 1
        bucket = points(influxd, f"SELECT * FROM kpi WHERE time = {to_ns(at(6, 45))}")
        assert (bucket[to_ns(at(6, 45))]["total"], bucket[to_ns(at(6, 45))]["good"]) == (300, 290)

        # A quarter of an hour later exactly one new bucket is due.
        clock.now = at(7, 20)
        assert publisher.publish_once().buckets == 1
        assert to_ns(at(7)) in points(influxd, f"SELECT * FROM kpi WHERE asset = '{M1}'")
    finally:
        publisher.close()


def test_publisher_reports_an_unreachable_server_as_a_store_error(tmp_path: Path) -> None:
    from karkhana.errors import StoreError
    from tests.helpers.servers import free_port

    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    down = InfluxTarget(url=f"http://127.0.0.1:{free_port()}", api="v1", database=DB)
    publisher = KpiPublisher(down, load_factory(factory), max_gap_s=300, clock=lambda: at(7))
    try:
        with pytest.raises(StoreError, match="cannot reach InfluxDB"):
            publisher.publish_once()
    finally:
        publisher.close()


def test_states_written_use_the_factorys_state_map(influxd: Influxd, tmp_path: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 2.0, "state_map": {1: "running", 4: "fault"}}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    store(
        influxd, [(M1, "state", at(6), 1), (M1, "state", at(6, 5), 4), (M1, "state", at(6, 9), 9)]
    )
    publisher = KpiPublisher(
        target(influxd), load_factory(factory), max_gap_s=300, clock=lambda: at(7)
    )
    try:
        publisher.publish_once()
    finally:
        publisher.close()
    states = points(influxd, "SELECT * FROM machine_state")
    assert [(r["state"], r["code"]) for _, r in sorted(states.items())] == [
        ("running", "1"),
        ("fault", "4"),
        ("unknown", "9"),
    ]
