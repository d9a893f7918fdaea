"""Sparkplug B host side: decode BIRTH/DATA/DEATH messages, keep per-node session state.

Pure logic (no I/O): :meth:`SparkplugHost.handle` turns one message into samples, the
reasons for anything it could not use, and at most one rebirth request for the MQTT source
to publish. State per edge node: whether it is born, its ``bdSeq``, the last ``seq``
(0..255, wrapping), and per node/device the metric names and datatypes by alias from the
BIRTH certificates. A sequence gap, or DATA from a node/device whose BIRTH was not seen,
asks the node for a rebirth (NCMD ``Node Control/Rebirth`` = true); while a request is
outstanding it is repeated at most every ``rebirth_holdoff_s`` seconds.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edge.config import PLACEHOLDER_RE, MqttTopic
from edge.sources.sparkplug_pb import WireError, WireMetric, decode_payload, encode_bool_command
from karkhana.models import ASSET_PATH_RE, SIGNAL_RE, Quality, Sample, SampleValue

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
NODE_KINDS = frozenset({"NBIRTH", "NDATA", "NDEATH"})
DEVICE_KINDS = frozenset({"DBIRTH", "DDATA", "DDEATH"})
COMMAND_KINDS = frozenset({"NCMD", "DCMD"})
# Protocol plumbing, not process data: never turned into samples.
_PROTOCOL_METRIC_PREFIXES = ("Node Control/", "Device Control/")
_PROTOCOL_METRICS = frozenset({"bdSeq"})

# Sparkplug B 3.0 DataType codes.
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8..Int64
_UNSIGNED = frozenset({5, 6, 7, 8})  # UInt8..UInt64
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
_TYPE_NAMES = {
    0: "Unknown", 16: "DataSet", 17: "Bytes", 18: "File", 19: "Template",
    20: "PropertySet", 21: "PropertySetList", 22: "Int8Array", 23: "Int16Array",
    24: "Int32Array", 25: "Int64Array", 26: "UInt8Array", 27: "UInt16Array",
    28: "UInt32Array", 29: "UInt64Array", 30: "FloatArray", 31: "DoubleArray",
    32: "BooleanArray", 33: "StringArray", 34: "DateTimeArray",
}  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SparkplugError(ValueError):
    """A whole message cannot be used (bad topic or undecodable payload)."""


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    """``spBv1.0/{group}/{kind}/{edge_node}[/{device}]``."""

    group: str
    kind: str
    edge_node: str
    device: str | None = None

    @classmethod
    def parse(cls, topic: str) -> SparkplugTopic | None:
        """The parts of a Sparkplug topic; None for STATE and command topics (not data)."""
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != NAMESPACE:
            raise SparkplugError(f"{topic!r} is not a Sparkplug B topic (spBv1.0/...)")
        if levels[1] == "STATE" or levels[2] in COMMAND_KINDS:
            return None
        kind = levels[2]
        if kind in NODE_KINDS and len(levels) == 4:
            return cls(levels[1], kind, levels[3])
        if kind in DEVICE_KINDS and len(levels) == 5:
            return cls(levels[1], kind, levels[3], levels[4])
        raise SparkplugError(
            f"{topic!r} is not spBv1.0/group/N*/edge_node or spBv1.0/group/D*/edge_node/device"
        )


@dataclass(frozen=True, slots=True)
class RebirthRequest:
    """An NCMD asking one edge node to send its BIRTH certificates again."""

    topic: str
    payload: bytes
    reason: str


@dataclass
class SparkplugResult:
    """What one message produced."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one dead letter for the message
    rebirth: RebirthRequest | None = None


@dataclass
class _Scope:
    """Metric definitions of one node or device, from its BIRTH."""

    names_by_alias: dict[int, str] = field(default_factory=dict)
    types_by_name: dict[str, int] = field(default_factory=dict)

    def learn(self, metrics: list[WireMetric]) -> None:
        for metric in metrics:
            if metric.name is None:
                continue
            if metric.alias is not None:
                self.names_by_alias[metric.alias] = metric.name
            if metric.datatype is not None:
                self.types_by_name[metric.name] = metric.datatype


@dataclass
class _NodeState:
    born: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    scope: _Scope = field(default_factory=_Scope)
    devices: dict[str, _Scope] = field(default_factory=dict)
    rebirth_sent_at: float | None = None  # monotonic time of the outstanding request


