"""The InfluxDB store against real servers: Debian's ``influxd`` 1.x (write and read) and
``victoria-metrics`` (the ``/api/v2/write`` path of influxdb-client).

Expected values come from what each test writes and from the servers' own query APIs.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway, GatewaySettings
from gateway.deadletters import DeadLetter
from gateway.decode import NormalizedSample
from gateway.settings import load_settings
from gateway.stores.base import Batch
from gateway.stores.influx import InfluxStore
from karkhana.errors import ConfigError, StoreError
from karkhana.models import Quality, SampleValue, to_ns
from karkhana.storage.influx_schema import InfluxTarget
from services import influx_reader
from services.api import ApiSettings, create_app
from services.influx_reader import InfluxReader, InfluxSource
from services.kpi.source import Point
from services.store import SqliteReader
from tests.helpers.api import api_client
from tests.helpers.influx_servers import Influxd, run_influxd, run_victoria_metrics
from tests.helpers.servers import Mosquitto, async_wait_until, free_port, wait_until
from tests.helpers.store_builders import Row, write_factory, write_samples

pytestmark = pytest.mark.integration

ASSET = "lahore/weaving/line-1/loom-03"
T0 = to_ns(datetime(2024, 5, 1, 10, tzinfo=UTC))
OUTAGE_S = float(os.environ.get("KARKHANA_TEST_INFLUX_OUTAGE_S", "60"))
"""How long the end-to-end test keeps influxd down under load (shorter while developing)."""


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    with run_influxd(tmp_path / "influxd") as server:
        yield server


def v1(server: Influxd, db: str = "karkhana") -> InfluxTarget:
    return InfluxTarget(url=server.url, api="v1", database=db, timeout_s=5)


def sample(signal: str, ts_ns: int, value: SampleValue, **extra: Any) -> NormalizedSample:
    return NormalizedSample(ASSET, signal, ts_ns, value, **extra)


def select(server: Influxd, q: str, db: str = "karkhana") -> list[dict[str, Any]]:
    """Rows of a query answered by influxd itself, as dicts (tags included)."""
    body = server.query(q, db)
    rows: list[dict[str, Any]] = []
    for result in body["results"]:  # type: ignore[attr-defined]
        assert "error" not in result, result
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(
                    {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
                )
    return rows


def reader_for(target: InfluxTarget) -> Iterator[InfluxReader]:
    source = InfluxSource(target)
    try:
        yield source.reader()
    finally:
        source.close()


MIXED = [
    sample("speed", T0, 3.0, unit="m/min"),
    sample("speed", T0 + 1, -2.5e-300, quality="uncertain", unit="m/min"),
    sample("count_total", T0, 2**53 + 1),
    sample("count_total", T0 + 1_000_000_000, -7, quality="bad"),
    sample("running", T0, True),
    sample("running", T0 + 5, False),
    sample("note", T0, 'he said "hi", a=b\\c\nnext line, ünïcode'),
    sample("state", T0, "fault"),
]


def test_round_trip_keeps_values_types_quality_and_unit(influxd: Influxd) -> None:
    store = InfluxStore.open(v1(influxd))
    try:
        result = store.write(Batch(samples=list(MIXED), received_ns=T0))
    finally:
        store.close()
    assert (result.samples_written, result.samples_duplicate) == (len(MIXED), 0)

    # What the server holds, read with its own query API.
    stored = select(influxd, "SELECT * FROM samples")
    assert len(stored) == len(MIXED)
    speed = next(r for r in stored if r["signal"] == "speed" and r["time"] == T0)
    assert (speed["asset"], speed["site"], speed["area"], speed["line"], speed["machine"]) == (
        ASSET,
        "lahore",
        "weaving",
        "line-1",
        "loom-03",
    )
    assert (speed["value_f"], speed["quality"], speed["unit"]) == (3, "good", "m/min")

    # What the reader gives back: exactly the written samples, with their Python types.
    for reader in reader_for(v1(influxd)):
        for signal in {s.signal for s in MIXED}:
            expected = [
                Point(s.ts_ns, s.value, Quality(s.quality)) for s in MIXED if s.signal == signal
            ]
            got = reader.points(ASSET, signal, T0, T0 + 10**10)
            assert got == expected
            assert [type(p.value) for p in got] == [type(p.value) for p in expected]
        assert reader.sample_count() == len(MIXED)
        assert reader.exists


def test_samples_the_server_refuses_become_dead_letters(influxd: Influxd) -> None:
    """A refused write used to be retried forever, halting ingestion. Another writer made
    ``value_f`` a string field in this shard, so influxd refuses every float sample there
    (HTTP 400, field type conflict); the rest of the batch is stored and each refused
    sample is a dead letter naming the series and the server's reason."""
    store = InfluxStore.open(v1(influxd))
    foreign = 'samples,asset=other,signal=note value_f="text" ' + str(T0)
    response = httpx.post(
        f"{influxd.url}/write", params={"db": "karkhana", "precision": "ns"}, content=foreign
    )
    assert response.status_code == 204, response.text
    floats = [s for s in MIXED if isinstance(s.value, float)]
    try:
        result = store.write(Batch(samples=list(MIXED), received_ns=T0 + 10**9))
    finally:
        store.close()

    assert len(floats) == 2
    assert result.samples_written == len(MIXED) - len(floats)
    refused = sorted(result.rejected, key=lambda d: d.reason)
    assert [d.topic for d in refused] == ["store:influxdb"] * len(floats)
    for letter, s in zip(refused, sorted(floats, key=lambda s: s.ts_ns), strict=True):
        assert f"{ASSET} {s.signal} at" in letter.reason
        assert f"(ts {s.ts_ns} ns)" in letter.reason
        assert "field type conflict" in letter.reason
        assert letter.payload.startswith(b"samples,")
        assert letter.payload.endswith(f" {s.ts_ns}".encode())
    # The server holds every other sample, and the dead letters.
    stored = select(influxd, f"SELECT * FROM samples WHERE asset = '{ASSET}'")
    assert sorted((r["signal"], r["time"]) for r in stored) == sorted(
        (s.signal, s.ts_ns) for s in MIXED if not isinstance(s.value, float)
    )
    letters = select(influxd, "SELECT topic, reason FROM dead_letters")
    assert sorted(r["reason"] for r in letters) == [d.reason for d in refused]


