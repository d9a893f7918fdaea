"""Decoding Modbus registers and planning reads, against values worked out with ``struct``
and by hand."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from edge.modbus_config import ModbusRegister, ModbusTimestamp
from edge.sources.modbus import DecodeError, decode_registers, decode_timestamp, plan_reads, scaled

ASSET = "lahore/weaving/line-1/loom-01"


def layouts(big_endian: bytes) -> dict[tuple[str, str], list[int]]:
    """(byte_order, word_order) -> registers whose bytes on the wire (high byte of each
    register first) are the value's bytes A B C D (A most significant) in that layout."""
    a, b, c, d = big_endian
    wire = {
        ("big", "big"): bytes([a, b, c, d]),
        ("big", "little"): bytes([c, d, a, b]),
        ("little", "big"): bytes([b, a, d, c]),
        ("little", "little"): bytes([d, c, b, a]),
    }
    return {key: list(struct.unpack(">HH", data)) for key, data in wire.items()}


def test_float32_one_and_a_half_by_hand() -> None:
    # 1.5 = 0x3FC00000 (sign 0, exponent 127, mantissa .1b)
    assert decode_registers([0x3FC0, 0x0000], "float32") == 1.5
    assert decode_registers([0x0000, 0x3FC0], "float32", "big", "little") == 1.5
    assert decode_registers([0xC03F, 0x0000], "float32", "little", "big") == 1.5
    assert decode_registers([0x0000, 0xC03F], "float32", "little", "little") == 1.5


def test_uint32_by_hand() -> None:
    # 305419896 = 0x12345678
    assert decode_registers([0x1234, 0x5678], "uint32") == 305_419_896
    assert decode_registers([0x5678, 0x1234], "uint32", "big", "little") == 305_419_896
    assert decode_registers([0x3412, 0x7856], "uint32", "little", "big") == 305_419_896
    assert decode_registers([0x7856, 0x3412], "uint32", "little", "little") == 305_419_896


@pytest.mark.parametrize(
    ("value_type", "fmt", "value"),
    [
        ("int32", ">i", -123_456_789),
        ("int32", ">i", 2_147_483_647),
        ("uint32", ">I", 4_000_000_000),
        ("float32", ">f", -273.15),
        ("float32", ">f", 65_432.125),
    ],
)
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_32_bit_types_in_every_order(
    value_type: str, fmt: str, value: float, byte_order: str, word_order: str
) -> None:
    registers = layouts(struct.pack(fmt, value))[(byte_order, word_order)]
    expected = struct.unpack(fmt, struct.pack(fmt, value))[0]  # float32 rounding
    assert decode_registers(registers, value_type, byte_order, word_order) == expected


@pytest.mark.parametrize(
    ("value_type", "register", "byte_order", "expected"),
    [
        ("uint16", 0xFFFE, "big", 65_534),
        ("int16", 0xFFFE, "big", -2),
        ("int16", 0x8000, "big", -32_768),
        ("uint16", 0x0102, "little", 0x0201),
        ("int16", 0xFEFF, "little", -2),  # bytes FF FE swapped -> 0xFFFE
        ("int16", 0x3412, "little", 0x1234),
    ],
)
def test_16_bit_types(value_type: str, register: int, byte_order: str, expected: int) -> None:
    assert decode_registers([register], value_type, byte_order) == expected
    # The word order means nothing for a single register.
    assert decode_registers([register], value_type, byte_order, "little") == expected


def test_float32_nan_is_refused() -> None:
    with pytest.raises(DecodeError, match="not a number"):
        decode_registers([0x7FC0, 0x0000], "float32")


def _reg(table: str, address: int, value_type: str, signal: str, **kw: object) -> ModbusRegister:
    return ModbusRegister.model_validate(
        {"asset": ASSET, "signal": signal, "table": table, "address": address, "type": value_type}
        | kw
    )


def test_scale_and_offset() -> None:
    reg = _reg("holding", 0, "int16", "temperature", scale=0.1, offset=-40.0)
    assert scaled(650, reg) == pytest.approx(25.0)
    plain = _reg("holding", 0, "uint32", "count_total")
    result = scaled(7, plain)
    assert result == 7 and isinstance(result, int)


