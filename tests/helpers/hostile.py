"""Random and hostile edge messages with their expected outcome (the ground truth).

Every case says, independently of the gateway's decoder, whether the message must become a
dead letter, a fragment its reason must contain, and exactly which samples must be stored
(timestamps computed here from integer nanoseconds, values as generated). Driven by a
``random.Random``: seeded for the reproducible acceptance run, or hypothesis' own ``randoms()``
in the property tests.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

# 2024-05-01T00:00:00Z = 1714521600 s after the epoch (19844 days x 86400 s).
BASE_NS = 1_714_521_600 * 1_000_000_000
RECEIVED_NS = BASE_NS + 86_400 * 1_000_000_000  # valid timestamps lie before this
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1

Value = bool | int | float | str
_OUT_OF_RANGE = "__number_out_of_float_range__"


@dataclass(frozen=True, slots=True)
class Expected:
    """A sample that must be stored: (asset, signal, ts_ns) is unique within one run."""

    asset: str
    signal: str
    ts_ns: int
    value: Value
    quality: str
    unit: str | None


@dataclass(slots=True)
class Case:
    topic: str
    payload: bytes
    kind: str
    reason: str | None
    """None: a valid message. Otherwise a fragment the dead letter's reason must contain."""
    stored: list[Expected] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """For sample-level dead letters: the start of each rejected sample's listed problem."""


def topic_of(agent: str) -> str:
    return f"karkhana/v1/edge/{agent}/samples"


def _ts_text(rng: random.Random, ts_ns: int) -> str:
    """``ts_ns`` (a whole microsecond) as RFC 3339 with a random offset and precision."""
    micros = ts_ns // 1000
    offset = rng.choice([0, 0, 5 * 60, 5 * 60 + 30, -3 * 60 - 30, 14 * 60, -12 * 60])
    tz = timezone(timedelta(minutes=offset))
    local = (EPOCH + timedelta(microseconds=micros)).astimezone(tz)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{local.microsecond:06d}"
    if local.microsecond or rng.random() < 0.3:
        text += "." + frac[: rng.choice([6, 6, len(frac.rstrip("0")) or 1])]
    if offset == 0 and rng.random() < 0.7:
        return text + rng.choice(["Z", "z"])
    sign = "+" if offset >= 0 else "-"
    return text + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


_TEXT_POOL = string.ascii_letters + string.digits + ' _-./:"\\\n\t\u00e9\u0645\u4e2d\U0001f600\x00'


def _text(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(_TEXT_POOL) for _ in range(rng.randint(0, max_len)))


def _value(rng: random.Random) -> Value:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.random() < 0.5
    if kind == 1:
        return rng.choice([0, -1, 1, INT64_MAX, -(2**63), rng.randint(-(10**12), 10**12)])
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e-300, 1.7976931348623157e308, rng.uniform(-1e6, 1e6)])
    if kind == 3:
        return rng.uniform(-100, 100)
    if kind == 4:
        return rng.choice(["running", "RUN", "", "x" * 1024])
    return _text(rng, 40)


