"""Pure mapping of MQTT messages and OPC UA DataValues onto samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from asyncua import ua

from edge.config import MqttTopic, OpcUaNode
from edge.mapping import PayloadError, TopicMapping, first_match, topic_filter, topic_regex
from edge.sources.opcua import datavalue_to_sample, quality_of
from karkhana.models import Quality, Sample

RECEIVED = datetime(2024, 5, 1, 6, 0, 30, tzinfo=UTC)


def mapping(**overrides: Any) -> TopicMapping:
    spec: dict[str, Any] = {
        "topic": "sensors/dyeing/{machine}/{signal}",
        "asset": "lahore/dyeing/line-1/{machine}",
        "signal": "{signal}",
    }
    spec.update(overrides)
    return TopicMapping.compile(MqttTopic.model_validate(spec))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("sensors/dyeing/{machine}/{signal}", "sensors/dyeing/+/+"),
        ("a/+/{x}/#", "a/+/+/#"),
        ("plain/topic", "plain/topic"),
    ],
)
def test_topic_filter(pattern: str, expected: str) -> None:
    assert topic_filter(pattern) == expected


def test_topic_regex_matches_like_the_mqtt_filter() -> None:
    rx = topic_regex("a/{x}/#")
    assert rx.match("a/one").groupdict() == {"x": "one"}  # type: ignore[union-attr]
    assert rx.match("a/one/two/three").groupdict() == {"x": "one"}  # type: ignore[union-attr]
    assert rx.match("a") is None
    assert rx.match("b/one") is None
    rx = topic_regex("s/{m}/temp")
    assert rx.match("s/m1/temp/extra") is None
    assert rx.match("s//temp") is None
    assert topic_regex("#").match("any/thing") is not None


def test_json_payload_with_timestamp() -> None:
    m = mapping(unit="degC")
    groups = m.match("sensors/dyeing/dyer-01/temperature")
    assert groups == {"machine": "dyer-01", "signal": "temperature"}
    sample = m.to_sample(groups, b'{"value": 71.5, "ts": "2024-05-01T06:00:01.250Z"}', RECEIVED)
    assert sample == Sample(
        "lahore/dyeing/line-1/dyer-01",
        "temperature",
        datetime(2024, 5, 1, 6, 0, 1, 250_000, tzinfo=UTC),
        71.5,
        Quality.GOOD,
        "degC",
    )


def test_json_offset_timestamp_is_converted_to_utc() -> None:
    m = mapping()
    sample = m.to_sample(
        {"machine": "d1", "signal": "state"},
        b'{"value": "RUN", "ts": "2024-05-01T11:00:00+05:00"}',
        RECEIVED,
    )
    assert sample.ts == datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    assert sample.ts.utcoffset() == timedelta(0)
    assert sample.value == "RUN"


def test_missing_timestamp_uses_receive_time_and_nested_paths() -> None:
    m = mapping(value_path="data.v", ts_path="data.t", quality_path="q")
    sample = m.to_sample(
        {"machine": "d1", "signal": "speed"}, b'{"data": {"v": 12}, "q": "uncertain"}', RECEIVED
    )
    assert (sample.value, sample.ts, sample.quality) == (12, RECEIVED, Quality.UNCERTAIN)


def test_whole_document_value_and_plain_formats() -> None:
    groups = {"machine": "d1", "signal": "power"}
    assert mapping(value_path=None).to_sample(groups, b"true", RECEIVED).value is True
    assert mapping(format="number").to_sample(groups, b" 42 ", RECEIVED).value == 42
    assert mapping(format="number").to_sample(groups, b"4.5e1", RECEIVED).value == 45.0
    text = mapping(format="string").to_sample(groups, b"RUN", RECEIVED)
    assert (text.value, text.ts) == ("RUN", RECEIVED)


@pytest.mark.parametrize(
    ("overrides", "topic", "payload", "reason"),
    [
        ({}, "sensors/dyeing/d1/speed", b'{"value": ', "bad JSON"),
        ({}, "sensors/dyeing/d1/speed", b'{"val": 1}', "missing value at 'value'"),
        ({}, "sensors/dyeing/d1/speed", b'{"value": [1, 2]}', "got list"),
        ({}, "sensors/dyeing/d1/speed", b'{"value": 1, "ts": "yesterday"}', "bad timestamp"),
        ({}, "sensors/dyeing/d1/speed", b'{"value": 1, "ts": "2024-05-01T06:00:00"}', "timezone"),
        ({}, "sensors/dyeing/d1/speed", b'{"value": 1, "ts": true}', "ISO 8601"),
        ({"quality_path": "q"}, "sensors/dyeing/d1/speed", b'{"value": 1, "q": "ok"}', "quality"),
        ({"format": "number"}, "sensors/dyeing/d1/speed", b"fast", "not a number"),
        ({"format": "number"}, "sensors/dyeing/d1/speed", b"nan", "finite"),
        ({"format": "string"}, "sensors/dyeing/d1/speed", b"\xff\xfe", "UTF-8"),
        ({}, "sensors/dyeing/Dyer-1/speed", b'{"value": 1}', "asset"),
        ({}, "sensors/dyeing/d1/Speed", b'{"value": 1}', "signal"),
    ],
)
def test_bad_payloads_raise_with_a_reason(
    overrides: dict[str, Any], topic: str, payload: bytes, reason: str
) -> None:
    m = mapping(**overrides)
    groups = m.match(topic)
    assert groups is not None
    with pytest.raises(PayloadError, match=reason):
        m.to_sample(groups, payload, RECEIVED)


def test_first_match_uses_config_order() -> None:
    specific = mapping(topic="sensors/dyeing/{machine}/state", signal="state", format="string")
    general = mapping()
    found = first_match([specific, general], "sensors/dyeing/d1/state")
    assert found is not None and found[0] is specific
    found = first_match([specific, general], "sensors/dyeing/d1/speed")
    assert found is not None and found[0] is general
    assert first_match([specific], "other/topic") is None


# --- OPC UA DataValues ------------------------------------------------------------------

NODE = OpcUaNode(
    node_id="ns=2;s=loom-01.Temperature",
    asset="lahore/weaving/line-1/loom-01",
    signal="temperature",
    unit="degC",
)
SOURCE_TS = datetime(2024, 5, 1, 6, 0, 0, 123_456)  # asyncua hands out naive UTC
SERVER_TS = datetime(2024, 5, 1, 6, 0, 1)


def dv(value: Any, **kw: Any) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value), **kw)


def test_source_timestamp_preferred_then_server_then_receive_time() -> None:
    s = datavalue_to_sample(
        dv(21.5, SourceTimestamp=SOURCE_TS, ServerTimestamp=SERVER_TS), NODE, RECEIVED
    )
    assert s == Sample(
        NODE.asset, "temperature", SOURCE_TS.replace(tzinfo=UTC), 21.5, Quality.GOOD, "degC"
    )
    s = datavalue_to_sample(dv(21.5, ServerTimestamp=SERVER_TS), NODE, RECEIVED)
    assert s is not None and s.ts == SERVER_TS.replace(tzinfo=UTC)
    s = datavalue_to_sample(dv(21.5), NODE, RECEIVED)
    assert s is not None and s.ts == RECEIVED
    aware = datetime(2024, 5, 1, 11, 0, tzinfo=timezone(timedelta(hours=5)))
    s = datavalue_to_sample(dv(1, SourceTimestamp=aware), NODE, RECEIVED)
    assert s is not None and s.ts == datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD),
    ],
)
def test_status_code_to_quality(code: int, quality: Quality) -> None:
    assert quality_of(ua.StatusCode(code)) is quality
    s = datavalue_to_sample(dv(1.0, StatusCode=ua.StatusCode(code)), NODE, RECEIVED)
    assert s is not None and s.quality is quality


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (7, 7),
        (2.5, 2.5),
        ("RUN", "RUN"),
        (ua.LocalizedText("Running"), "Running"),
        (b"\x01\x02", str(b"\x01\x02")),
        ([1, 2], "[1, 2]"),
    ],
)
def test_values_pass_through_or_become_text(value: Any, expected: Any) -> None:
    s = datavalue_to_sample(dv(value), NODE, RECEIVED)
    assert s is not None and s.value == expected and type(s.value) is type(expected)


def test_empty_value_gives_no_sample() -> None:
    assert datavalue_to_sample(ua.DataValue(), NODE, RECEIVED) is None
