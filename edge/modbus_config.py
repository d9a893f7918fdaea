"""The ``type: modbus`` source of ``edge.yaml``: one Modbus TCP device polled for registers.

Kept apart from ``edge.config`` (which registers it as a source type) so the Modbus model and
its checks live in one place. Addresses are the zero-based protocol addresses (what goes on
the wire), not the 1-based "40001" notation of some PLC manuals.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edge.transform import MappingKeys
from karkhana.models import ASSET_PATH_RE, SEGMENT_RE, SIGNAL_RE

MAX_ADDRESS = 65535

ModbusTable = Literal["holding", "input", "coil", "discrete"]
ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
Order = Literal["big", "little"]
TimestampType = Literal["uint32", "uint64"]
TimestampUnit = Literal["s", "ms", "us"]

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
REGISTER_COUNT: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "bool": 1,
}
TIMESTAMP_REGISTER_COUNT: dict[str, int] = {"uint32": 2, "uint64": 4}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusTimestamp(_Strict):
    """Registers in which the device keeps the Unix time at which a value was taken or
    last changed (many PLCs keep such a "changed at" time next to the value).

    They sit in the same table as the value; several values may share one timestamp (a
    device clock). The registers of one timestamp are unsigned and big-endian inside each
    register; ``word_order: big`` puts the most significant word first."""

    address: int = Field(ge=0, le=MAX_ADDRESS)
    type: TimestampType = "uint32"
    unit: TimestampUnit = "s"
    word_order: Order = "big"

    @model_validator(mode="after")
    def _fits(self) -> ModbusTimestamp:
        last = self.address + self.count - 1
        if last > MAX_ADDRESS:
            raise ValueError(
                f"a {self.type} timestamp needs {self.count} registers ({self.address} to "
                f"{last}), but the last Modbus address is {MAX_ADDRESS}"
            )
        return self

    @property
    def count(self) -> int:
        """How many registers the timestamp occupies."""
        return TIMESTAMP_REGISTER_COUNT[self.type]


class ModbusRegister(MappingKeys):
    """One value read from a Modbus table and the signal it becomes.

    ``scale``/``offset`` are applied by the source while decoding; ``deadband``,
    ``deadband_percent``, ``range`` and ``state_map`` (:class:`edge.transform.MappingKeys`)
    by the agent, on the scaled value."""

    asset: Annotated[str, Field(pattern=ASSET_PATH_RE.pattern)]
    signal: Annotated[str, Field(pattern=SIGNAL_RE.pattern)]
    table: ModbusTable
    address: int = Field(ge=0, le=MAX_ADDRESS)
    type: ModbusType = "uint16"
    byte_order: Order = "big"  # order of the two bytes inside each register
    word_order: Order = "big"  # big: the first register holds the most significant word
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    # Where the device keeps the time of this value; null = stamp it with the poll time.
    timestamp: ModbusTimestamp | None = None

    @field_validator("type")
    @classmethod
    def _type_fits_table(cls, value: str, info: ValidationInfo) -> str:
        table = info.data.get("table")
        if table is None:
            return value
        if table in BIT_TABLES and value != "bool":
            raise ValueError(f"a {table} holds one bit: its type must be bool")
        if table not in BIT_TABLES and value == "bool":
            raise ValueError(
                f"type bool is only for the coil and discrete tables, not {table} registers "
                "(read the register as uint16 instead)"
            )
        address = info.data.get("address")
        if address is not None and REGISTER_COUNT[value] == 2 and address >= MAX_ADDRESS:
            raise ValueError(
                f"{value} needs two registers ({address} and {address + 1}), but the last "
                f"Modbus address is {MAX_ADDRESS}"
            )
        return value

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float, info: ValidationInfo) -> float:
        if not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite number")
        if info.field_name == "scale" and value == 0:
            raise ValueError("scale must not be 0 (every reading would become the offset)")
        return value

    @model_validator(mode="after")
    def _bool_has_no_arithmetic(self) -> ModbusRegister:
        if self.type == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("scale and offset do not apply to bool values")
        return self

    @model_validator(mode="after")
    def _timestamp_beside_the_value(self) -> ModbusRegister:
        ts = self.timestamp
        if ts is None:
            return self
        if self.is_bit:
            raise ValueError(
                f"a timestamp is read from the value's own table, and a {self.table} table "
                "holds bits, not registers: only holding and input values can have one"
            )
        if ts.address < self.address + self.count and self.address < ts.address + ts.count:
            raise ValueError(
                f"timestamp registers {ts.address}-{ts.address + ts.count - 1} overlap the "
                f"value's own registers {self.address}-{self.address + self.count - 1}"
            )
        return self

    @property
    def count(self) -> int:
        """How many registers (or bits) the value occupies."""
        return REGISTER_COUNT[self.type]

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES


class ModbusSourceConfig(_Strict):
    """One Modbus TCP device (a PLC, meter or gateway) polled at a fixed interval."""

    type: Literal["modbus"]
    name: Annotated[str, Field(pattern=SEGMENT_RE.pattern, max_length=64)]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_ms: float = Field(default=1000, ge=10, le=3_600_000)
    timeout_ms: float = Field(default=1000, ge=10, le=60_000)
    # Emit unchanged values again every N polls; null = only when a value changes.
    heartbeat: int | None = Field(default=None, ge=1)
    registers: list[ModbusRegister] = Field(min_length=1)

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if "://" in value or "/" in value or any(ch.isspace() for ch in value):
            raise ValueError("host is a plain name or address such as 192.168.1.20 (no URL)")
        return value

    @model_validator(mode="after")
    def _unique_signals(self) -> ModbusSourceConfig:
        seen: dict[tuple[str, str], int] = {}
        for index, reg in enumerate(self.registers):
            key = (reg.asset, reg.signal)
            if key in seen:
                raise ValueError(
                    f"{reg.asset} {reg.signal} is mapped twice (registers[{seen[key]}] and "
                    f"registers[{index}])"
                )
            seen[key] = index
        return self

    @model_validator(mode="after")
    def _one_layout_per_timestamp(self) -> ModbusSourceConfig:
        # Values may share a timestamp, but they must agree on how it is encoded.
        seen: dict[tuple[str, int], tuple[int, ModbusTimestamp]] = {}
        for index, reg in enumerate(self.registers):
            ts = reg.timestamp
            if ts is None:
                continue
            key = (reg.table, ts.address)
            first = seen.setdefault(key, (index, ts))
            if first[1] != ts:
                raise ValueError(
                    f"the timestamp at {reg.table} {ts.address} is described differently by "
                    f"registers[{first[0]}] and registers[{index}] "
                    f"({_layout(first[1])} vs {_layout(ts)})"
                )
        return self


def _layout(ts: ModbusTimestamp) -> str:
    return f"{ts.type} {ts.unit} word_order {ts.word_order}"


def register_label(reg: ModbusRegister) -> str:
    """``holding 40`` - how logs and the duplicate check name a register."""
    return f"{reg.table} {reg.address}"


__all__ = [
    "BIT_TABLES",
    "MAX_ADDRESS",
    "REGISTER_COUNT",
    "TIMESTAMP_REGISTER_COUNT",
    "ModbusRegister",
    "ModbusSourceConfig",
    "ModbusTable",
    "ModbusTimestamp",
    "ModbusType",
    "Order",
    "TimestampType",
    "TimestampUnit",
    "register_label",
]