def test_contiguous_registers_share_a_request() -> None:
    regs = [
        _reg("holding", 4, "float32", "speed"),  # 4-5
        _reg("holding", 0, "uint16", "state"),  # 0
        _reg("holding", 1, "uint16", "mode"),  # 1
        _reg("holding", 2, "uint32", "count_total"),  # 2-3
        _reg("holding", 10, "uint16", "gap"),  # 10: not next to 5
        _reg("input", 6, "int16", "temperature"),  # other table
        _reg("coil", 0, "bool", "run"),
        _reg("coil", 1, "bool", "alarm"),
        _reg("discrete", 3, "bool", "door"),
    ]
    blocks = plan_reads(regs)
    got = {(b.table, b.address, b.count, tuple(i for i, _ in b.registers)) for b in blocks}
    assert got == {
        ("holding", 0, 6, (1, 2, 3, 0)),
        ("holding", 10, 1, (4,)),
        ("input", 6, 1, (5,)),
        ("coil", 0, 2, (6, 7)),
        ("discrete", 3, 1, (8,)),
    }


def test_a_request_never_exceeds_125_registers() -> None:
    regs = [_reg("holding", 2 * i, "float32", f"v{i}") for i in range(100)]  # 200 registers
    blocks = plan_reads(regs)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 76)]


# --- device timestamps ------------------------------------------------------------------


def _ts(**kw: object) -> ModbusTimestamp:
    return ModbusTimestamp.model_validate({"address": 20} | kw)


def test_uint32_seconds_by_hand() -> None:
    # 1_700_000_000 s = 0x6553F100 = 2023-11-14 22:13:20 UTC
    expected = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert decode_timestamp([0x6553, 0xF100], _ts()) == expected
    assert decode_timestamp([0xF100, 0x6553], _ts(word_order="little")) == expected


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_uint64_milli_and_microseconds(word_order: str) -> None:
    when = datetime(2026, 11, 23, 6, 41, 7, 250_000, tzinfo=UTC)
    ms = 1_795_416_067_250  # `date -d 2026-11-23T06:41:07.250Z +%s%3N`
    words = list(struct.unpack(">4H", struct.pack(">Q", ms)))
    if word_order == "little":
        words.reverse()
    assert decode_timestamp(words, _ts(type="uint64", unit="ms", word_order=word_order)) == when
    us_words = list(struct.unpack(">4H", struct.pack(">Q", ms * 1000 + 17)))
    if word_order == "little":
        us_words.reverse()
    got = decode_timestamp(us_words, _ts(type="uint64", unit="us", word_order=word_order))
    assert got == when.replace(microsecond=250_017)


def test_zero_means_the_device_clock_is_not_set() -> None:
    assert decode_timestamp([0, 0], _ts()) is None
    assert decode_timestamp([0, 0, 0, 0], _ts(type="uint64", unit="ms")) is None


def test_a_timestamp_beyond_the_calendar_is_refused() -> None:
    with pytest.raises(DecodeError, match="not a date"):
        decode_timestamp([0xFFFF] * 4, _ts(type="uint64", unit="us"))


def test_values_and_their_timestamps_share_a_request() -> None:
    ts_ms = {"type": "uint64", "unit": "ms"}
    regs = [
        _reg("holding", 0, "uint16", "state", timestamp={"address": 14} | ts_ms),  # 0, 14-17
        _reg("holding", 2, "uint32", "count_total", timestamp={"address": 22} | ts_ms),
        _reg("holding", 1, "uint16", "mode", timestamp={"address": 18} | ts_ms),  # 1, 18-21
        _reg("holding", 4, "float32", "speed", timestamp={"address": 14} | ts_ms),  # shared
        _reg("holding", 6, "float32", "temperature"),  # 6-7
        _reg("holding", 8, "float32", "power", timestamp={"address": 8 + 2}),  # 8-9, 10-11
        _reg("holding", 12, "int16", "energy"),  # 12 (13 is not mapped)
        _reg("input", 0, "uint16", "door", timestamp={"address": 50}),  # far away: own request
    ]
    blocks = plan_reads(regs)
    got = [(b.table, b.address, b.count, sorted(i for i, _ in b.registers)) for b in blocks]
    assert got == [
        ("holding", 0, 13, [0, 1, 2, 3, 4, 5, 6]),
        ("holding", 14, 12, [0, 1, 2, 3]),
        ("input", 0, 1, [7]),
        ("input", 50, 2, [7]),
    ]