def test_rewriting_points_overwrites_instead_of_duplicating(influxd: Influxd) -> None:
    store = InfluxStore.open(v1(influxd))
    try:
        store.write(Batch(samples=list(MIXED), received_ns=T0))
        again = [*MIXED, MIXED[0]]  # the whole batch again, one sample twice in it
        result = store.write(Batch(samples=again, received_ns=T0 + 1))
        # a later rewrite with another quality replaces the point's fields
        store.write(Batch(samples=[sample("speed", T0, 3.0, quality="bad")], received_ns=T0 + 2))
    finally:
        store.close()
    assert (result.samples_written, result.samples_duplicate) == (len(MIXED), 1)
    (count,) = select(influxd, "SELECT count(quality) FROM samples")
    assert count["count"] == len(MIXED)
    (speed,) = select(
        influxd, f"SELECT quality, unit FROM samples WHERE time = {T0} AND signal = 'speed'"
    )
    assert (speed["quality"], speed["unit"]) == ("bad", "m/min")


def test_high_water_marks_survive_a_new_store(influxd: Influxd) -> None:
    hour = 3600 * 10**9
    store = InfluxStore.open(v1(influxd))
    try:
        assert store.high_water_marks() == {}
        store.write(Batch(high_water={"edge-1": 5, "edge, 2=x": 3}, received_ns=T0))
        store.write(Batch(high_water={"edge-1": 9}, received_ns=T0 + 2 * hour))
    finally:
        store.close()
    reopened = InfluxStore.open(v1(influxd))
    try:
        assert reopened.high_water_marks() == {"edge-1": 9, "edge, 2=x": 3}
    finally:
        reopened.close()


