"""Decoding and validation rules of edge envelopes (every rule, hand-worked expectations)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.decode import DecodeLimits, DecodeResult, EnvelopeDecoder, NormalizedSample

TOPIC = "karkhana/v1/edge/agent-1/samples"
# 2024-05-01T00:00:00Z is 1714521600 s after the epoch (19844 days x 86400 s).
MAY_1_NS = 1_714_521_600 * 1_000_000_000
RECEIVED_NS = MAY_1_NS + 12 * 3600 * 1_000_000_000  # 2024-05-01T12:00:00Z


def sample(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "asset": "lahore/weaving/line-1/loom-03",
        "signal": "state",
        "ts": "2024-05-01T10:00:00Z",
        "value": 1,
    }
    base.update(overrides)
    return base


def envelope(samples: list[Any], **overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "agent": "agent-1",
        "seq": 7,
        "sent": "2024-05-01T10:00:01Z",
        "samples": samples,
    }
    body.update(overrides)
    return json.dumps(body).encode()


def decode(payload: bytes, topic: str = TOPIC, limits: DecodeLimits | None = None) -> DecodeResult:
    return EnvelopeDecoder(limits).decode(topic, payload, RECEIVED_NS)


def decode_one(**overrides: Any) -> DecodeResult:
    return decode(envelope([sample(**overrides)]))


def test_valid_envelope_is_normalized() -> None:
    result = decode(
        envelope(
            [
                sample(signal="count", value=42),
                sample(signal="speed", value=12.5, unit="m/min", quality="uncertain"),
                sample(signal="mode.auto", value=True, quality="bad"),
                sample(signal="state", value="running", ts="2024-05-01T15:00:00.5+05:00"),
            ]
        )
    )
    assert result.reason is None
    assert not result.is_dead_letter
    assert (result.agent, result.seq) == ("agent-1", 7)
    ten = MAY_1_NS + 10 * 3600 * 1_000_000_000
    asset = "lahore/weaving/line-1/loom-03"
    assert result.samples == [
        NormalizedSample(asset, "count", ten, 42, "good", None),
        NormalizedSample(asset, "speed", ten, 12.5, "uncertain", "m/min"),
        NormalizedSample(asset, "mode.auto", ten, True, "bad", None),
        # 15:00:00.5 at +05:00 is 10:00:00.5 UTC.
        NormalizedSample(asset, "state", ten + 500_000_000, "running", "good", None),
    ]
    assert type(result.samples[0].value) is int
    assert type(result.samples[1].value) is float
    assert type(result.samples[2].value) is bool


def test_unknown_fields_are_ignored() -> None:
    result = decode(envelope([sample(extra="x")], note="forward compatible"))
    assert result.reason is None
    assert len(result.samples) == 1


# -- message-level problems: the whole message is a dead letter ----------------------------


def assert_message_dead(result: DecodeResult, *fragments: str) -> None:
    assert result.is_dead_letter
    assert result.seq is None and result.agent is None
    assert result.samples == []
    assert result.reason is not None
    for fragment in fragments:
        assert fragment in result.reason, result.reason


def test_not_json() -> None:
    assert_message_dead(decode(b"hello"), "payload is not JSON")


def test_empty_payload() -> None:
    assert_message_dead(decode(b""), "payload is not JSON: empty")


def test_nan_literal_is_not_json() -> None:
    payload = envelope([sample(value=0.0)]).replace(b'"value": 0.0', b'"value": NaN')
    assert_message_dead(decode(payload), "payload is not JSON", "NaN")


def test_infinity_literal_is_not_json() -> None:
    payload = envelope([sample(value=0.0)]).replace(b'"value": 0.0', b'"value": Infinity')
    assert_message_dead(decode(payload), "payload is not JSON", "Infinity")


def test_bad_utf8_payload() -> None:
    assert_message_dead(decode(b"\xff\xfe{}"), "not valid UTF-8", "offset 0")


def test_bad_utf8_inside_a_string() -> None:
    payload = envelope([sample(signal="SIGNAL")]).replace(b"SIGNAL", b"s\xc3\x28")
    offset = payload.index(b"\xc3")
    assert_message_dead(decode(payload), "not valid UTF-8", f"offset {offset}")


def test_oversized_payload() -> None:
    payload = envelope([sample(value="x" * 900)])
    limits = DecodeLimits(max_payload_bytes=500)
    assert_message_dead(
        decode(payload, limits=limits), f"payload too large: {len(payload)} bytes (max 500)"
    )


def test_top_level_not_an_object() -> None:
    assert_message_dead(decode(b"[1, 2]"), "envelope: expected `object`, got `array`")


@pytest.mark.parametrize("v", [2, 0, "1", None])
def test_wrong_version(v: object) -> None:
    assert_message_dead(decode(envelope([sample()], v=v)), "v: ", "(expected 1)")


def test_missing_version() -> None:
    body = json.loads(envelope([sample()]))
    del body["v"]
    assert_message_dead(decode(json.dumps(body).encode()), "v: missing")


def test_agent_mismatch() -> None:
    assert_message_dead(
        decode(envelope([sample()], agent="agent-2")),
        "agent: 'agent-2' does not match the topic's agent 'agent-1'",
    )


@pytest.mark.parametrize(
    ("seq", "fragment"),
    [
        (-1, "seq: -1 is not a non-negative 64-bit integer"),
        (2**63, "is not a non-negative 64-bit integer"),
        ("7", "seq: expected `int`, got `str`"),
        (1.5, "seq: expected `int`, got `float`"),
        (True, "seq: expected `int`, got `bool`"),
    ],
)
def test_bad_seq(seq: object, fragment: str) -> None:
    assert_message_dead(decode(envelope([sample()], seq=seq)), fragment)


def test_seq_zero_and_int64_max_are_valid() -> None:
    assert decode(envelope([sample()], seq=0)).seq == 0
    assert decode(envelope([sample()], seq=2**63 - 1)).seq == 2**63 - 1


@pytest.mark.parametrize(
    ("sent", "fragment"),
    [
        ("yesterday", "sent: invalid RFC3339"),
        ("2024-05-01T10:00:00", "sent: timestamp 2024-05-01T10:00:00 has no timezone"),
        (17, "sent: expected `datetime`, got `int`"),
    ],
)
def test_bad_sent(sent: object, fragment: str) -> None:
    assert_message_dead(decode(envelope([sample()], sent=sent)), fragment)


def test_empty_samples() -> None:
    assert_message_dead(decode(envelope([])), "samples: empty list")


def test_samples_not_a_list() -> None:
    assert_message_dead(decode(envelope({"a": 1})), "samples: expected `array`")  # type: ignore[arg-type]


def test_too_many_samples() -> None:
    payload = envelope([sample()] * 100_001)
    limits = DecodeLimits(max_payload_bytes=len(payload))
    assert_message_dead(decode(payload, limits=limits), "samples: 100001 samples (max 100000)")


def test_exactly_max_samples_is_valid() -> None:
    samples = [sample(ts=f"2024-05-01T10:00:00.{i:06d}Z") for i in range(100_000)]
    payload = envelope(samples)
    result = decode(payload, limits=DecodeLimits(max_payload_bytes=len(payload)))
    assert result.reason is None
    assert len(result.samples) == 100_000


@pytest.mark.parametrize(
    "topic",
    [
        "karkhana/v1/edge//samples",
        "karkhana/v1/edge/agent-1/status",
        "karkhana/v2/edge/agent-1/samples",
        "something/else",
    ],
)
def test_topic_not_an_edge_samples_topic(topic: str) -> None:
    assert_message_dead(decode(envelope([sample()]), topic=topic), f"topic {topic!r} is not")


# -- sample-level problems: valid samples survive, one reason lists the bad ones ------------


def assert_sample_rejected(result: DecodeResult, *fragments: str) -> None:
    assert result.is_dead_letter
    assert (result.agent, result.seq) == ("agent-1", 7)
    assert result.samples == []
    assert result.sample_errors == 1
    assert result.reason is not None
    assert result.reason.startswith("1 of 1 samples rejected: samples[0].")
    for fragment in fragments:
        assert fragment in result.reason, result.reason


def test_value_out_of_float_range() -> None:
    payload = envelope([sample(value=0.5)]).replace(b'"value": 0.5', b'"value": 1e400')
    assert_sample_rejected(decode(payload), "samples[0].value: number out of range")


def test_value_negative_out_of_float_range() -> None:
    payload = envelope([sample(value=0.5)]).replace(b'"value": 0.5', b'"value": -1e999')
    assert_sample_rejected(decode(payload), "samples[0].value: number out of range")


def test_largest_finite_float_is_valid() -> None:
    result = decode_one(value=1.7976931348623157e308)
    assert result.reason is None
    assert result.samples[0].value == 1.7976931348623157e308


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_outside_64_bits(value: int) -> None:
    assert_sample_rejected(decode_one(value=value), "samples[0].value: integer", "64-bit range")


def test_int_far_outside_64_bits() -> None:
    payload = envelope([sample(value=0)]).replace(b'"value": 0', b'"value": ' + b"9" * 5000)
    assert_sample_rejected(decode(payload), "samples[0].value")


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
def test_int_at_64_bit_bounds_is_valid(value: int) -> None:
    result = decode_one(value=value)
    assert result.reason is None
    assert result.samples[0].value == value


def test_string_value_too_long() -> None:
    assert decode_one(value="x" * 1024).reason is None
    assert_sample_rejected(
        decode_one(value="x" * 1025), "samples[0].value: string of 1025 characters (max 1024)"
    )


@pytest.mark.parametrize("value", [None, [1], {"a": 1}])
def test_value_of_wrong_type(value: object) -> None:
    assert_sample_rejected(decode_one(value=value), "samples[0].value: expected")


def test_naive_timestamp() -> None:
    assert_sample_rejected(
        decode_one(ts="2024-05-01T10:00:00"),
        "samples[0].ts: timestamp 2024-05-01T10:00:00 has no timezone",
    )


def test_unparseable_timestamp() -> None:
    assert_sample_rejected(decode_one(ts="01/05/2024 10:00"), "samples[0].ts: invalid RFC3339")


def test_timestamp_before_min() -> None:
    assert_sample_rejected(
        decode_one(ts="1970-01-01T00:00:00Z"),
        "samples[0].ts: timestamp 1970-01-01T00:00:00Z before 2000-01-01",
    )
    assert_sample_rejected(decode_one(ts="1999-12-31T23:59:59Z"), "before 2000-01-01")
    assert decode_one(ts="2000-01-01T00:00:00Z").reason is None


def test_timestamp_min_is_configurable() -> None:
    limits = DecodeLimits(min_ts=datetime(2024, 5, 1, 6, 30, tzinfo=UTC))
    result = decode(envelope([sample(ts="2024-05-01T06:29:59Z")]), limits=limits)
    assert result.reason is not None
    assert "before 2024-05-01T06:30:00Z" in result.reason


def test_timestamp_too_far_in_the_future() -> None:
    # Received at 2024-05-01T12:00:00Z with the default 2-day horizon: 2024-05-03T12:00:00Z
    # is the last accepted instant.
    assert decode_one(ts="2024-05-03T12:00:00Z").reason is None
    assert_sample_rejected(
        decode_one(ts="2024-05-03T12:00:01Z"),
        "samples[0].ts: timestamp 2024-05-03T12:00:01Z more than 172800 s in the future",
    )
    assert_sample_rejected(decode_one(ts="9999-12-31T23:59:59Z"), "in the future")


def test_future_horizon_is_configurable() -> None:
    limits = DecodeLimits(max_future_s=60)
    ok = decode(envelope([sample(ts="2024-05-01T12:01:00Z")]), limits=limits)
    late = decode(envelope([sample(ts="2024-05-01T12:01:01Z")]), limits=limits)
    assert ok.reason is None
    assert late.reason is not None and "more than 60 s in the future" in late.reason


@pytest.mark.parametrize("asset", ["lahore/weaving/line-1", "Lahore/weaving/line-1/loom", ""])
def test_bad_asset(asset: str) -> None:
    assert_sample_rejected(decode_one(asset=asset), "samples[0].asset:", "site/area/line/machine")


@pytest.mark.parametrize("signal", ["State", "1st", "", "s" * 65, "a b"])
def test_bad_signal(signal: str) -> None:
    assert_sample_rejected(decode_one(signal=signal), "samples[0].signal:")


def test_bad_quality() -> None:
    assert_sample_rejected(
        decode_one(quality="great"), "samples[0].quality: 'great' is not one of good, uncertain"
    )


def test_unit_too_long() -> None:
    assert decode_one(unit="u" * 32).reason is None
    assert_sample_rejected(decode_one(unit="u" * 33), "samples[0].unit: 33 characters (max 32)")


def test_missing_sample_field() -> None:
    body = sample()
    del body["ts"]
    assert_sample_rejected(decode(envelope([body])), "samples[0].ts: required field missing")


def test_sample_not_an_object() -> None:
    result = decode(envelope([sample(), 3]))
    assert result.reason == "1 of 2 samples rejected: samples[1]: expected `object`, got `int`"
    assert len(result.samples) == 1


def test_bad_samples_among_good_ones_keep_the_good_ones() -> None:
    samples = [sample(ts=f"2024-05-01T10:00:0{i}Z", value=i) for i in range(4)]
    samples[1]["ts"] = "1970-01-01T00:00:00Z"
    samples[3]["value"] = "x" * 2000
    result = decode(envelope(samples))
    assert [s.value for s in result.samples] == [0, 2]
    assert result.sample_errors == 2
    assert result.reason == (
        "2 of 4 samples rejected: "
        "samples[1].ts: timestamp 1970-01-01T00:00:00Z before 2000-01-01; "
        "samples[3].value: string of 2000 characters (max 1024)"
    )


def test_reason_lists_the_first_five_problems() -> None:
    samples = [sample(quality=f"q{i}") for i in range(8)] + [sample()]
    result = decode(envelope(samples))
    assert result.reason is not None
    assert result.reason.startswith("8 of 9 samples rejected: samples[0].quality")
    assert "samples[4].quality" in result.reason
    assert "samples[5]" not in result.reason
    assert result.reason.endswith("; and 3 more")
    assert len(result.samples) == 1


def test_all_samples_bad_still_identifies_the_envelope() -> None:
    result = decode(envelope([sample(quality="x"), sample(value=None)]))
    assert (result.agent, result.seq) == ("agent-1", 7)
    assert result.samples == []
    assert result.sample_errors == 2


def test_fast_and_slow_paths_agree_on_sample_checks() -> None:
    # A bad value type forces the per-sample path; the timestamp check must still apply.
    result = decode(envelope([sample(value=None), sample(ts="1970-01-01T00:00:00Z")]))
    assert result.reason is not None
    assert "samples[0].value" in result.reason
    assert "samples[1].ts: timestamp 1970-01-01T00:00:00Z before 2000-01-01" in result.reason


def test_decode_never_raises_on_garbage() -> None:
    rng = random.Random(20240501)
    valid = envelope([sample(), sample(value=2.5), sample(value="on")])
    decoder = EnvelopeDecoder()
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[position] = rng.randrange(256)
            elif action < 0.7:
                del data[position]
            else:
                data.insert(position, rng.randrange(256))
        result = decoder.decode(TOPIC, bytes(data), RECEIVED_NS)
        assert result.reason is not None or len(result.samples) == 3


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        ("0001-01-01T00:00:00+05:00", "timestamp 0001-01-01T00:00:00+05:00 before 2000-01-01"),
        ("9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59-05:00 more than 172800 s in the future"),
    ],
)
def test_timestamps_at_the_edges_of_the_datetime_range(ts: str, fragment: str) -> None:
    # Their UTC equivalents fall outside years 1..9999; the reason shows them as given.
    assert_sample_rejected(decode_one(ts=ts), fragment)
