"""Sparkplug B decoding and session state, against payloads built by an independent
implementation (the ``sparkplug_b_packets`` package: Eclipse Tahu's Python helpers and the
``sparkplug_b_pb2`` module generated from the official ``sparkplug_b.proto``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sparkplub_b_packets.core import sparkplug_b_pb2 as pb
from sparkplub_b_packets.core.sparkplug_b import MetricDataType as T
from sparkplub_b_packets.core.sparkplug_b import addMetric

from edge.config import MqttTopic, load_edge_config
from edge.sources.sparkplug_pb import WireError, decode_payload
from edge.sparkplug import (
    SparkplugError,
    SparkplugHost,
    SparkplugTopic,
    metric_signal_token,
)
from karkhana.errors import ConfigError
from karkhana.models import Quality, Sample

RECEIVED = datetime(2024, 5, 1, 6, 0, 30, tzinfo=UTC)
T0_MS = 1_714_543_200_000  # 2024-05-01T06:00:00Z (hand-computed: 19844 days * 86400 + 6 h)
T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
ASSET = "lahore/dyeing/line-1/{device}"
NODE_ASSET = "lahore/dyeing/line-1/{edge_node}"


def spec(**overrides: Any) -> MqttTopic:
    data: dict[str, Any] = {
        "topic": "spBv1.0/{group}/#",
        "format": "sparkplug_b",
        "asset": NODE_ASSET,
        "signal": "{metric}",
    }
    data.update(overrides)
    return MqttTopic.model_validate(data)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def host(**overrides: Any) -> tuple[SparkplugHost, Clock]:
    clock = Clock()
    return SparkplugHost(spec(**overrides), rebirth_holdoff_s=5.0, clock=clock), clock


def payload(
    seq: int | None,
    metrics: list[tuple[str | None, int | None, int | None, Any, int | None]],
    ts: int | None = T0_MS,
) -> bytes:
    """metrics: (name, alias, datatype, value, timestamp ms) built with Tahu's addMetric;
    a negative datatype sets that value type but leaves the datatype field out (as DATA
    messages may)."""
    p = pb.Payload()
    if ts is not None:
        p.timestamp = ts
    if seq is not None:
        p.seq = seq
    for name, alias, datatype, value, stamp in metrics:
        untyped = datatype is not None and datatype < 0
        kind = -datatype if datatype is not None and untyped else datatype
        metric = addMetric(p, name, alias, kind, value, timestamp=stamp or 0)
        if stamp is None:
            metric.ClearField("timestamp")
        if untyped:
            metric.ClearField("datatype")
    return p.SerializeToString()


def nbirth(seq: int = 0, bd_seq: int = 0) -> bytes:
    return payload(
        seq,
        [
            ("bdSeq", None, T.Int64, bd_seq, T0_MS),
            ("Node Control/Rebirth", None, T.Boolean, False, T0_MS),
            ("Line/Temp", 1, T.Double, 71.5, T0_MS),
            ("Motor Speed", 2, T.Float, 0.1, T0_MS),
            ("Running", 3, T.Boolean, True, T0_MS),
            ("Count", 4, T.UInt32, 4_000_000_000, T0_MS),
            ("Offset", 5, T.Int8, -3, T0_MS),
            ("Energy", 6, T.Int64, -5_000_000_000, T0_MS),
            ("Recipe", 7, T.String, "navy-12", T0_MS),
        ],
    )


def values(samples: list[Sample]) -> dict[str, Any]:
    return {s.signal: s.value for s in samples}


# --- topics and the wire decoder ----------------------------------------------------


def test_topic_parts() -> None:
    assert SparkplugTopic.parse("spBv1.0/textile/NDATA/gw1") == SparkplugTopic(
        "textile", "NDATA", "gw1"
    )
    assert SparkplugTopic.parse("spBv1.0/textile/DDATA/gw1/dyer-01") == SparkplugTopic(
        "textile", "DDATA", "gw1", "dyer-01"
    )
    assert SparkplugTopic.parse("spBv1.0/textile/NCMD/gw1") is None
    assert SparkplugTopic.parse("spBv1.0/STATE/scada-1") is None
    for bad in ("spBv1.0/textile/NDATA", "spBv1.0/textile/DDATA/gw1", "spBv1.0/t/XDATA/gw1"):
        with pytest.raises(SparkplugError):
            SparkplugTopic.parse(bad)


def test_wire_decoder_agrees_with_generated_protobuf_code() -> None:
    p = pb.Payload()
    p.timestamp = T0_MS
    p.seq = 7
    p.uuid = "ignored"
    metric = addMetric(p, "Line/Temp", 9, T.Double, -12.25, timestamp=T0_MS + 5)
    metric.is_historical = True  # unknown to our decoder: skipped
    metric.properties.keys.extend(["engUnit"])
    prop = metric.properties.values.add()
    prop.type = T.String
    prop.string_value = "degC"
    metric.metadata.content_type = "x"
    addMetric(p, None, 3, T.Int32, -2, timestamp=T0_MS)
    decoded = decode_payload(p.SerializeToString())
    assert (decoded.timestamp, decoded.seq) == (T0_MS, 7)
    first, second = decoded.metrics
    assert (first.name, first.alias, first.timestamp, first.datatype) == (
        "Line/Temp",
        9,
        T0_MS + 5,
        10,
    )
    assert first.double_value == -12.25
    assert (second.name, second.alias, second.int_value) == (None, 3, 2**32 - 2)


@pytest.mark.parametrize(
    "raw",
    [b"\x08", b"\x12\x05abc", b"\x0b", b"\x12\x02\x0a\x09", b"\x00\x01", b"\xff" * 11],
)
def test_wire_decoder_refuses_malformed_bytes(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_payload(raw)


# --- BIRTH, aliases, datatypes, timestamps ------------------------------------------


def test_nbirth_values_by_datatype_and_protocol_metrics_skipped() -> None:
    h, _ = host()
    result = h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(), RECEIVED)
    assert result.errors == [] and result.rebirth is None
    assert values(result.samples) == {
        "line_temp": 71.5,
        "motor_speed": 0.1,  # the float32 nearest 0.1, shown as 0.1
        "running": True,
        "count": 4_000_000_000,
        "offset": -3,
        "energy": -5_000_000_000,
        "recipe": "navy-12",
    }
    types = {s.signal: type(s.value) for s in result.samples}
    assert types["count"] is int and types["running"] is bool and types["motor_speed"] is float
    first = result.samples[0]
    assert first == Sample("lahore/dyeing/line-1/gw-1", "line_temp", T0, 71.5, Quality.GOOD)


def test_ndata_by_alias_uses_birth_names_datatypes_and_timestamps() -> None:
    h, _ = host(unit="degC")
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0), RECEIVED)
    data = payload(
        1,
        [
            (None, 1, -T.Double, 72.0, T0_MS + 1_250),  # datatype only from the BIRTH
            (None, 5, T.Int8, -128, None),  # no metric timestamp: the payload's
        ],
        ts=T0_MS + 2_000,
    )
    result = h.handle("spBv1.0/textile/NDATA/gw-1", data, RECEIVED)
    assert result.errors == [] and result.rebirth is None
    assert [(s.signal, s.ts, s.value, s.unit) for s in result.samples] == [
        ("line_temp", datetime(2024, 5, 1, 6, 0, 1, 250_000, tzinfo=UTC), 72.0, "degC"),
        ("offset", datetime(2024, 5, 1, 6, 0, 2, tzinfo=UTC), -128, "degC"),
    ]


def test_no_timestamp_at_all_uses_receive_time() -> None:
    h, _ = host()
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0), RECEIVED)
    result = h.handle(
        "spBv1.0/textile/NDATA/gw-1",
        payload(1, [(None, 3, -T.Boolean, False, None)], ts=None),
        RECEIVED,
    )
    assert [(s.signal, s.ts, s.value) for s in result.samples] == [("running", RECEIVED, False)]


def test_negative_int_as_32_bit_twos_complement_is_accepted() -> None:
    """Some implementations put an Int8/Int16 into int_value as a 32-bit two's complement."""
    h, _ = host()
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0), RECEIVED)
    p = pb.Payload()
    p.seq = 1
    metric = p.metrics.add()
    metric.alias = 5
    metric.timestamp = T0_MS
    metric.int_value = 0xFFFF_FFFD  # -3 as uint32
    result = h.handle("spBv1.0/textile/NDATA/gw-1", p.SerializeToString(), RECEIVED)
    assert values(result.samples) == {"offset": -3}