def metric_signal_token(name: str, rule: str) -> str:
    """The ``{metric}`` fill for a metric name: ``underscore`` lower-cases and turns '/' and
    spaces into '_', ``dot`` turns '/' into '.' (spaces into '_'), ``exact`` keeps it."""
    if rule == "exact":
        return name
    separator = "." if rule == "dot" else "_"
    return name.lower().replace("/", separator).replace(" ", "_")


def _id_token(text: str) -> str:
    return text.lower().replace(" ", "_")


def _float32(value: float) -> float:
    """The shortest decimal that is the same float32 (71.5f -> 71.5, 0.1f -> 0.1)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _ms_to_datetime(ms: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError as exc:
        raise ValueError(f"timestamp {ms} ms is out of range") from exc


def metric_value(metric: WireMetric, datatype: int) -> SampleValue:
    """The value of a metric by its Sparkplug datatype; raises ValueError if unusable."""
    if datatype in _SIGNED_BITS:
        bits = _SIGNED_BITS[datatype]
        raw = metric.long_value if bits == 64 else metric.int_value
        if raw is None:
            raise ValueError("no integer value")
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >> (bits - 1) else raw
    if datatype in _UNSIGNED:
        raw = metric.long_value if datatype == 8 else metric.int_value
        if raw is None:
            raise ValueError("no integer value")
        return raw
    if datatype in (FLOAT, DOUBLE):
        number = metric.float_value if datatype == FLOAT else metric.double_value
        if number is None:
            raise ValueError("no floating-point value")
        if not math.isfinite(number):
            raise ValueError(f"value {number!r} is not a finite number")
        return _float32(number) if datatype == FLOAT else number
    if datatype == BOOLEAN:
        if metric.boolean_value is None:
            raise ValueError("no boolean value")
        return metric.boolean_value
    if datatype in (STRING, TEXT, UUID):
        if metric.string_value is None:
            raise ValueError("no string value")
        return metric.string_value
    if datatype == DATETIME:
        if metric.long_value is None:
            raise ValueError("no DateTime value")
        return _ms_to_datetime(metric.long_value).isoformat().replace("+00:00", "Z")
    name = _TYPE_NAMES.get(datatype, str(datatype))
    raise ValueError(f"datatype {name} is not supported")


class SparkplugHost:
    """Sparkplug B session state and mapping for one ``format: sparkplug_b`` topic entry."""

    def __init__(
        self,
        spec: MqttTopic,
        *,
        rebirth_holdoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.rebirth_holdoff_s = rebirth_holdoff_s
        self._clock = clock
        self._nodes: dict[tuple[str, str], _NodeState] = {}
        self.rebirth_requests = 0

    def handle(self, topic: str, payload: bytes, received: datetime) -> SparkplugResult:
        """Decode one message; raises SparkplugError if the message as a whole is unusable."""
        parsed = SparkplugTopic.parse(topic)
        result = SparkplugResult()
        if parsed is None:
            return result
        try:
            decoded = decode_payload(payload)
        except WireError as exc:
            raise SparkplugError(f"bad Sparkplug B payload: {exc}") from exc
        key = (parsed.group, parsed.edge_node)
        node = self._nodes.setdefault(key, _NodeState())
        kind = parsed.kind

        if kind == "NBIRTH":
            node.born = True
            node.seq = decoded.seq
            node.bd_seq = _bd_seq(decoded.metrics)
            node.scope = _Scope()
            node.scope.learn(decoded.metrics)
            node.devices.clear()
            node.rebirth_sent_at = None
            self._emit(parsed, node.scope, decoded.metrics, decoded.timestamp, received, result)
            return result
        if kind == "NDEATH":
            bd_seq = _bd_seq(decoded.metrics)
            if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
                log.info("sparkplug: NDEATH of %s/%s for an older session ignored", *key)
            else:
                node.born = False
                node.seq = None
                node.devices.clear()
            return result

        # NDATA, DBIRTH, DDATA, DDEATH: part of the node's seq sequence.
        if not node.born:
            self._request_rebirth(parsed, node, received, f"{kind} before NBIRTH", result)
        elif decoded.seq is None or node.seq is None:
            node.seq = decoded.seq
        else:
            expected = (node.seq + 1) % 256
            if decoded.seq != expected:
                reason = f"seq gap: expected {expected}, got {decoded.seq}"
                self._request_rebirth(parsed, node, received, reason, result)
            node.seq = decoded.seq

        if kind == "NDATA":
            scope = node.scope
        else:
            assert parsed.device is not None
            if kind == "DBIRTH":
                scope = node.devices[parsed.device] = _Scope()
                scope.learn(decoded.metrics)
            elif kind == "DDEATH":
                node.devices.pop(parsed.device, None)
                return result
            else:
                found = node.devices.get(parsed.device)
                if found is None:
                    if node.born:
                        reason = f"DDATA of device {parsed.device!r} before its DBIRTH"
                        self._request_rebirth(parsed, node, received, reason, result)
                    found = _Scope()
                scope = found
        self._emit(parsed, scope, decoded.metrics, decoded.timestamp, received, result)
        return result

    # --- internals ----------------------------------------------------------------------

    def _request_rebirth(
        self,
        parsed: SparkplugTopic,
        node: _NodeState,
        received: datetime,
        reason: str,
        result: SparkplugResult,
    ) -> None:
        now = self._clock()
        if node.rebirth_sent_at is not None and now - node.rebirth_sent_at < self.rebirth_holdoff_s:
            return
        node.rebirth_sent_at = now
        self.rebirth_requests += 1
        stamp = int((received - _EPOCH) / timedelta(milliseconds=1))
        result.rebirth = RebirthRequest(
            f"{NAMESPACE}/{parsed.group}/NCMD/{parsed.edge_node}",
            encode_bool_command(REBIRTH_METRIC, True, stamp),
            reason,
        )

    def _emit(
        self,
        parsed: SparkplugTopic,
        scope: _Scope,
        metrics: list[WireMetric],
        payload_ts: int | None,
        received: datetime,
        result: SparkplugResult,
    ) -> None:
        for metric in metrics:
            name = metric.name
            if name is None and metric.alias is not None:
                name = scope.names_by_alias.get(metric.alias)
            if name is None:
                result.errors.append(f"metric alias {metric.alias} is unknown (no BIRTH seen)")
                continue
            if name in _PROTOCOL_METRICS or name.startswith(_PROTOCOL_METRIC_PREFIXES):
                continue
            if metric.is_null:
                log.debug("sparkplug: %s %s is null; no sample", parsed.kind, name)
                continue
            try:
                sample = self._sample(parsed, scope, metric, name, payload_ts, received)
            except ValueError as exc:
                result.errors.append(f"metric {name!r}: {exc}")
                continue
            if sample is not None:
                result.samples.append(sample)

    def _sample(
        self,
        parsed: SparkplugTopic,
        scope: _Scope,
        metric: WireMetric,
        name: str,
        payload_ts: int | None,
        received: datetime,
    ) -> Sample | None:
        spec = self.spec
        explicit = spec.metrics.get(name) if spec.metrics else None
        if explicit is None and spec.unmapped_metrics == "ignore":
            return None
        datatype = metric.datatype if metric.datatype is not None else scope.types_by_name.get(name)
        if datatype is None:
            raise ValueError("no datatype (not in the message, no BIRTH seen)")
        value = metric_value(metric, datatype)
        stamp = metric.timestamp if metric.timestamp is not None else payload_ts
        ts = received if stamp is None else _ms_to_datetime(stamp)
        fills = {
            "group": _id_token(parsed.group),
            "edge_node": _id_token(parsed.edge_node),
            "device": _id_token(parsed.device or parsed.edge_node),
            "metric": metric_signal_token(name, spec.metric_rule),
        }
        asset = PLACEHOLDER_RE.sub(lambda m: fills[m.group(1)], spec.asset)
        if not ASSET_PATH_RE.fullmatch(asset):
            raise ValueError(f"gives asset {asset!r}, not 'site/area/line/machine'")
        if explicit is not None:
            signal = explicit
        else:
            signal = PLACEHOLDER_RE.sub(lambda m: fills[m.group(1)], spec.signal)
            if not SIGNAL_RE.fullmatch(signal):
                raise ValueError(
                    f"gives signal {signal!r}, not a valid signal name (map it under metrics:)"
                )
        return Sample(asset, signal, ts, value, Quality.GOOD, spec.unit)


def _bd_seq(metrics: list[WireMetric]) -> int | None:
    for metric in metrics:
        if metric.name == "bdSeq":
            raw = metric.long_value if metric.long_value is not None else metric.int_value
            return raw
    return None


__all__ = [
    "REBIRTH_METRIC",
    "RebirthRequest",
    "SparkplugError",
    "SparkplugHost",
    "SparkplugResult",
    "SparkplugTopic",
    "metric_signal_token",
    "metric_value",
]