def test_dead_letters_are_stored_with_payload_and_reason(influxd: Influxd) -> None:
    letters = [
        DeadLetter(T0, "karkhana/v1/edge/a/samples", "envelope: bad JSON", b'{"v":1,\n"x"', 11),
        # same receive time: both must be kept
        DeadLetter(T0, "karkhana/v1/edge/b/samples", "samples[0].ts: bad", b"\xff\x00\x01", 9000),
    ]
    store = InfluxStore.open(v1(influxd))
    try:
        store.write(Batch(dead_letters=letters, received_ns=T0))
    finally:
        store.close()
    stored = select(influxd, "SELECT * FROM dead_letters")
    assert [(r["topic"], r["reason"], r["payload_size"]) for r in stored] == [
        ("karkhana/v1/edge/a/samples", "envelope: bad JSON", 11),
        ("karkhana/v1/edge/b/samples", "samples[0].ts: bad", 9000),
    ]
    assert (stored[0]["payload"], stored[0]["payload_encoding"]) == ('{"v":1,\n"x"', "utf-8")
    assert (stored[1]["payload_encoding"], stored[1]["truncated"]) == ("base64", True)
    for reader in reader_for(v1(influxd)):
        assert reader.dead_letter_count() == 2
        newest_first = reader.dead_letters(10)
        assert [d.payload for d in newest_first] == [b"\xff\x00\x01", b'{"v":1,\n"x"']
        assert reader.dead_letters(10, before_id=newest_first[0].id) == newest_first[1:]


def test_reader_of_a_missing_database_reads_empty(influxd: Influxd) -> None:
    for reader in reader_for(v1(influxd, db="not_created_yet")):
        assert not reader.exists
        assert reader.points(ASSET, "state", 0, 2**62) == []
        assert list(reader.points_before(ASSET, "state", 2**62)) == []
        assert reader.sample_times(ASSET, 0, 2**62) == []
        assert reader.sample_count() == 0


def test_reader_pages_through_long_ranges(
    influxd: Influxd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(influx_reader, "PAGE", 7)
    samples = [sample("count_total", T0 + i * 10**9, i) for i in range(50)]
    samples += [sample("state", T0 + i * 10**9, "running") for i in range(0, 50, 2)]
    store = InfluxStore.open(v1(influxd))
    try:
        store.write(Batch(samples=samples, received_ns=T0))
    finally:
        store.close()
    for reader in reader_for(v1(influxd)):
        counts = reader.points(ASSET, "count_total", T0 + 3 * 10**9, T0 + 40 * 10**9)
        assert [p.value for p in counts] == list(range(3, 40))
        newest = list(reader.points_before(ASSET, "count_total", T0 + 30 * 10**9))
        assert [p.value for p in newest] == list(range(29, -1, -1))
        onward = list(reader.points_from(ASSET, "count_total", T0 + 35 * 10**9))
        assert [p.value for p in onward] == list(range(35, 50))
        times = reader.sample_times(ASSET, T0 + 10 * 10**9, T0 + 30 * 10**9)
        assert times == [T0 + i * 10**9 for i in range(9, 30)]


# --- KPI and API on InfluxDB vs SQLite ---------------------------------------------------

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
DAY = datetime(2024, 5, 6, tzinfo=UTC)


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm, second=ss)


# m1 runs the whole 06:00-14:00 shift at ideal speed without rejects; m2 is in planned
# maintenance until 12:00, runs an hour at half speed with half the units rejected, faults.
SCENARIO: list[Row] = [
    (M1, "state", at(6), 1),
    (M1, "count_total", at(6), 0),
    (M1, "count_total", at(13, 59, 59), 28_800),
    (M2, "state", at(5), "off"),
    (M2, "state", at(6), "planned_stop"),
    (M2, "state", at(12), "running"),
    (M2, "state", at(13), "fault"),
    (M2, "state", at(13, 30), 4),
    (M2, "count_total", at(12), 0),
    (M2, "count_total", at(12, 59), 1_800),
    (M2, "count_reject", at(12), 0),
    (M2, "count_reject", at(12, 59), 900),
]