def test_device_birth_and_data_map_to_the_device_asset() -> None:
    h, _ = host(asset=ASSET)
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=10), RECEIVED)
    dbirth = payload(11, [("Temp", 1, T.Float, 60.5, T0_MS), ("State", 2, T.String, "RUN", T0_MS)])
    result = h.handle("spBv1.0/textile/DBIRTH/gw-1/Dyer-01", dbirth, RECEIVED)
    assert {(s.asset, s.signal, s.value) for s in result.samples} == {
        ("lahore/dyeing/line-1/dyer-01", "temp", 60.5),
        ("lahore/dyeing/line-1/dyer-01", "state", "RUN"),
    }
    ddata = payload(12, [(None, 2, -T.String, "STOP", T0_MS + 60_000)])
    result = h.handle("spBv1.0/textile/DDATA/gw-1/Dyer-01", ddata, RECEIVED)
    assert result.rebirth is None and result.errors == []
    assert [(s.asset, s.signal, s.value, s.ts) for s in result.samples] == [
        ("lahore/dyeing/line-1/dyer-01", "state", "STOP", datetime(2024, 5, 1, 6, 1, tzinfo=UTC))
    ]


def test_unsupported_datatype_is_reported_and_the_rest_still_read() -> None:
    h, _ = host()
    birth = payload(
        0, [("Blob", 1, T.Bytes, b"\x00\x01", T0_MS), ("Temp", 2, T.Double, 1.5, T0_MS)]
    )
    result = h.handle("spBv1.0/textile/NBIRTH/gw-1", birth, RECEIVED)
    assert values(result.samples) == {"temp": 1.5}
    assert result.errors == ["metric 'Blob': datatype Bytes is not supported"]


