"""Decoding Modbus registers and planning reads, against values worked out with ``struct``
and by hand."""

from __future__ import annotations

import struct

import pytest

from edge.modbus_config import ModbusRegister
from edge.sources.modbus import DecodeError, decode_registers, plan_reads, scaled

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
