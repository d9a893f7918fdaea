"""A simulated Modbus PLC: an in-process pymodbus TCP server holding one machine's signals.

Register map (holding registers, zero-based addresses, big-endian bytes and words, any
unit id):

====  =======  ============  ===========================================
addr  type     signal        meaning
====  =======  ============  ===========================================
0     uint16   state         state code (integer keys of the state map)
1     uint16   mode          mode code (integer keys of the mode map)
2-3   uint32   count_total   units completed (counter)
4-5   uint32   count_reject  units rejected (counter)
6-7   float32  speed         units/min
8-9   float32  temperature   degC
10-11 float32  power         kW
12-13 float32  energy        kWh (counter)
====  =======  ============  ===========================================

Modbus carries no timestamps: a reader stamps each value with its poll time.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from types import TracebackType

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.updates import SignalUpdate, numeric_value
from karkhana.errors import ConnectionFailed
from karkhana.models import MachineState

log = logging.getLogger(__name__)

WRITE_HOLDING = 16  # function code whose table the server-side writes go to

# Signal -> (first address, type, unit): the register map above.
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
REGISTER_COUNT = 14

_FORMATS = {"uint16": ">H", "uint32": ">I", "float32": ">f"}


def encode(value: int | float, value_type: str) -> list[int]:
    """Big-endian registers of ``value`` (uint32 counters wrap around like a PLC's)."""
    if value_type == "float32":
        raw = struct.pack(">f", float(value))
    elif value_type == "uint32":
        raw = struct.pack(">I", int(value) % 2**32)
    else:
        raw = struct.pack(">H", int(value) % 2**16)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


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
        """Write the values (a later update of the same signal overwrites an earlier one)."""
        server = self._server
        if server is None:
            raise RuntimeError("the Modbus server is not running")
        for update in updates:
            target = REGISTER_MAP.get(update.signal)
            if target is None:
                continue
            address, value_type, _unit = target
            registers = encode(
                numeric_value(update, self._state_codes, self._mode_codes), value_type
            )
            await server.async_setValues(0, WRITE_HOLDING, address, registers)


__all__ = ["REGISTER_COUNT", "REGISTER_MAP", "ModbusPlc", "encode", "modbus_endpoint"]