def test_kpi_api_on_influx_matches_sqlite_and_the_scenario(
    influxd: Influxd, tmp_path: Path
) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    sqlite_db = tmp_path / "store.sqlite"
    write_samples(sqlite_db, SCENARIO)
    store = InfluxStore.open(v1(influxd, db="plant"))
    try:
        store.write(
            Batch(
                samples=[NormalizedSample(a, s, to_ns(ts), v) for a, s, ts, v in SCENARIO],  # type: ignore[misc]
                received_ns=T0,
            )
        )
    finally:
        store.close()

    # The reader answers exactly like the SQLite reader on every SampleSource call.
    sqlite_reader = SqliteReader.open(sqlite_db)
    try:
        for influx in reader_for(v1(influxd, db="plant")):
            for asset in (M1, M2):
                start, end = to_ns(at(6)), to_ns(at(14))
                assert influx.sample_times(asset, start, end) == sqlite_reader.sample_times(
                    asset, start, end
                )
                for signal in ("state", "count_total", "count_reject"):
                    assert influx.points(asset, signal, start, end) == sqlite_reader.points(
                        asset, signal, start, end
                    )
                    assert list(influx.points_before(asset, signal, end)) == list(
                        sqlite_reader.points_before(asset, signal, end)
                    )
                    assert list(influx.points_from(asset, signal, start)) == list(
                        sqlite_reader.points_from(asset, signal, start)
                    )
    finally:
        sqlite_reader.close()

    query = {"asset": "plant", "from": "2024-05-06T06:00:00Z", "to": "2024-05-06T14:00:00Z"}
    on_sqlite = ApiSettings(factory=factory, db=sqlite_db)
    on_influx = ApiSettings(
        factory=factory,
        store="influxdb",
        influx_url=influxd.url,
        influx_api="v1",
        influx_db="plant",
        keys_db=tmp_path / "keys.sqlite",
    )
    answers = []
    for settings in (on_sqlite, on_influx):
        with api_client(create_app(settings), "viewer") as client:
            response = client.get("/api/v1/kpi/oee", params=query)
            assert response.status_code == 200, response.text
            answers.append(response.json())
            health = client.get("/health").json()["store"]
            assert (health["exists"], health["samples"]) == (True, len(SCENARIO))
    assert answers[0] == answers[1]
    oee = {item["asset"]: item for item in answers[1]}
    assert (oee[M1]["availability"], oee[M1]["performance"], oee[M1]["oee"]) == (1, 1, 1)
    assert (oee[M2]["availability"], oee[M2]["performance"], oee[M2]["quality"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert oee[M2]["oee"] == 0.125


def test_api_answers_503_while_influx_is_down(tmp_path: Path) -> None:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    down = f"http://127.0.0.1:{free_port()}"
    settings = ApiSettings(
        factory=factory,
        store="influxdb",
        influx_url=down,
        influx_api="v1",
        keys_db=tmp_path / "keys.sqlite",
    )
    with api_client(create_app(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert "cannot reach InfluxDB at " + down in response.json()["detail"]


# --- errors and outages ------------------------------------------------------------------


def test_unreachable_server_and_wrong_api_are_clear_store_errors(influxd: Influxd) -> None:
    down = InfluxTarget(url=f"http://127.0.0.1:{free_port()}", api="v1", database="k")
    with pytest.raises(StoreError, match=r"cannot reach InfluxDB at http://127\.0\.0\.1:"):
        InfluxStore.open(down)
    # influxd 1.x has no /api/v2/write: the first write says what to check
    store = InfluxStore.open(InfluxTarget(url=influxd.url, api="v2", database="k", timeout_s=5))
    try:
        with pytest.raises(StoreError, match=r"HTTP 404.*set influx_api"):
            store.write(Batch(samples=[sample("speed", T0, 1.0)], received_ns=T0))
    finally:
        store.close()


def test_store_raises_while_influxd_is_down_and_works_after_restart(influxd: Influxd) -> None:
    store = InfluxStore.open(v1(influxd))
    try:
        store.write(Batch(samples=[sample("speed", T0, 1.0)], received_ns=T0))
        influxd.stop()
        with pytest.raises(StoreError, match="cannot reach InfluxDB"):
            store.write(Batch(samples=[sample("speed", T0 + 1, 2.0)], received_ns=T0))
        influxd.start()
        store.write(Batch(samples=[sample("speed", T0 + 1, 2.0)], received_ns=T0))
    finally:
        store.close()
    assert [r["value_f"] for r in select(influxd, "SELECT value_f FROM samples")] == [1, 2]


def test_influx_settings_are_validated_with_clear_messages() -> None:
    with pytest.raises(ConfigError, match=r"influx_url.*must start with http:// or https://"):
        load_settings(store="influxdb", influx_url="tcp://h:8086")
    with pytest.raises(ConfigError, match=r"influx_api.*influx_token is for influx_api v2") as info:
        load_settings(store="influxdb", influx_api="v1", influx_token="s3cret")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="authenticates with influx_token") as info:
        load_settings(store="influxdb", influx_username="u", influx_password="pw-s3cret")
    assert "pw-s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="influx_username is set but influx_password is not"):
        load_settings(store="influxdb", influx_api="v1", influx_username="u")
    with pytest.raises(ConfigError, match="store"):
        load_settings(store="mongodb")


# --- end to end: gateway + mosquitto + influxd outage ------------------------------------


def _publisher(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="influx-load")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


async def test_gateway_rides_out_an_influxd_outage_without_loss(
    mosquitto: Mosquitto, influxd: Influxd
) -> None:
    settings = GatewaySettings(
        broker=mosquitto.url,
        client_id="gw-influx",
        store="influxdb",
        influx_url=influxd.url,
        influx_api="v1",
        influx_db="karkhana",
        influx_timeout_s=2,
    )
    expected: dict[tuple[str, int], int] = {}
    stop = threading.Event()
    published = 0

    def publish_steadily(client: mqtt.Client) -> None:
        nonlocal published
        seq = 0
        while not stop.is_set():
            seq += 1
            samples = []
            for k, signal in enumerate(("count_total", "speed", "state")):
                ts_ns = T0 + seq * 10**9 + k * 1000  # envelopes carry microseconds
                expected[(signal, ts_ns)] = seq
                samples.append({"asset": ASSET, "signal": signal, "ts": _iso(ts_ns), "value": seq})
            body = {"v": 1, "agent": "edge-1", "seq": seq, "sent": _iso(T0), "samples": samples}
            info = client.publish(
                "karkhana/v1/edge/edge-1/samples", json.dumps(body).encode(), qos=1
            )
            info.wait_for_publish(10)
            published = seq
            time.sleep(0.02)

    def stored_count() -> int:
        rows = select(influxd, "SELECT count(quality) FROM samples")
        return int(rows[0]["count"]) if rows else 0

    client = _publisher(mosquitto)
    async with Gateway(settings) as gateway:
        run = asyncio.create_task(gateway.run())
        await asyncio.wait_for(gateway.wait_subscribed(), 15)
        load = threading.Thread(target=publish_steadily, args=(client,))
        load.start()
        try:
            await async_wait_until(lambda: stored_count() > 0, 15, "first samples in influxd")
            influxd.stop()
            before = published
            await asyncio.sleep(OUTAGE_S)  # the outage itself: publishing goes on meanwhile
            assert published > before, "the publisher stalled during the outage"
            influxd.start()
            await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.to_thread(load.join)
            client.disconnect()
            client.loop_stop()
        total = len(expected)
        await async_wait_until(
            lambda: stored_count() >= total, 60 + OUTAGE_S, f"all {total} samples in influxd"
        )
        assert gateway.stats.write_errors > 0  # the outage was seen by the writer
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    rows = select(influxd, "SELECT value_i, signal FROM samples")
    stored = [(r["signal"], r["time"]) for r in rows]
    assert len(stored) == len(set(stored)) == len(expected)
    assert {(r["signal"], r["time"]): r["value_i"] for r in rows} == expected


def _iso(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 10**9)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns:09d}Z"


# --- VictoriaMetrics: the v2 write path --------------------------------------------------


def test_v2_writes_land_in_victoria_metrics(tmp_path: Path) -> None:
    now = time.time_ns() // 10**6 * 10**6  # VictoriaMetrics keeps milliseconds
    samples = [
        sample("speed", now, 12.5, unit="m/min"),
        sample("count_total", now, 41),
        sample("running", now, True),
    ]
    with run_victoria_metrics(tmp_path / "vm") as vm:
        store = InfluxStore.open(InfluxTarget(url=vm.url, api="v2", database="karkhana"))
        try:
            result = store.write(Batch(samples=samples, high_water={"edge-1": 7}, received_ns=now))
            assert store.high_water_marks() == {}  # no InfluxQL reads there
        finally:
            store.close()
        assert result.samples_written == 3

        def landed() -> list[dict[str, Any]]:
            return vm.export('{__name__=~"samples_value_.*|agent_seq_last_seq"}')

        wait_until(lambda: len(landed()) == 4, 15, "4 series in victoria-metrics")
        series = {(s["metric"]["__name__"], s["metric"].get("signal")): s for s in landed()}
    speed = series[("samples_value_f", "speed")]
    assert speed["metric"]["asset"] == ASSET
    assert speed["metric"]["machine"] == "loom-03"
    assert (speed["values"], speed["timestamps"]) == ([12.5], [now // 10**6])
    assert series[("samples_value_i", "count_total")]["values"] == [41]
    assert series[("samples_value_b", "running")]["values"] == [1]
    assert series[("agent_seq_last_seq", None)]["values"] == [7]