def test_bad_payload_raises() -> None:
    h, _ = host()
    with pytest.raises(SparkplugError, match="bad Sparkplug B payload"):
        h.handle("spBv1.0/textile/NDATA/gw-1", b"\x12\x7f", RECEIVED)


def test_command_and_state_topics_are_not_data() -> None:
    h, _ = host()
    result = h.handle("spBv1.0/textile/NCMD/gw-1", b"\xff\xff", RECEIVED)
    assert result.samples == [] and result.errors == [] and result.rebirth is None


# --- seq and rebirth --------------------------------------------------------------------


def _rebirth_metric(raw: bytes) -> tuple[str, int, bool]:
    decoded = pb.Payload()
    decoded.ParseFromString(raw)
    (metric,) = decoded.metrics
    return metric.name, metric.datatype, metric.boolean_value


def test_seq_wraps_without_rebirth_and_a_gap_requests_one() -> None:
    h, clock = host()
    assert h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=254), RECEIVED).rebirth is None
    for seq in (255, 0, 1):
        result = h.handle(
            "spBv1.0/textile/NDATA/gw-1", payload(seq, [(None, 1, -T.Double, 1.0, T0_MS)]), RECEIVED
        )
        assert result.rebirth is None
    result = h.handle(
        "spBv1.0/textile/NDATA/gw-1", payload(3, [(None, 1, -T.Double, 2.0, T0_MS)]), RECEIVED
    )
    assert result.rebirth is not None
    assert result.rebirth.topic == "spBv1.0/textile/NCMD/gw-1"
    assert result.rebirth.reason == "seq gap: expected 2, got 3"
    assert _rebirth_metric(result.rebirth.payload) == ("Node Control/Rebirth", T.Boolean, True)
    assert values(result.samples) == {"line_temp": 2.0}  # the data itself is still good
    assert h.rebirth_requests == 1
    # another gap right away: the request is outstanding, not repeated
    assert h.handle("spBv1.0/textile/NDATA/gw-1", payload(9, []), RECEIVED).rebirth is None
    clock.now += 5.0
    assert h.handle("spBv1.0/textile/NDATA/gw-1", payload(20, []), RECEIVED).rebirth is not None
    assert h.rebirth_requests == 2
    # a new NBIRTH ends the outstanding request and restarts the sequence
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0), RECEIVED)
    assert h.handle("spBv1.0/textile/NDATA/gw-1", payload(1, []), RECEIVED).rebirth is None
    assert h.rebirth_requests == 2


