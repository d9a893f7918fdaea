"""Decode and validate edge envelopes (pure functions; never raises on bad input).

The fast path decodes the whole payload with typed msgspec structs in one pass. Only when
that fails does the slow path run: it decodes the envelope with the samples left raw, then
each sample on its own, so the valid samples of a message survive a bad one and every
problem gets a precise reason (``samples[3].ts: ...``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from karkhana.envelope import ENVELOPE_VERSION
from karkhana.models import ASSET_PATH_RE, SIGNAL_RE, SampleValue, iso_utc, to_ns
from karkhana.topics import agent_from_samples_topic

log = logging.getLogger(__name__)

MAX_SAMPLES_PER_MESSAGE = 100_000
MAX_STR_VALUE_CHARS = 1024
MAX_UNIT_CHARS = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
QUALITIES = frozenset({"good", "uncertain", "bad"})
REASONS_LISTED = 5
"""How many sample problems a dead-letter reason lists before ``and N more``."""

_SHOWN_CHARS = 48
_KNOWN_PAIRS_MAX = 65_536


class _Sample(msgspec.Struct):
    asset: str
    signal: str
    ts: datetime
    value: bool | int | float | str
    quality: str = "good"
    unit: str | None = None


class _LooseEnvelope(msgspec.Struct):
    v: int
    agent: str
    seq: int
    sent: datetime
    samples: list[msgspec.Raw]


class _Head(msgspec.Struct):
    v: object = None


# The fast path's structs: msgspec checks every per-field rule in C, so the Python loop per
# sample only checks names (cached), the time window, and converts the timestamp. Anything
# these reject goes to the slow path, which finds the precise reasons.
_Checked = msgspec.Meta
_FastValue = (
    bool
    | Annotated[int, _Checked(ge=INT64_MIN, le=INT64_MAX)]
    | float
    | Annotated[str, _Checked(max_length=MAX_STR_VALUE_CHARS)]
)


class _FastSample(msgspec.Struct, gc=False):
    asset: str
    signal: str
    ts: str
    """Parsed later, once per distinct text (:class:`gateway.columns.SampleColumns` caches
    it): the samples of one envelope usually share a few timestamps."""
    value: _FastValue
    quality: Literal["good", "uncertain", "bad"] = "good"
    unit: Annotated[str, _Checked(max_length=MAX_UNIT_CHARS)] | None = None


class _FastEnvelope(msgspec.Struct):
    v: int
    agent: str
    seq: Annotated[int, _Checked(ge=0, le=INT64_MAX)]
    sent: Annotated[datetime, _Checked(tz=True)]
    samples: Annotated[
        list[_FastSample], _Checked(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)
    ]


_decode_envelope = msgspec.json.Decoder(_FastEnvelope).decode
_decode_loose = msgspec.json.Decoder(_LooseEnvelope).decode
_decode_head = msgspec.json.Decoder(_Head).decode
_decode_sample = msgspec.json.Decoder(_Sample).decode


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Plausibility limits applied to every message."""

    max_payload_bytes: int = 1_000_000
    min_ts: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_future_s: float = 86400 * 2

    @property
    def min_ns(self) -> int:
        return to_ns(self.min_ts)


class NormalizedSample(msgspec.Struct, frozen=True, gc=False):
    """A validated sample: UTC nanoseconds, native value, quality name.

    A msgspec struct rather than a dataclass: one is built per sample on the hot path, and
    this is ten times cheaper to build than a frozen dataclass (``gc=False``: it only holds
    atoms, so the cycle collector need not track it).
    """

    asset: str
    signal: str
    ts_ns: int
    value: SampleValue
    quality: str = "good"
    unit: str | None = None


