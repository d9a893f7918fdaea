"""MQTT payload formats and topic patterns: epoch timestamps and ``{name+}`` tails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from edge.config import MqttTopic
from edge.mapping import PayloadError, TopicMapping, topic_filter, topic_regex

RECEIVED = datetime(2024, 5, 1, 6, 0, 30, tzinfo=UTC)
GROUPS = {"machine": "d1", "signal": "temperature"}


def mapping(**overrides: Any) -> TopicMapping:
    spec: dict[str, Any] = {
        "topic": "sensors/dyeing/{machine}/{signal}",
        "asset": "lahore/dyeing/line-1/{machine}",
        "signal": "{signal}",
    }
    spec.update(overrides)
    return TopicMapping.compile(MqttTopic.model_validate(spec))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # 1714543200 s = 2024-05-01T06:00:00Z (19844 days after 1970-01-01, plus 6 h)
        (b'{"value": 1, "ts": 1714543200}', datetime(2024, 5, 1, 6, 0, tzinfo=UTC)),
        (b'{"value": 1, "ts": 1714543200.25}', datetime(2024, 5, 1, 6, 0, 0, 250_000, UTC)),
        (b'{"value": 1, "ts": 1714543200123}', datetime(2024, 5, 1, 6, 0, 0, 123_000, UTC)),
        (b'{"value": 1, "ts": "2024-05-01T06:00:00Z"}', datetime(2024, 5, 1, 6, 0, tzinfo=UTC)),
    ],
)
def test_json_timestamp_as_epoch_seconds_milliseconds_or_iso(
    payload: bytes, expected: datetime
) -> None:
    assert mapping().to_sample(GROUPS, payload, RECEIVED).ts == expected


@pytest.mark.parametrize("ts", [b"true", b"[1]", b"1e300"])
def test_json_timestamp_of_another_type_is_refused(ts: bytes) -> None:
    with pytest.raises(PayloadError, match="timestamp"):
        mapping().to_sample(GROUPS, b'{"value": 1, "ts": ' + ts + b"}", RECEIVED)


def test_multi_level_tail_fills_asset_segments() -> None:
    m = mapping(topic="plant/lahore/{path+}", asset="lahore/{path}", signal="value")
    assert m.filter == "plant/lahore/#"
    groups = m.match("plant/lahore/dyeing/line-1/dyer-01")
    assert groups == {"path": "dyeing/line-1/dyer-01"}
    sample = m.to_sample(groups, b'{"value": 3}', RECEIVED)
    assert (sample.asset, sample.signal, sample.value) == (
        "lahore/dyeing/line-1/dyer-01",
        "value",
        3,
    )
    short = m.match("plant/lahore/dyeing")
    assert short is not None
    with pytest.raises(PayloadError, match="asset"):
        m.to_sample(short, b'{"value": 3}', RECEIVED)
    assert m.match("plant/lahore") is None


def test_multi_level_tail_regex_and_filter() -> None:
    assert topic_filter("a/{m}/{rest+}") == "a/+/#"
    rx = topic_regex("a/{m}/{rest+}")
    assert rx.match("a/x/b/c").groupdict() == {"m": "x", "rest": "b/c"}  # type: ignore[union-attr]
    assert rx.match("a/x") is None
    assert rx.match("a/x/b//c") is None


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"topic": "a/{rest+}/b", "asset": "s/a/l/m", "signal": "x"}, "last level"),
        ({"topic": "a/{r+}", "asset": "s/a/l/m/{r}", "signal": "x"}, "at most four"),
        ({"topic": "a/{r}/{r+}", "asset": "s/a/l/m", "signal": "x"}, "twice"),
        ({"topic": "a/{r+}", "asset": "s/a/l/{q}", "signal": "x"}, "does not appear"),
    ],
)
def test_multi_level_config_errors(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        MqttTopic.model_validate(spec)