class HostileGenerator:
    """Makes cases for a few agents; seqs strictly increase per agent, keys never repeat."""

    def __init__(self, rng: random.Random, *, max_payload_bytes: int = 1_000_000) -> None:
        self.rng = rng
        self.max_payload_bytes = max_payload_bytes
        # Big parts of messages that must stay under the size limit (three fit with room).
        self._big = max_payload_bytes // 8
        self._seq: dict[str, int] = {}
        self._tick = 0
        self._kinds: list[tuple[str, Callable[[], Case]]] = [
            (name.removeprefix("_hostile_"), getattr(self, name))
            for name in sorted(dir(self))
            if name.startswith("_hostile_")
        ]

    @classmethod
    def kinds_of(cls) -> list[str]:
        """The names of the hostile kinds (``hostile(kind)`` makes one)."""
        return [n.removeprefix("_hostile_") for n in sorted(dir(cls)) if n.startswith("_hostile_")]

    # -- building blocks -------------------------------------------------------------------

    def _agent(self) -> str:
        return self.rng.choice(["edge-1", "edge-2", "lahore_edge-3"])

    def _next_seq(self, agent: str) -> int:
        self._seq[agent] = self._seq.get(agent, self.rng.randint(0, 1000)) + 1
        return self._seq[agent]

    def valid_sample(self) -> tuple[dict[str, object], Expected]:
        rng = self.rng
        self._tick += 1
        # One microsecond apart per generated sample (never the same key twice), spread
        # over the day before RECEIVED_NS.
        ts_ns = BASE_NS + self._tick * 1000 + rng.randrange(0, 80_000) * 1_000_000_000
        asset = rng.choice(
            [
                "lahore/weaving/line-1/loom-01",
                "lahore/weaving/line-1/loom-02",
                "a/b/c/d",
                "0/9/a_-/z-",
            ]
        )
        signal = rng.choice(["state", "count_total", "temperature", "mode.auto", "x", "p-1_2.v"])
        # Unique key: the tick is in ts; the asset/signal choice only spreads series.
        value = _value(rng)
        quality = rng.choice([None, "good", "uncertain", "bad"])
        unit = rng.choice([None, None, "degC", "m/min", "", "\u00b0C", "u" * 32])
        body: dict[str, object] = {
            "asset": asset,
            "signal": signal,
            "ts": _ts_text(rng, ts_ns),
            "value": value,
        }
        if quality is not None:
            body["quality"] = quality
        if unit is not None:
            body["unit"] = unit
        if rng.random() < 0.1:
            body["extra"] = {"ignored": [1, 2, {"deep": None}]}
        return body, Expected(asset, signal, ts_ns, value, quality or "good", unit)

    def _envelope(
        self, samples: list[object], agent: str | None = None, **overrides: object
    ) -> tuple[str, dict[str, object]]:
        agent = agent or self._agent()
        body: dict[str, object] = {
            "v": 1,
            "agent": agent,
            "seq": self._next_seq(agent),
            "sent": "2024-05-01T10:00:00Z",
            "samples": samples,
        }
        body.update(overrides)
        return agent, body

    def _dump(self, body: object) -> bytes:
        text = json.dumps(body, ensure_ascii=self.rng.random() < 0.5)
        return text.replace(f'"{_OUT_OF_RANGE}"', self.rng.choice(["1e400", "-2e308"])).encode()

    def _valid_samples(self, low: int = 1, high: int = 5) -> tuple[list[object], list[Expected]]:
        pairs = [self.valid_sample() for _ in range(self.rng.randint(low, high))]
        return [b for b, _ in pairs], [e for _, e in pairs]

    # -- cases -----------------------------------------------------------------------------

    def case(self) -> Case:
        """About half valid, the rest spread over every hostile kind."""
        if self.rng.random() < 0.5:
            return self.valid()
        _, make = self.rng.choice(self._kinds)
        return make()

    def valid(self) -> Case:
        bodies, expected = self._valid_samples()
        agent, body = self._envelope(bodies)
        return Case(topic_of(agent), self._dump(body), "valid", None, expected)

    def hostile(self, kind: str) -> Case:
        return dict(self._kinds)[kind]()

    def _message_level(self, kind: str, payload: bytes, reason: str, agent: str) -> Case:
        return Case(topic_of(agent), payload, kind, reason)

    def _hostile_not_utf8(self) -> Case:
        bodies, _ = self._valid_samples()
        bodies[0]["value"] = "MARK"  # type: ignore[index]
        agent, body = self._envelope(bodies)
        bad = self.rng.choice([b"\xff", b"\xc0\xaf", b"\x80", b"\xe2\x82", b"\xed\xa0\x80"])
        payload = self._dump(body).replace(b"MARK", b"a" + bad + b"b", 1)
        return self._message_level("not_utf8", payload, "payload is not valid UTF-8", agent)

    def _hostile_nan_inf(self) -> Case:
        bodies, _ = self._valid_samples()
        bodies[-1]["value"] = 12345.5  # type: ignore[index]
        agent, body = self._envelope(bodies)
        literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
        payload = self._dump(body).replace(b"12345.5", literal, 1)
        return self._message_level("nan_inf", payload, "payload is not JSON", agent)

    def _hostile_not_json(self) -> Case:
        bodies, _ = self._valid_samples()
        agent, body = self._envelope(bodies)
        whole = json.dumps(body).encode()  # ASCII: a cut never splits a character
        payload = self.rng.choice(
            [whole[: self.rng.randrange(len(whole))], whole + b"}", b"{'v': 1}", b"\xef\xbb\xbf{}"]
        )
        return self._message_level("not_json", payload, "payload is not JSON", agent)

    def _hostile_deep_nesting(self) -> Case:
        bodies, _ = self._valid_samples()
        depth = self.rng.randint(2000, max(2000, self._big // 6))
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        deep = opener * depth + b"0" + closer * depth
        bodies[0]["value"] = "DEEP"  # type: ignore[index]
        agent, body = self._envelope(bodies)
        where = self.rng.choice([b'"DEEP"', b'"v": 1'])
        replacement = deep if where == b'"DEEP"' else b'"v": 1, "junk": ' + deep
        payload = json.dumps(body).encode().replace(where, replacement, 1)
        return self._message_level("deep_nesting", payload, "nested too deeply", agent)

    def _hostile_oversized(self) -> Case:
        bodies, _ = self._valid_samples()
        size = self.max_payload_bytes + self.rng.randint(1, self.max_payload_bytes // 4)
        agent, body = self._envelope(bodies, padding="p" * size)
        return self._message_level("oversized", self._dump(body), "payload too large", agent)

    def _hostile_not_an_object(self) -> Case:
        payload = self.rng.choice([b"[]", b"[1,2]", b"42", b'"text"', b"null", b"true"])
        return self._message_level(
            "not_an_object", payload, "envelope: expected `object`", self._agent()
        )

    def _hostile_envelope_field(self) -> Case:
        rng = self.rng
        bodies, _ = self._valid_samples()
        field_name, bad, reason = rng.choice(
            [
                ("v", "1", "v: unsupported envelope version"),
                ("v", 2, "v: unsupported envelope version 2"),
                ("v", None, "v: missing or null"),
                ("v", 1.5, "v: unsupported envelope version"),
                ("seq", "7", "seq: expected `int`, got `str`"),
                ("seq", -1, "seq: -1 is not a non-negative 64-bit integer"),
                ("seq", 2**64, "is not a non-negative 64-bit integer"),
                ("seq", 3.0, "seq: expected `int`, got `float`"),
                ("seq", True, "seq: expected `int`, got `bool`"),
                ("sent", 1714557600, "sent: expected `datetime`"),
                ("sent", "yesterday", "sent: invalid RFC3339"),
                (
                    "sent",
                    "2024-05-01T10:00:00",
                    "sent: timestamp 2024-05-01T10:00:00 has no timezone",
                ),
                ("samples", {}, "samples: expected `array`"),
                ("samples", None, "samples: expected `array`"),
                ("samples", [], "samples: empty list"),
                ("agent", 7, "agent: expected `str`"),
                ("agent", "x" * rng.randint(1, self._big), "does not match the topic's agent"),
            ]
        )
        agent, body = self._envelope(bodies)
        body[field_name] = bad
        if rng.random() < 0.3:  # a missing key instead
            del body[field_name]
            reason = (
                "v: missing or null"
                if field_name == "v"
                else f"{field_name}: required field missing"
            )
        return self._message_level("envelope_field", self._dump(body), reason, agent)

    def _hostile_bad_samples(self) -> Case:
        """A valid envelope with some bad samples: the valid ones must still be stored.

        ``reason`` is the count; ``problems`` lists what each bad sample's part of the reason
        must start with (``samples[2].ts: ``), all of them listed as there are at most three.
        """
        rng = self.rng
        valid, expected = self._valid_samples(0, 3)
        items: list[tuple[object, str | None]] = [(body, None) for body in valid]
        count = rng.randint(1, 3)
        for _ in range(count):
            body, _ = self.valid_sample()
            where = self._spoil(body)
            bad: object = body if where else body["value"]
            items.insert(rng.randint(0, len(items)), (bad, where))
        agent, envelope = self._envelope([item for item, _ in items])
        case = Case(
            topic_of(agent),
            self._dump(envelope),
            "bad_samples",
            f"{count} of {len(items)} samples rejected: ",
            expected,
        )
        case.problems = [
            f"samples[{i}]{'.' + where if where else ''}: "
            for i, (_, where) in enumerate(items)
            if where is not None
        ]
        return case

    def _spoil(self, body: dict[str, object]) -> str:
        """Break one field of a sample body; returns the field the reason must name ("" when
        the sample is replaced by a non-object)."""
        rng = self.rng
        choice = rng.randrange(16)
        if choice == 0:
            body["value"] = rng.choice([None, [1, 2], {"a": 1}])
            return "value"
        if choice == 1:
            body["value"] = "s" * rng.randint(1025, max(1025, self._big))
            return "value"
        if choice == 2:
            body["value"] = rng.choice([2**63, -(2**63) - 1, 10**40, -(10**100)])
            return "value"
        if choice == 3:
            body["ts"] = rng.choice(
                ["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00"]
            )
            return "ts"
        if choice == 4:
            body["ts"] = rng.choice(
                [
                    "2100-01-01T00:00:00Z",
                    "9999-12-31T23:59:59.999999-14:00",
                    "3000-06-01T00:00:00+05:00",
                ]
            )
            return "ts"
        if choice == 5:
            body["ts"] = rng.choice(
                ["2024-05-01T10:00:00", "2024-05-01 10:00", "now", 1714557600, None]
            )
            return "ts"
        if choice == 6:
            body["asset"] = rng.choice(
                ["Lahore/w/l/m", "a/b/c", "a/b/c/d/e", "a/b/c/d\n", "a//c/d", "\u0430/b/c/d", "", 5]
            )
            return "asset"
        if choice == 7:
            body["signal"] = rng.choice(["State", "1st", "a/b", "x" * 65, "s\n", "s#", "", None])
            return "signal"
        if choice == 8:
            body["quality"] = rng.choice(["GOOD", "ok", "", None, 0])
            return "quality"
        if choice == 9:
            body["unit"] = rng.choice(["u" * 33, 5, ["m"]])
            return "unit"
        if choice == 10:
            missing = rng.choice(["asset", "signal", "ts", "value"])
            del body[missing]
            return missing
        if choice == 11:
            body["value"] = rng.choice([1, "x", None, [], 2.5])
            return ""
        if choice == 12:
            body["value"] = _OUT_OF_RANGE  # becomes a number literal beyond float range
            return "value"
        if choice == 13:
            body["ts"] = rng.choice(
                ["2024-02-30T00:00:00Z", "2024-05-01T25:00:00Z", "2016-12-31T23:59:60Z"]
            )
            return "ts"
        if choice == 14:
            body["asset"] = (
                "a/b/c/" + "m" * rng.randint(1, 5) + rng.choice(["\u0000", " ", "+", "#", "\u212a"])
            )
            return "asset"
        body["value"] = [[[[[[1]]]]]]
        return "value"