@dataclass(slots=True)
class DecodeResult:
    """What one MQTT message turned into.

    - ``reason is None``: a fully valid envelope; all its samples are in ``samples``.
    - ``reason`` set and ``agent``/``seq`` set: a valid envelope with some bad samples (the
      valid ones are in ``samples``); the message is also a dead letter.
    - ``reason`` set and ``seq is None``: the whole message is a dead letter.
    """

    topic: str
    payload: bytes
    received_ns: int
    agent: str | None = None
    seq: int | None = None
    samples: list[NormalizedSample] = field(default_factory=list)
    reason: str | None = None
    sample_errors: int = 0
    pending: list[_FastSample] | None = None
    """From :meth:`EnvelopeDecoder.parse`: the envelope's samples, typed but not yet checked
    one by one (names, time window); the writer does that while it groups them per series."""

    @property
    def sample_count(self) -> int:
        """Samples carried (pending ones included)."""
        return len(self.pending) if self.pending is not None else len(self.samples)

    @property
    def is_dead_letter(self) -> bool:
        return self.reason is not None

    @property
    def is_envelope(self) -> bool:
        """True when the envelope itself was valid (dedup by agent+seq applies)."""
        return self.seq is not None


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return text


_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")


def _msgspec_reason(exc: Exception, prefix: str = "") -> str:
    """``Expected `int`, got `str` - at `$.seq``` -> ``seq: expected `int`, got `str```.

    ``prefix`` locates the decoded value (``samples[3]``); empty for the envelope.
    """
    text = str(exc)
    path = ""
    if " - at `$" in text:
        text, _, at = text.partition(" - at `$")
        path = at.rstrip("`").lstrip(".")
    missing = _MISSING_FIELD.fullmatch(text)
    if missing is not None:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        text = "required field missing"
    elif text == "Number out of range":
        text = "number out of range (not a finite 64-bit float)"
    if not path:
        where = prefix or "envelope"
    elif not prefix:
        where = path
    else:
        where = prefix + ("" if path.startswith("[") else ".") + path
    return f"{where}: {_lower_first(text)}"


def _lower_first(text: str) -> str:
    """``Expected ...`` -> ``expected ...`` but ``JSON is ...`` stays."""
    if len(text) > 1 and text[1].islower():
        return text[:1].lower() + text[1:]
    return text


def _ts_text(ts: datetime) -> str:
    """UTC text of an aware timestamp; as given when UTC is outside the datetime range."""
    try:
        return iso_utc(ts)
    except OverflowError:
        return ts.isoformat()


def _format_min(ts: datetime) -> str:
    utc = ts.astimezone(UTC)
    if utc.hour == utc.minute == utc.second == utc.microsecond == 0:
        return utc.date().isoformat()
    return iso_utc(utc)