def test_data_before_birth_requests_rebirth_and_reports_unknown_aliases() -> None:
    h, _ = host()
    data = payload(
        5, [(None, 1, -T.Double, 72.0, T0_MS), ("Running", None, T.Boolean, True, T0_MS)]
    )
    result = h.handle("spBv1.0/textile/NDATA/gw-9", data, RECEIVED)
    assert result.rebirth is not None
    assert result.rebirth.topic == "spBv1.0/textile/NCMD/gw-9"
    assert result.rebirth.reason == "NDATA before NBIRTH"
    # a metric that carries its name and datatype is still usable
    assert values(result.samples) == {"running": True}
    assert result.errors == ["metric alias 1 is unknown (no BIRTH seen)"]
    assert h.rebirth_requests == 1


def test_ddata_before_dbirth_requests_rebirth() -> None:
    h, _ = host(asset=ASSET)
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0), RECEIVED)
    result = h.handle(
        "spBv1.0/textile/DDATA/gw-1/dyer-02",
        payload(1, [(None, 1, -T.Double, 1.0, T0_MS)]),
        RECEIVED,
    )
    assert result.rebirth is not None
    assert result.rebirth.reason == "DDATA of device 'dyer-02' before its DBIRTH"
    assert result.errors == ["metric alias 1 is unknown (no BIRTH seen)"]


def test_ndeath_ends_the_session_unless_it_is_from_an_older_one() -> None:
    h, _ = host()
    h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(seq=0, bd_seq=4), RECEIVED)
    stale = payload(None, [("bdSeq", None, T.Int64, 3, None)])
    h.handle("spBv1.0/textile/NDEATH/gw-1", stale, RECEIVED)
    assert h.handle("spBv1.0/textile/NDATA/gw-1", payload(1, []), RECEIVED).rebirth is None
    death = payload(None, [("bdSeq", None, T.Int64, 4, None)])
    assert h.handle("spBv1.0/textile/NDEATH/gw-1", death, RECEIVED).samples == []
    result = h.handle("spBv1.0/textile/NDATA/gw-1", payload(2, []), RECEIVED)
    assert result.rebirth is not None and result.rebirth.reason == "NDATA before NBIRTH"


# --- mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule", "expected"),
    [
        ("Line/Temp", "underscore", "line_temp"),
        ("Line 1/Motor Speed", "underscore", "line_1_motor_speed"),
        ("Line/Temp", "dot", "line.temp"),
        ("Line/Temp", "exact", "Line/Temp"),
    ],
)
def test_metric_signal_rule(name: str, rule: str, expected: str) -> None:
    assert metric_signal_token(name, rule) == expected


