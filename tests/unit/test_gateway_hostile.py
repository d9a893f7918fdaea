"""Property tests of the decoder against random and hostile payloads.

Every hostile message must turn into a dead letter whose reason names the problem, every
valid sample (also those next to bad ones in the same envelope) must come out exactly as it
was sent, and no message may reach the decoder's catch-all for unexpected errors.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.columns import SampleColumns
from gateway.decode import DecodeLimits, DecodeResult, EnvelopeDecoder, NormalizedSample
from tests.helpers.hostile import EPOCH, RECEIVED_NS, Case, Expected, HostileGenerator

LIMIT = 100_000
DECODER_LIMITS = DecodeLimits(max_payload_bytes=LIMIT)
TOPIC = "karkhana/v1/edge/edge-1/samples"
KINDS = HostileGenerator.kinds_of()
CATCH_ALL = "message could not be decoded"
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=2)

many = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(topic: str, payload: bytes) -> DecodeResult:
    return EnvelopeDecoder(DECODER_LIMITS).decode(topic, payload, RECEIVED_NS)


def typed(value: object) -> tuple[str, str]:
    """Equality that tells True from 1 and -0.0 from 0.0."""
    return type(value).__name__, repr(value)


def as_expected(s: NormalizedSample) -> tuple[object, ...]:
    return (s.asset, s.signal, s.ts_ns, typed(s.value), s.quality, s.unit)


def expected_tuple(e: Expected) -> tuple[object, ...]:
    return (e.asset, e.signal, e.ts_ns, typed(e.value), e.quality, e.unit)


def check(decoder: EnvelopeDecoder, case: Case) -> None:
    result = decoder.decode(case.topic, case.payload, RECEIVED_NS)
    where = f"{case.kind}: {case.payload[:300]!r}"
    assert not (result.reason or "").startswith(CATCH_ALL), f"{where}\n{result.reason}"
    if case.reason is None:
        assert result.reason is None, f"{where}\n{result.reason}"
    else:
        assert result.reason is not None, where
        assert case.reason in result.reason, f"{where}\n{result.reason}"
        for problem in case.problems:
            assert problem in result.reason, f"{where}\n{problem!r} not in {result.reason}"
    assert [as_expected(s) for s in result.samples] == [expected_tuple(e) for e in case.stored]


@many
@given(rng=st.randoms(use_true_random=False))
def test_mixed_valid_and_hostile_messages_decode_to_their_expected_outcome(rng: object) -> None:
    generator = HostileGenerator(rng, max_payload_bytes=LIMIT)  # type: ignore[arg-type]
    decoder = EnvelopeDecoder(DECODER_LIMITS)  # one long-lived decoder, as in the gateway
    for _ in range(20):
        check(decoder, generator.case())


@many
@given(rng=st.randoms(use_true_random=False))
def test_the_writers_path_checks_and_groups_exactly_as_expected(rng: object) -> None:
    """The gateway's own path: parse (network side), then the writer's per-sample checks
    while grouping per series, with its caches kept across messages and batches."""
    generator = HostileGenerator(rng, max_payload_bytes=LIMIT)  # type: ignore[arg-type]
    decoder = EnvelopeDecoder(DECODER_LIMITS)
    columns = SampleColumns(decoder)
    for batch in range(4):
        columns.clear()
        expected: list[Expected] = []
        for _ in range(8):
            case = generator.case()
            result = decoder.parse(case.topic, case.payload, RECEIVED_NS)
            if result.is_envelope:
                columns.add(result)  # what the writer does with every valid envelope
            where = f"{case.kind}: {case.payload[:300]!r}"
            assert not (result.reason or "").startswith(CATCH_ALL), f"{where}\n{result.reason}"
            if case.reason is None:
                assert result.reason is None, f"{where}\n{result.reason}"
            else:
                assert result.reason is not None and case.reason in result.reason, where
                for problem in case.problems:
                    assert problem in result.reason, f"{where}\n{problem!r} not in {result.reason}"
            expected += case.stored
        runs = columns.filled()
        got = sorted(
            (s.asset, s.signal, s.ts_ns, typed(s.value), s.quality)
            for run in runs
            for s in run.samples()
        )
        want = sorted((e.asset, e.signal, e.ts_ns, typed(e.value), e.quality) for e in expected)
        assert got == want, f"batch {batch}"
        # A run carries the last unit its series named in the batch.
        for run in runs:
            units = [e.unit for e in expected if (e.asset, e.signal) == (run.asset, run.signal)]
            named = [u for u in units if u is not None]
            assert run.unit == (named[-1] if named else None)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_every_hostile_kind_is_a_dead_letter_with_its_reason(kind: str, rng: object) -> None:
    generator = HostileGenerator(rng, max_payload_bytes=LIMIT)  # type: ignore[arg-type]
    check(EnvelopeDecoder(DECODER_LIMITS), generator.hostile(kind))


def test_the_generator_covers_the_hostile_kinds_of_the_acceptance_criteria() -> None:
    assert set(KINDS) == {
        "bad_samples",  # wrong types, NaN-range numbers, huge strings, far past/future ts
        "deep_nesting",
        "envelope_field",
        "nan_inf",
        "not_an_object",
        "not_json",
        "not_utf8",
        "oversized",
    }


# -- field by field, with oracles written independently of the decoder -----------------------


def envelope(**sample: object) -> bytes:
    body = {"asset": "a/b/c/d", "signal": "x", "ts": "2024-05-01T10:00:00Z", "value": 1}
    body.update(sample)
    return json.dumps(
        {"v": 1, "agent": "edge-1", "seq": 1, "sent": "2024-05-01T10:00:00Z", "samples": [body]}
    ).encode()


_SEGMENT_FIRST = set("abcdefghijklmnopqrstuvwxyz0123456789")
_SEGMENT_REST = _SEGMENT_FIRST | {"_", "-"}


def is_asset_path(text: str) -> bool:
    segments = text.split("/")
    return len(segments) == 4 and all(
        seg and seg[0] in _SEGMENT_FIRST and set(seg) <= _SEGMENT_REST for seg in segments
    )


def is_signal_name(text: str) -> bool:
    lower = set("abcdefghijklmnopqrstuvwxyz")
    rest = lower | set("0123456789_.-")
    return 1 <= len(text) <= 64 and text[0] in lower and set(text) <= rest


segment_chars = st.sampled_from("abz09_-/A.\n\t \x00\u0430\u212a#+")


@many
@given(asset=st.text(segment_chars, max_size=24) | st.text(max_size=24))
@example(asset="a/b/c/d\n")  # '$' in a regex also matches before a final newline
def test_asset_is_accepted_exactly_when_it_is_a_four_level_path(asset: str) -> None:
    result = decode(TOPIC, envelope(asset=asset))
    assert result.reason is None if is_asset_path(asset) else "].asset: " in (result.reason or "")
    assert [s.asset for s in result.samples] == ([asset] if is_asset_path(asset) else [])


@many
@given(signal=st.text(segment_chars, max_size=70) | st.text(max_size=70))
@example(signal="state\n")
def test_signal_is_accepted_exactly_when_it_is_a_signal_name(signal: str) -> None:
    result = decode(TOPIC, envelope(signal=signal))
    if is_signal_name(signal):
        assert result.reason is None
        assert [s.signal for s in result.samples] == [signal]
    else:
        assert "].signal: " in (result.reason or "")
        assert result.samples == []


@many
@given(value=st.floats())
def test_finite_floats_are_kept_exactly_and_nan_inf_are_refused(value: float) -> None:
    result = decode(TOPIC, envelope(value=value))  # json.dumps writes NaN/Infinity literals
    if value == value and abs(value) != float("inf"):
        assert result.reason is None
        assert [typed(s.value) for s in result.samples] == [typed(value)]
    else:
        assert (result.reason or "").startswith("payload is not JSON")
        assert "NaN and Infinity are not JSON" in (result.reason or "")


@many
@given(value=st.integers(min_value=-(2**70), max_value=2**70) | st.integers())
def test_integers_are_kept_exactly_within_64_bits(value: int) -> None:
    result = decode(TOPIC, envelope(value=value))
    if -(2**63) <= value < 2**63:
        assert [typed(s.value) for s in result.samples] == [typed(value)]
    else:
        assert "samples[0].value: " in (result.reason or "")
        assert result.samples == []


@many
@given(value=st.text(max_size=1100))
def test_strings_up_to_1024_characters_are_kept(value: str) -> None:
    result = decode(TOPIC, envelope(value=value))
    if len(value) <= 1024:
        assert [s.value for s in result.samples] == [value]
    else:
        assert f"samples[0].value: string of {len(value)} characters" in (result.reason or "")


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@many
@given(
    ts=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
    )
)
def test_timestamps_are_kept_exactly_within_the_plausible_range(ts: datetime) -> None:
    result = decode(TOPIC, envelope(ts=ts.isoformat()))
    utc_us = (ts - EPOCH) // timedelta(microseconds=1)  # aware arithmetic: no overflow
    received = EPOCH + timedelta(microseconds=RECEIVED_NS // 1000)
    if MIN_TS <= ts <= received + MAX_FUTURE:
        assert result.reason is None, result.reason
        assert [s.ts_ns for s in result.samples] == [utc_us * 1000]
    else:
        assert re.search(
            r"samples\[0\]\.ts: timestamp .* (before|in the future)", result.reason or ""
        )
        assert result.samples == []


@many
@given(ts=st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2024, 5, 1)))
def test_timestamps_without_timezone_are_refused(ts: datetime) -> None:
    result = decode(TOPIC, envelope(ts=ts.isoformat()))
    assert "samples[0].ts: timestamp " in (result.reason or "")
    assert "has no timezone" in (result.reason or "")


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@many
@given(
    fields=st.dictionaries(
        st.sampled_from(["v", "agent", "seq", "sent", "samples", "other"]), json_values
    )
)
def test_arbitrary_json_objects_are_dead_letters_with_a_reason(fields: dict[str, object]) -> None:
    result = decode(TOPIC, json.dumps(fields).encode())
    assert result.reason is not None  # a valid envelope needs a non-empty samples list
    assert not result.reason.startswith(CATCH_ALL)
    assert result.samples == []


@many
@given(payload=st.binary(max_size=300), topic=st.sampled_from([TOPIC, "karkhana/v1/x", ""]))
def test_arbitrary_bytes_are_dead_letters_with_a_reason(payload: bytes, topic: str) -> None:
    result = decode(topic, payload)
    assert result.reason
    assert not result.reason.startswith(CATCH_ALL)
    assert result.samples == []
