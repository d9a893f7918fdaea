"""Pure mapping of MQTT sensor messages onto samples (no I/O, unit-testable).

A topic pattern such as ``sensors/dyeing/{machine}/{signal}`` becomes an MQTT filter
(``sensors/dyeing/+/+``) and a regular expression with named groups; the groups fill the
``asset`` and ``signal`` templates. Payload problems raise :class:`PayloadError` with a
reason that ends up in a dead letter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from edge.config import MULTI_PLACEHOLDER_RE, PLACEHOLDER_RE, MqttTopic, split_topic_pattern
from karkhana.models import ASSET_PATH_RE, SIGNAL_RE, Quality, Sample, SampleValue

_json_decoder = msgspec.json.Decoder()


class PayloadError(ValueError):
    """A message that cannot become a sample; ``str(exc)`` is the reason."""


def topic_filter(pattern: str) -> str:
    """``sensors/{machine}/temp`` -> ``sensors/+/temp``; ``plant/{path+}`` -> ``plant/#``."""
    levels = []
    for level in split_topic_pattern(pattern):
        if PLACEHOLDER_RE.fullmatch(level):
            levels.append("+")
        elif MULTI_PLACEHOLDER_RE.fullmatch(level):
            levels.append("#")
        else:
            levels.append(level)
    return "/".join(levels)


def topic_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching exactly the topics the pattern's filter matches, with named groups."""
    levels = split_topic_pattern(pattern)
    parts: list[str] = []
    tail = ""
    for level in levels:
        placeholder = PLACEHOLDER_RE.fullmatch(level)
        multi = MULTI_PLACEHOLDER_RE.fullmatch(level)
        if placeholder:
            parts.append(f"(?P<{placeholder.group(1)}>[^/]+)")
        elif multi:
            parts.append(f"(?P<{multi.group(1)}>[^/]+(?:/[^/]+)*)")
        elif level == "+":
            parts.append("[^/]+")
        elif level == "#":
            tail = "(?:/.*)?" if parts else ".*"
        else:
            parts.append(re.escape(level))
    return re.compile("^" + "/".join(parts) + tail + "$")


def _lookup(document: Any, path: str) -> Any:
    node = document
    for key in path.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise KeyError(path)
    return node


EPOCH_MS_THRESHOLD = 1e11  # epoch numbers at or above this are milliseconds (1973 in ms)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_epoch(value: float) -> datetime:
    """Epoch seconds, or epoch milliseconds when ``abs(value) >= 1e11``, as UTC."""
    if not math.isfinite(value):
        raise PayloadError(f"timestamp {value!r} is not a finite number")
    seconds = value / 1000 if abs(value) >= EPOCH_MS_THRESHOLD else value
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError as exc:
        raise PayloadError(f"timestamp {value!r} is out of range") from exc


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 string with a timezone, or epoch seconds/milliseconds (a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return parse_epoch(value)
    if not isinstance(value, str):
        raise PayloadError(
            "timestamp must be an ISO 8601 string or epoch seconds/milliseconds "
            f"(got {type(value).__name__})"
        )
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadError(f"bad timestamp {value[:40]!r}: not ISO 8601") from exc
    if ts.tzinfo is None:
        raise PayloadError(f"bad timestamp {value[:40]!r}: no timezone (add 'Z' or an offset)")
    return ts.astimezone(UTC)


def _check_value(value: Any) -> SampleValue:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"value {value!r} is not a finite number")
        return value
    raise PayloadError(f"value must be a number, boolean or string (got {type(value).__name__})")


def _parse_number(text: str) -> SampleValue:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError as exc:
        raise PayloadError(f"payload {stripped[:40]!r} is not a number") from exc
    if not math.isfinite(number):
        raise PayloadError(f"payload {stripped[:40]!r} is not a finite number")
    return number


@dataclass(frozen=True)
class TopicMapping:
    """One compiled ``topics:`` entry of an MQTT source."""

    spec: MqttTopic
    filter: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, spec: MqttTopic) -> TopicMapping:
        return cls(spec, topic_filter(spec.topic), topic_regex(spec.topic))

    def match(self, topic: str) -> dict[str, str] | None:
        found = self.regex.match(topic)
        return None if found is None else found.groupdict()

    def to_sample(self, groups: dict[str, str], payload: bytes, received: datetime) -> Sample:
        """Build the sample of one message; raises PayloadError with the reason."""
        asset = PLACEHOLDER_RE.sub(lambda m: groups[m.group(1)], self.spec.asset)
        signal = PLACEHOLDER_RE.sub(lambda m: groups[m.group(1)], self.spec.signal)
        if not ASSET_PATH_RE.fullmatch(asset):
            raise PayloadError(f"topic gives asset {asset!r}, not 'site/area/line/machine'")
        if not SIGNAL_RE.fullmatch(signal):
            raise PayloadError(f"topic gives signal {signal!r}, not a valid signal name")
        ts = received
        quality = Quality.GOOD
        fmt = self.spec.format
        if fmt == "json":
            try:
                document = _json_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise PayloadError(f"bad JSON: {exc}") from exc
            if self.spec.value_path is None:
                raw_value = document
            else:
                try:
                    raw_value = _lookup(document, self.spec.value_path)
                except KeyError as exc:
                    raise PayloadError(f"missing value at {self.spec.value_path!r}") from exc
            value = _check_value(raw_value)
            if self.spec.ts_path is not None:
                try:
                    raw_ts = _lookup(document, self.spec.ts_path)
                except KeyError:
                    raw_ts = None
                if raw_ts is not None:
                    ts = parse_timestamp(raw_ts)
            if self.spec.quality_path is not None:
                try:
                    raw_quality = _lookup(document, self.spec.quality_path)
                except KeyError:
                    raw_quality = "good"
                try:
                    quality = Quality(raw_quality)
                except ValueError as exc:
                    raise PayloadError(
                        f"quality {raw_quality!r} is not good, uncertain or bad"
                    ) from exc
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PayloadError("payload is not UTF-8 text") from exc
            value = _parse_number(text) if fmt == "number" else text
        return Sample(asset, signal, ts, value, quality, self.spec.unit)


def first_match(
    mappings: list[TopicMapping], topic: str
) -> tuple[TopicMapping, dict[str, str]] | None:
    """The first mapping (in config order) whose pattern matches ``topic``."""
    for mapping in mappings:
        groups = mapping.match(topic)
        if groups is not None:
            return mapping, groups
    return None