class EnvelopeDecoder:
    """Decodes edge messages against fixed limits; keeps a small cache of valid names."""

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits or DecodeLimits()
        self._min_ns = self.limits.min_ns
        self._min_text = _format_min(self.limits.min_ts)
        self._max_future_ns = int(self.limits.max_future_s * 1_000_000_000)
        self._known_pairs: dict[tuple[str, str], tuple[str, str]] = {}
        """Valid (asset, signal) pairs, each mapped to itself: samples share these strings
        instead of keeping the copies each decode makes (less memory per queued sample)."""
        self._topic_agents: dict[str, str] = {}
        """Samples topics seen, mapped to their agent id."""

    def decode(self, topic: str, payload: bytes, received_ns: int) -> DecodeResult:
        """Decode one message received at ``received_ns`` (Unix ns), every sample checked and
        normalized into ``samples``. Never raises."""
        result = self.parse(topic, payload, received_ns)
        pending, result.pending = result.pending, None
        if pending is not None:
            errors: list[str] = []
            max_ns = received_ns + self._max_future_ns
            for index, s in enumerate(pending):
                checked = self.check_sample(s, max_ns)
                if isinstance(checked, str):
                    errors.append(f"samples[{index}].{checked}")
                else:
                    result.samples.append(checked)
            if errors:
                self.set_sample_reason(result, errors, len(pending))
        return result

    @property
    def max_future_ns(self) -> int:
        return self._max_future_ns

    def parse(self, topic: str, payload: bytes, received_ns: int) -> DecodeResult:
        """Like :meth:`decode`, but a well-formed envelope's samples are left in ``pending``
        for the writer to check (the hot path). Never raises."""
        try:
            return self._decode(topic, payload, received_ns)
        except RecursionError:
            # msgspec stops at the interpreter's recursion limit (about 1000 levels).
            return DecodeResult(
                topic=topic,
                payload=payload,
                received_ns=received_ns,
                reason="payload is nested too deeply (JSON arrays/objects beyond the depth limit)",
            )
        except Exception as exc:
            # A gap in the checks must not stop ingestion: the message is a dead letter.
            log.exception("unexpected error decoding a message on %s", topic)
            return DecodeResult(
                topic=topic,
                payload=payload,
                received_ns=received_ns,
                reason=f"message could not be decoded: {type(exc).__name__}: {exc}",
            )

    def _decode(self, topic: str, payload: bytes, received_ns: int) -> DecodeResult:
        result = DecodeResult(topic=topic, payload=payload, received_ns=received_ns)
        agent = self._topic_agents.get(topic)
        if agent is None:
            agent = agent_from_samples_topic(topic)
            if agent is not None:
                if len(self._topic_agents) >= _KNOWN_PAIRS_MAX:
                    self._topic_agents.clear()
                self._topic_agents[topic] = agent
        if agent is None:
            result.reason = f"topic {topic!r} is not karkhana/v1/edge/{{agent}}/samples"
            return result
        if len(payload) > self.limits.max_payload_bytes:
            result.reason = (
                f"payload too large: {len(payload)} bytes (max {self.limits.max_payload_bytes})"
            )
            return result
        try:
            envelope = _decode_envelope(payload)
        except msgspec.ValidationError:  # a subclass of DecodeError: catch it first
            return self._decode_slow(result, agent)
        except msgspec.DecodeError as exc:
            result.reason = _not_json_reason(payload, exc)
            return result
        problem = self._check_envelope(
            envelope.v, envelope.agent, envelope.seq, envelope.sent, len(envelope.samples), agent
        )
        if problem is not None:
            result.reason = problem
            return result
        result.agent = envelope.agent
        result.seq = envelope.seq
        result.pending = envelope.samples
        return result

    # -- slow path -------------------------------------------------------------------------

    def _decode_slow(self, result: DecodeResult, agent: str) -> DecodeResult:
        payload = result.payload
        try:
            head = _decode_head(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.reason = _msgspec_reason(exc)
            return result
        if head.v != ENVELOPE_VERSION:
            result.reason = _version_reason(head.v)
            return result
        try:
            loose = _decode_loose(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.reason = _msgspec_reason(exc)
            return result
        problem = self._check_envelope(
            loose.v, loose.agent, loose.seq, loose.sent, len(loose.samples), agent
        )
        if problem is not None:
            result.reason = problem
            return result
        result.agent = loose.agent
        result.seq = loose.seq
        errors: list[str] = []
        max_ns = result.received_ns + self._max_future_ns
        for index, raw in enumerate(loose.samples):
            prefix = f"samples[{index}]"
            try:
                sample = _decode_sample(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                errors.append(_msgspec_reason(exc, prefix=prefix))
                continue
            checked = self.check_sample(sample, max_ns)
            if isinstance(checked, str):
                errors.append(f"{prefix}.{checked}")
            else:
                result.samples.append(checked)
        if errors:
            self.set_sample_reason(result, errors, len(loose.samples))
        return result

    # -- checks ----------------------------------------------------------------------------

    def _check_envelope(
        self, v: int, agent: str, seq: int, sent: datetime, count: int, topic_agent: str
    ) -> str | None:
        if v != ENVELOPE_VERSION:
            return _version_reason(v)
        if agent != topic_agent:
            return f"agent: {_shown(agent)} does not match the topic's agent {_shown(topic_agent)}"
        if seq < 0 or seq > INT64_MAX:
            return f"seq: {_shown(seq)} is not a non-negative 64-bit integer"
        if sent.tzinfo is None:
            return f"sent: timestamp {sent.isoformat()} has no timezone (UTC offset or Z required)"
        if count == 0:
            return "samples: empty list (at least one sample required)"
        if count > MAX_SAMPLES_PER_MESSAGE:
            return f"samples: {count} samples (max {MAX_SAMPLES_PER_MESSAGE})"
        return None

    def check_names(self, asset: str, signal: str) -> tuple[str, str] | str:
        """The (asset, signal) pair (one shared tuple per valid pair), or the problem."""
        key = (asset, signal)
        pair = self._known_pairs.get(key)
        if pair is None:
            if not ASSET_PATH_RE.fullmatch(asset):
                return (
                    f"asset: {_shown(asset)} is not site/area/line/machine "
                    "(lower-case letters, digits, '-' and '_')"
                )
            if not SIGNAL_RE.fullmatch(signal):
                return f"signal: {_shown(signal)} does not match {SIGNAL_RE.pattern}"
            if len(self._known_pairs) >= _KNOWN_PAIRS_MAX:
                self._known_pairs.clear()
            self._known_pairs[key] = pair = key
        return pair

    def check_ts(self, ts: datetime | str, max_ns: int) -> int | str:
        """The timestamp in Unix ns, or the problem (format, timezone, time window)."""
        if isinstance(ts, str):
            try:
                ts = msgspec.convert(ts, datetime)
            except msgspec.ValidationError as exc:
                return f"ts: {_lower_first(str(exc))}"
        if ts.tzinfo is None:
            return f"ts: timestamp {ts.isoformat()} has no timezone (UTC offset or Z required)"
        ts_ns = to_ns(ts)
        if ts_ns < self._min_ns:
            return f"ts: timestamp {_ts_text(ts)} before {self._min_text}"
        if ts_ns > max_ns:
            return (
                f"ts: timestamp {_ts_text(ts)} more than {self.limits.max_future_s:g} s "
                "in the future"
            )
        return ts_ns

    def check_sample(self, s: _Sample | _FastSample, max_ns: int) -> NormalizedSample | str:
        """A normalized sample, or the problem as ``field: reason``."""
        pair = self.check_names(s.asset, s.signal)
        if isinstance(pair, str):
            return pair
        ts_ns = self.check_ts(s.ts, max_ns)
        if isinstance(ts_ns, str):
            return ts_ns
        value = s.value
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):  # type: ignore[arg-type]
                return f"value: {value!r} is not a finite number"
        elif kind is int:
            if value < INT64_MIN or value > INT64_MAX:  # type: ignore[operator]
                return f"value: integer {_shown(value)} is outside the 64-bit range"
        elif kind is str and len(value) > MAX_STR_VALUE_CHARS:  # type: ignore[arg-type]
            return (
                f"value: string of {len(value)} characters "  # type: ignore[arg-type]
                f"(max {MAX_STR_VALUE_CHARS})"
            )
        if s.quality not in QUALITIES:
            return f"quality: {_shown(s.quality)} is not one of good, uncertain, bad"
        if s.unit is not None and len(s.unit) > MAX_UNIT_CHARS:
            return f"unit: {len(s.unit)} characters (max {MAX_UNIT_CHARS})"
        return NormalizedSample(pair[0], pair[1], ts_ns, value, s.quality, s.unit)

    @staticmethod
    def set_sample_reason(result: DecodeResult, errors: list[str], total: int) -> None:
        listed = "; ".join(errors[:REASONS_LISTED])
        more = len(errors) - REASONS_LISTED
        suffix = f"; and {more} more" if more > 0 else ""
        result.sample_errors = len(errors)
        result.reason = f"{len(errors)} of {total} samples rejected: {listed}{suffix}"


def _version_reason(v: object) -> str:
    if v is None:
        return f"v: missing or null (expected {ENVELOPE_VERSION})"
    return f"v: unsupported envelope version {_shown(v)} (expected {ENVELOPE_VERSION})"


_BYTE_POSITION = re.compile(r"\(byte (\d+)\)")


def _not_json_reason(payload: bytes, exc: msgspec.DecodeError) -> str:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as utf8_exc:
        return f"payload is not valid UTF-8 (invalid byte at offset {utf8_exc.start})"
    if not payload.strip():
        return "payload is not JSON: empty"
    text = _lower_first(str(exc))
    match = _BYTE_POSITION.search(text)
    if match is not None:
        at = int(match.group(1))
        if payload[at : at + 3] in (b"NaN", b"Inf") or payload[at : at + 4] == b"-Inf":
            text += " (NaN and Infinity are not JSON; values must be finite numbers)"
    return f"payload is not JSON: {text}"


def decode_message(
    topic: str, payload: bytes, received_ns: int, limits: DecodeLimits | None = None
) -> DecodeResult:
    """One-off decode (a fresh :class:`EnvelopeDecoder`); long-lived code keeps a decoder."""
    return EnvelopeDecoder(limits).decode(topic, payload, received_ns)
