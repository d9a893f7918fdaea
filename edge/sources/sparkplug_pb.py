"""Protobuf wire codec for Sparkplug B payloads (no generated code, no protobuf runtime).

The Sparkplug B 3.0 specification defines the payload in ``sparkplug_b.proto``
(``org.eclipse.tahu.protobuf.Payload``). Only the fields the edge agent needs are decoded;
every other field is skipped by its wire type, exactly as a protobuf parser skips unknown
fields, so newer or richer payloads still decode. Field numbers used here::

    Payload:  1 timestamp (uint64)  2 metrics (Metric, repeated)  3 seq (uint64)
    Metric:   1 name (string)  2 alias (uint64)  3 timestamp (uint64)  4 datatype (uint32)
              7 is_null (bool)  10 int_value (uint32)  11 long_value (uint64)
              12 float_value (float)  13 double_value (double)  14 boolean_value (bool)
              15 string_value (string)  16 bytes_value, 17 dataset_value,
              18 template_value, 19 extension_value (kept only as "has a value")

Malformed input (truncated varints or fields, wire types 3/4/invalid, bad UTF-8) raises
:class:`WireError`; nothing is read past the end of a buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not a valid Sparkplug B payload; ``str(exc)`` is the reason."""


@dataclass(slots=True)
class WireMetric:
    """One ``Payload.Metric`` as sent (values not yet interpreted by datatype)."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_null: bool = False
    int_value: int | None = None
    long_value: int | None = None
    float_value: float | None = None
    double_value: float | None = None
    boolean_value: bool | None = None
    string_value: str | None = None
    other_value: int | None = None  # field number of a bytes/dataset/template/extension value


@dataclass(slots=True)
class WirePayload:
    """One ``Payload`` as sent."""

    timestamp: int | None = None
    seq: int | None = None
    metrics: list[WireMetric] = field(default_factory=list)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift_index in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
    raise WireError("varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field; LEN values as bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value: int | bytes
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
        elif wire_type == _I64:
            if pos + 8 > end:
                raise WireError(f"truncated 64-bit field {number}")
            value = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire_type == _I32:
            if pos + 4 > end:
                raise WireError(f"truncated 32-bit field {number}")
            value = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        elif wire_type == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise WireError(f"truncated field {number} ({length} bytes announced)")
            value = data[pos : pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {number})")
        out.append((number, wire_type, value))
    return out


def _expect(number: int, wire_type: int, value: int | bytes, wanted: int) -> None:
    if wire_type != wanted:
        raise WireError(f"field {number} has wire type {wire_type}, expected {wanted}")


def _text(number: int, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field {number} is not UTF-8") from exc


def _decode_metric(data: bytes) -> WireMetric:
    metric = WireMetric()
    for number, wire_type, value in _fields(data):
        if number == 1:
            _expect(number, wire_type, value, _LEN)
            assert isinstance(value, bytes)
            metric.name = _text(number, value)
        elif number in (2, 3, 4, 7, 10, 11, 14):
            _expect(number, wire_type, value, _VARINT)
            assert isinstance(value, int)
            if number == 2:
                metric.alias = value
            elif number == 3:
                metric.timestamp = value
            elif number == 4:
                metric.datatype = value & 0xFFFF_FFFF
            elif number == 7:
                metric.is_null = bool(value)
            elif number == 10:
                metric.int_value = value & 0xFFFF_FFFF
            elif number == 11:
                metric.long_value = value
            else:
                metric.boolean_value = bool(value)
        elif number == 12:
            _expect(number, wire_type, value, _I32)
            assert isinstance(value, int)
            metric.float_value = struct.unpack("<f", value.to_bytes(4, "little"))[0]
        elif number == 13:
            _expect(number, wire_type, value, _I64)
            assert isinstance(value, int)
            metric.double_value = struct.unpack("<d", value.to_bytes(8, "little"))[0]
        elif number == 15:
            _expect(number, wire_type, value, _LEN)
            assert isinstance(value, bytes)
            metric.string_value = _text(number, value)
        elif number in (16, 17, 18, 19):
            metric.other_value = number
        # anything else (is_historical, is_transient, metadata, properties, extensions)
        # is skipped like an unknown field
    return metric


def decode_payload(data: bytes) -> WirePayload:
    """Decode a Sparkplug B ``Payload``; raises :class:`WireError` on malformed bytes."""
    payload = WirePayload()
    for number, wire_type, value in _fields(data):
        if number == 1:
            _expect(number, wire_type, value, _VARINT)
            assert isinstance(value, int)
            payload.timestamp = value
        elif number == 2:
            _expect(number, wire_type, value, _LEN)
            assert isinstance(value, bytes)
            payload.metrics.append(_decode_metric(value))
        elif number == 3:
            _expect(number, wire_type, value, _VARINT)
            assert isinstance(value, int)
            payload.seq = value
    return payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _encode_varint(number << 3 | wire_type)


def _len_field(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _encode_varint(len(value)) + value


BOOLEAN = 11  # Sparkplug B DataType Boolean


def encode_bool_command(metric_name: str, value: bool, timestamp_ms: int) -> bytes:
    """A command payload (NCMD/DCMD) with one Boolean metric, e.g. ``Node Control/Rebirth``."""
    metric = (
        _len_field(1, metric_name.encode("utf-8"))
        + _key(3, _VARINT)
        + _encode_varint(timestamp_ms)
        + _key(4, _VARINT)
        + _encode_varint(BOOLEAN)
        + _key(14, _VARINT)
        + _encode_varint(int(value))
    )
    return _key(1, _VARINT) + _encode_varint(timestamp_ms) + _len_field(2, metric)


__all__ = [
    "WireError",
    "WireMetric",
    "WirePayload",
    "decode_payload",
    "encode_bool_command",
]