def test_explicit_metric_mapping_rule_and_ignore() -> None:
    h, _ = host(metrics={"Line/Temp": "temperature"}, metric_rule="dot")
    result = h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(), RECEIVED)
    assert values(result.samples)["temperature"] == 71.5
    assert "line.temp" not in values(result.samples)
    assert values(result.samples)["motor_speed"] == 0.1
    h, _ = host(metrics={"Line/Temp": "temperature"}, unmapped_metrics="ignore")
    result = h.handle("spBv1.0/textile/NBIRTH/gw-1", nbirth(), RECEIVED)
    assert values(result.samples) == {"temperature": 71.5}
    assert result.errors == []


def test_metric_name_that_makes_no_signal_is_reported() -> None:
    h, _ = host(metric_rule="exact")
    result = h.handle(
        "spBv1.0/textile/NBIRTH/gw-1",
        payload(0, [("Line/Temp", 1, T.Double, 1.0, T0_MS)]),
        RECEIVED,
    )
    assert result.samples == []
    assert result.errors == [
        "metric 'Line/Temp': gives signal 'Line/Temp', not a valid signal name "
        "(map it under metrics:)"
    ]


def test_templates_use_group_node_device() -> None:
    h, _ = host(asset="{group}/dyeing/{edge_node}/{device}", signal="spb.{metric}")
    h.handle("spBv1.0/Textile/NBIRTH/GW-1", nbirth(seq=0), RECEIVED)
    dbirth = payload(1, [("Temp", 1, T.Double, 3.0, T0_MS)])
    result = h.handle("spBv1.0/Textile/DBIRTH/GW-1/dyer-01", dbirth, RECEIVED)
    assert [(s.asset, s.signal) for s in result.samples] == [
        ("textile/dyeing/gw-1/dyer-01", "spb.temp")
    ]


# --- config -----------------------------------------------------------------------------


def _edge_yaml(tmp_path: Path, topic: dict[str, Any]) -> Path:
    doc = {
        "agent_id": "edge-1",
        "uplink": {"broker": "mqtt://127.0.0.1:1883"},
        "sources": [{"type": "mqtt", "name": "spb", "topics": [topic]}],
    }
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_config_loads_a_sparkplug_topic(tmp_path: Path) -> None:
    topic = {
        "topic": "spBv1.0/textile/#",
        "format": "sparkplug_b",
        "asset": "lahore/dyeing/{edge_node}/{device}",
        "signal": "{metric}",
        "metrics": {"Line/Temp": "temperature"},
    }
    config = load_edge_config(_edge_yaml(tmp_path, topic))
    (spb,) = config.sources[0].topics  # type: ignore[union-attr]
    assert spb.metrics == {"Line/Temp": "temperature"} and spb.metric_rule == "underscore"


@pytest.mark.parametrize(
    ("topic", "key_path", "reason"),
    [
        (
            {"topic": "plant/#", "format": "sparkplug_b", "asset": "a/b/c/d", "signal": "x"},
            "sources[0].topics[0].format",
            "starting with 'spBv1.0/'",
        ),
        (
            {
                "topic": "spBv1.0/g/#",
                "format": "sparkplug_b",
                "asset": "a/b/c/{line}",
                "signal": "x",
            },
            "sources[0].topics[0].asset",
            "{line} is not one of {group}, {edge_node}, {device}, {metric}",
        ),
        (
            {"topic": "s/{m}", "asset": "a/b/c/{m}", "signal": "x", "metrics": {"A": "a"}},
            "sources[0].topics[0].metrics",
            "only used with format: sparkplug_b",
        ),
        (
            {
                "topic": "spBv1.0/g/#",
                "format": "sparkplug_b",
                "asset": "a/b/c/d",
                "signal": "{metric}",
                "metrics": {"Line/Temp": "Bad Name"},
            },
            "sources[0].topics[0].metrics.Line/Temp",
            "should match pattern",
        ),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, topic: dict[str, Any], key_path: str, reason: str
) -> None:
    path = _edge_yaml(tmp_path, topic)
    with pytest.raises(ConfigError) as caught:
        load_edge_config(path)
    message = str(caught.value)
    assert str(path) in message and key_path in message and reason in message
