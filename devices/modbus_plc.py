"""A simulated Modbus PLC: an in-process pymodbus TCP server holding one machine's signals.

Register map (holding registers, zero-based addresses, any unit id). Unless the table says
otherwise, bytes and words are big-endian.

Values:

====  =======  ============  ===========================================
addr  type     signal        meaning
====  =======  ============  ===========================================
0     uint16   state         state code (integer keys of the state map)
1     uint16   mode          mode code (integer keys of the mode map)
2-3   uint32   count_total   units completed (counter, wraps at 2**32)
4-5   uint32   count_reject  units rejected (counter)
6-7   float32  speed         units/min
8-9   float32  temperature   degC
10-11 float32  power         kW
12-13 float32  energy        kWh (counter)
====  =======  ============  ===========================================

"Changed at" timestamps: per signal a uint64, milliseconds since 1970-01-01 UTC, most
significant word first: the simulated time of the signal's latest update (0 until the first).

=====  ============    =====  ============
addr   signal          addr   signal
=====  ============    =====  ============
14-17  state           30-33  speed
18-21  mode            34-37  temperature
22-25  count_total     38-41  power
26-29  count_reject    42-45  energy
=====  ============    =====  ============

Data type test block: copies of live values in every type and byte/word order a Modbus reader
has to handle (``B`` big, ``L`` little; a reader applies ``value = raw * scale + offset``):

=====  =======  =====  =====  ============  =====  ======
addr   type     bytes  words  mirrors       scale  offset
=====  =======  =====  =====  ============  =====  ======
46-47  float32  B      B      temperature
48-49  float32  B      L      temperature
50-51  float32  L      B      temperature
52-53  float32  L      L      temperature
54     int16    B      -      temperature   0.1
55     int16    L      -      temperature   0.1
56     int16    B      -      temperature   0.1    50
57-58  int32    B      B      count_total
59-60  int32    B      L      count_total
61-62  int32    L      B      count_total
63-64  int32    L      L      count_total
65-66  uint32   B      B      count_total
67-68  uint32   B      L      count_total
69-70  uint32   L      B      count_total
71-72  uint32   L      L      count_total
73     int16    B      -      state
74     int16    L      -      state
75     uint16   B      -      state
76     uint16   L      -      state
=====  =======  =====  =====  ============  =====  ======

Address 56 holds the temperature minus 50 degC in tenths, negative below 50 degC. The whole
image (addresses 0-76) is written with one server call per publish, so a reader never sees a
value next to the timestamp of another update.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.timeutil import to_us
from devices.updates import SignalUpdate, numeric_value
from karkhana.errors import ConnectionFailed
from karkhana.models import MachineState

log = logging.getLogger(__name__)

WRITE_HOLDING = 16  # function code whose table the server-side writes go to

# Signal -> (first address, type, unit): the value registers above.
REGISTER_MAP: dict[str, tuple[int, str, str | None]] = {
    "state": (0, "uint16", None),
    "mode": (1, "uint16", None),
    "count_total": (2, "uint32", None),
    "count_reject": (4, "uint32", None),
    "speed": (6, "float32", "units/min"),
    "temperature": (8, "float32", "degC"),
    "power": (10, "float32", "kW"),
    "energy": (12, "float32", "kWh"),
}
VALUE_REGISTER_COUNT = 14

# Signal -> first address of its "changed at" timestamp (uint64 ms, big word order).
TIMESTAMP_TYPE = "uint64"
TIMESTAMP_UNIT = "ms"
TIMESTAMP_REGISTERS = 4
TIMESTAMP_MAP: dict[str, int] = {
    signal: VALUE_REGISTER_COUNT + TIMESTAMP_REGISTERS * i for i, signal in enumerate(REGISTER_MAP)
}
TEST_BLOCK_START = VALUE_REGISTER_COUNT + TIMESTAMP_REGISTERS * len(REGISTER_MAP)  # 46


@dataclass(frozen=True, slots=True)
class TypeTestRegister:
    """One entry of the data type test block: a live signal in another type and layout."""

    address: int
    mirrors: str  # the signal whose latest value it holds
    type: str  # int16 | uint16 | int32 | uint32 | float32
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0  # a reader gets the value back as raw * scale + offset
    offset: float = 0.0

    @property
    def count(self) -> int:
        return 1 if self.type in ("int16", "uint16") else 2


_ORDERS = (("big", "big"), ("big", "little"), ("little", "big"), ("little", "little"))


def _type_test_block() -> tuple[TypeTestRegister, ...]:
    entries: list[TypeTestRegister] = []
    address = TEST_BLOCK_START

    def add(mirrors: str, value_type: str, byte_order: str, word_order: str, **kw: float) -> None:
        nonlocal address
        entry = TypeTestRegister(address, mirrors, value_type, byte_order, word_order, **kw)
        entries.append(entry)
        address += entry.count

    for byte_order, word_order in _ORDERS:
        add("temperature", "float32", byte_order, word_order)
    for byte_order in ("big", "little"):
        add("temperature", "int16", byte_order, "big", scale=0.1)
    add("temperature", "int16", "big", "big", scale=0.1, offset=50.0)
    for value_type in ("int32", "uint32"):
        for byte_order, word_order in _ORDERS:
            add("count_total", value_type, byte_order, word_order)
    for value_type in ("int16", "uint16"):
        for byte_order in ("big", "little"):
            add("state", value_type, byte_order, "big")
    return tuple(entries)


TYPE_TEST_BLOCK = _type_test_block()
REGISTER_COUNT = TEST_BLOCK_START + sum(e.count for e in TYPE_TEST_BLOCK)  # 77

_INT_FORMATS = {"int16": ">H", "uint16": ">H", "int32": ">I", "uint32": ">I"}


def encode(
    value: int | float, value_type: str, byte_order: str = "big", word_order: str = "big"
) -> list[int]:
    """Registers of ``value`` in the given layout (integers wrap around like a PLC's)."""
    if value_type == "float32":
        raw = struct.pack(">f", float(value))
    else:
        fmt = _INT_FORMATS[value_type]
        bits = 16 if fmt == ">H" else 32
        raw = struct.pack(fmt, round(value) % 2**bits)  # two's complement for signed types
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def encode_ms(us_since_epoch: int) -> list[int]:
    """A uint64 millisecond timestamp, most significant word first."""
    ms = us_since_epoch // 1000
    return [(ms >> shift) & 0xFFFF for shift in (48, 32, 16, 0)]


def modbus_endpoint(host: str, port: int) -> str:
    return f"modbus://{host}:{port}"


class ModbusPlc:
    """One Modbus TCP server per machine; ``publish`` writes the latest values."""

    def __init__(
        self,
        machine_id: str,
        host: str,
        port: int,
        state_codes: dict[MachineState, int | str],
        mode_codes: dict[str, int],
    ) -> None:
        self.machine_id = machine_id
        self._host = host
        self._port = port
        self._state_codes = state_codes
        self._mode_codes = mode_codes
        self._server: ModbusTcpServer | None = None
        self._image = [0] * REGISTER_COUNT
        self._values: dict[str, int | float] = {}

    @property
    def endpoint(self) -> str:
        return modbus_endpoint(self._host, self._port)

    @property
    def port(self) -> int:
        return self._port

    async def __aenter__(self) -> ModbusPlc:
        device = SimDevice(
            id=0,  # answers every unit id
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=REGISTER_COUNT, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
            ),
            use_bit_addressing=True,
        )
        server = ModbusTcpServer(device, address=(self._host, self._port))
        try:
            await server.serve_forever(background=True)
        except (OSError, RuntimeError) as exc:
            await server.shutdown()
            raise ConnectionFailed(
                f"cannot start the Modbus server for {self.machine_id} on {self.endpoint}: {exc}"
            ) from exc
        self._server = server
        log.info("simulated Modbus PLC %s listening on %s", self.machine_id, self.endpoint)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()

    async def publish(self, updates: Sequence[SignalUpdate]) -> None:
        """Write the values with their timestamps (a later update of the same signal
        overwrites an earlier one), the whole register image in one server call."""
        server = self._server
        if server is None:
            raise RuntimeError("the Modbus server is not running")
        image = self._image
        for update in updates:
            target = REGISTER_MAP.get(update.signal)
            if target is None:
                continue
            address, value_type, _unit = target
            value = numeric_value(update, self._state_codes, self._mode_codes)
            self._values[update.signal] = value
            registers = encode(value, value_type)
            image[address : address + len(registers)] = registers
            stamp = TIMESTAMP_MAP[update.signal]
            image[stamp : stamp + TIMESTAMP_REGISTERS] = encode_ms(to_us(update.ts))
        for entry in TYPE_TEST_BLOCK:
            mirrored = self._values.get(entry.mirrors)
            if mirrored is None:
                continue
            raw = mirrored
            if entry.scale != 1.0 or entry.offset != 0.0:
                raw = (mirrored - entry.offset) / entry.scale
            image[entry.address : entry.address + entry.count] = encode(
                raw, entry.type, entry.byte_order, entry.word_order
            )
        await server.async_setValues(0, WRITE_HOLDING, 0, list(image))


__all__ = [
    "REGISTER_COUNT",
    "REGISTER_MAP",
    "TEST_BLOCK_START",
    "TIMESTAMP_MAP",
    "TIMESTAMP_REGISTERS",
    "TIMESTAMP_TYPE",
    "TIMESTAMP_UNIT",
    "TYPE_TEST_BLOCK",
    "VALUE_REGISTER_COUNT",
    "ModbusPlc",
    "TypeTestRegister",
    "encode",
    "encode_ms",
    "modbus_endpoint",
]
