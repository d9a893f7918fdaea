"""Modbus TCP source: polls one device with the async pymodbus client.

Registers of one table that sit next to each other are read with one request (up to the
protocol's limit per request). Every poll is stamped with the time it started (UTC): Modbus
carries no timestamps, so a value's time is only as exact as the poll interval. A value is
handed on when it differs from the last one read (the first poll of every connection hands
on everything), and with ``heartbeat: N`` also every N polls while it stays the same.

A request the device answers with a Modbus exception, or does not answer in time, is logged
and counted and its values are skipped for that poll (no sample with ``bad`` quality is
made up). A broken connection is logged, the source is marked down and it reconnects with
exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge.modbus_config import ModbusRegister, ModbusSourceConfig, register_label
from edge.sources.base import Backoff, Sink, SourceStats
from edge.tasks import cancel_and_wait
from karkhana.errors import ConnectionFailed
from karkhana.models import Sample, SampleValue, utc_now

log = logging.getLogger(__name__)

MAX_REGISTERS_PER_READ = 125  # protocol limit of function codes 3 and 4
MAX_BITS_PER_READ = 2000  # protocol limit of function codes 1 and 2
FAILED_POLLS_BEFORE_RECONNECT = 3  # consecutive polls in which every read timed out

_STRUCT_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


class DecodeError(ValueError):
    """Registers that do not hold a usable value (e.g. a float32 NaN)."""


def decode_registers(
    registers: Sequence[int], value_type: str, byte_order: str = "big", word_order: str = "big"
) -> int | float:
    """The number held by one or two 16-bit registers.

    ``byte_order`` is the order of the two bytes inside each register, ``word_order`` the
    order of the registers (big: the first register holds the most significant word).
    """
    fmt = _STRUCT_FORMAT.get(value_type)
    if fmt is None:
        raise ValueError(f"{value_type} is not a register type")
    words = list(registers)
    if word_order == "little":
        words.reverse()
    word_format = ">H" if byte_order == "big" else "<H"
    raw = b"".join(struct.pack(word_format, w) for w in words)
    value: int | float = struct.unpack(fmt, raw)[0]
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f"{value_type} registers {list(registers)} hold {value}, not a number")
    return value


def scaled(value: int | float, reg: ModbusRegister) -> SampleValue:
    """``value * scale + offset``; integers stay integers when there is nothing to apply."""
    if reg.scale == 1.0 and reg.offset == 0.0:
        return value
    return value * reg.scale + reg.offset


@dataclass
class ModbusStats(SourceStats):
    """SourceStats plus the poll counters of a Modbus source."""

    polls: int = 0
    reads: int = 0  # requests answered with data
    read_failures: int = 0  # requests answered with an exception or not answered in time
    values_skipped: int = 0  # values not read (failed request or undecodable registers)


@dataclass
class ReadBlock:
    """One request: ``count`` registers (or bits) from ``address`` of one table."""

    table: str
    address: int
    count: int
    registers: list[tuple[int, ModbusRegister]] = field(default_factory=list)  # (index, reg)
    failing: str | None = None  # reason of the last failure, for logging changes only


def plan_reads(registers: Sequence[ModbusRegister]) -> list[ReadBlock]:
    """Group registers into as few requests as possible without reading unmapped addresses.

    Values of one table that are contiguous (or overlap) share a request, as long as it
    stays within the protocol's limit per request.
    """
    blocks: list[ReadBlock] = []
    order = sorted(enumerate(registers), key=lambda ir: (ir[1].table, ir[1].address))
    for index, reg in order:
        end = reg.address + reg.count
        limit = MAX_BITS_PER_READ if reg.is_bit else MAX_REGISTERS_PER_READ
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.table == reg.table
            and reg.address <= last.address + last.count
            and max(end, last.address + last.count) - last.address <= limit
        ):
            last.count = max(end, last.address + last.count) - last.address
            last.registers.append((index, reg))
        else:
            blocks.append(ReadBlock(reg.table, reg.address, reg.count, [(index, reg)]))
    return blocks


class ModbusSource:
    """Polls the registers of one Modbus TCP device (async context manager)."""

    def __init__(
        self,
        config: ModbusSourceConfig,
        sink: Sink,
        *,
        backoff_cap_s: float = 10.0,
    ) -> None:
        self.name = config.name
        self.poll_stats = ModbusStats()
        self.stats: SourceStats = self.poll_stats
        self._config = config
        self._sink = sink
        self._backoff = Backoff(cap=backoff_cap_s)
        self._blocks = plan_reads(config.registers)
        self._last: dict[int, int | float | bool] = {}
        self._unchanged: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"modbus://{self._config.host}:{self._config.port}/{self._config.unit_id}"

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"modbus:{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task)

    # --- connection -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (ConnectionFailed, ModbusException, OSError) as exc:
                if self.stats.connected:
                    log.warning(
                        "modbus %s: connection to %s lost: %s", self.name, self.endpoint, exc
                    )
                else:
                    self.stats.connect_failures += 1
                    log.warning(
                        "modbus %s: cannot connect to %s: %s", self.name, self.endpoint, exc
                    )
            finally:
                if self.stats.connected:
                    self.stats.connected = False
                    self._sink.source_state_changed()
            delay = self._backoff.next_delay()
            log.info("modbus %s: reconnecting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        cfg = self._config
        client = AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            timeout=cfg.timeout_ms / 1000,
            retries=0,
            reconnect_delay=0,  # this source reconnects itself, with its own backoff
        )
        try:
            if not await client.connect():
                raise ConnectionFailed(f"no Modbus TCP server answers at {cfg.host}:{cfg.port}")
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.stats.connected = True
            self._sink.source_state_changed()
            self._backoff.reset()
            # The first poll of a connection hands on every value.
            self._last.clear()
            self._unchanged.clear()
            log.info(
                "modbus %s: connected to %s, polling %d values in %d requests every %g ms",
                self.name,
                self.endpoint,
                len(cfg.registers),
                len(self._blocks),
                cfg.poll_interval_ms,
            )
            await self._poll_forever(client)
        finally:
            client.close()

    async def _poll_forever(self, client: AsyncModbusTcpClient) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.poll_interval_ms / 1000
        next_poll = loop.time()
        timed_out_polls = 0
        while True:
            answered = await self._poll(client, utc_now())
            if answered:
                timed_out_polls = 0
            else:
                timed_out_polls += 1
                if timed_out_polls >= FAILED_POLLS_BEFORE_RECONNECT:
                    raise ConnectionFailed(
                        f"no answer from {self.endpoint} in {timed_out_polls} polls"
                    )
            if not client.connected:
                raise ConnectionFailed(f"{self.endpoint} closed the connection")
            next_poll += interval
            now = loop.time()
            if next_poll < now:  # a slow device: skip the missed polls instead of bursting
                next_poll = now
            await asyncio.sleep(next_poll - now)

    # --- polling --------------------------------------------------------------------

    async def _poll(self, client: AsyncModbusTcpClient, polled_at: datetime) -> bool:
        """Read every block once; False when no request got any answer (timeouts only)."""
        self.poll_stats.polls += 1
        answered = False
        for block in self._blocks:
            result = await self._read(client, block)
            if isinstance(result, _Timeout):
                continue
            answered = True
            if result is None:
                continue
            for index, reg in block.registers:
                await self._handle_value(index, reg, block, result, polled_at)
        return answered

    async def _read(
        self, client: AsyncModbusTcpClient, block: ReadBlock
    ) -> list[int] | list[bool] | _Timeout | None:
        """The block's registers or bits; None after a Modbus exception response."""
        unit = self._config.unit_id
        try:
            if block.table == "holding":
                rr = await client.read_holding_registers(
                    block.address, count=block.count, device_id=unit
                )
            elif block.table == "input":
                rr = await client.read_input_registers(
                    block.address, count=block.count, device_id=unit
                )
            elif block.table == "coil":
                rr = await client.read_coils(block.address, count=block.count, device_id=unit)
            else:
                rr = await client.read_discrete_inputs(
                    block.address, count=block.count, device_id=unit
                )
        except ConnectionException:
            raise
        except (ModbusIOException, TimeoutError) as exc:
            self._read_failed(block, f"no answer within {self._config.timeout_ms:g} ms ({exc})")
            return _TIMEOUT
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            self._read_failed(block, f"device answered with Modbus exception code {code}")
            return None
        self.poll_stats.reads += 1
        if block.failing is not None:
            log.info(
                "modbus %s: reading %s %d+%d works again",
                self.name,
                block.table,
                block.address,
                block.count,
            )
            block.failing = None
        if block.table in ("coil", "discrete"):
            return list(rr.bits[: block.count])
        return list(rr.registers)

    def _read_failed(self, block: ReadBlock, reason: str) -> None:
        self.poll_stats.read_failures += 1
        self.poll_stats.values_skipped += len(block.registers)
        if reason != block.failing:  # log a new problem once, not at every poll
            log.error(
                "modbus %s: reading %s %d+%d from %s failed: %s; its %d value(s) are skipped",
                self.name,
                block.table,
                block.address,
                block.count,
                self.endpoint,
                reason,
                len(block.registers),
            )
        block.failing = reason

    async def _handle_value(
        self,
        index: int,
        reg: ModbusRegister,
        block: ReadBlock,
        data: list[int] | list[bool],
        polled_at: datetime,
    ) -> None:
        start = reg.address - block.address
        raw: int | float | bool
        if reg.is_bit:
            raw = bool(data[start])
        else:
            words = [int(w) for w in data[start : start + reg.count]]
            try:
                raw = decode_registers(words, reg.type, reg.byte_order, reg.word_order)
            except DecodeError as exc:
                self.stats.parse_errors += 1
                self.poll_stats.values_skipped += 1
                log.warning("modbus %s: %s: %s; skipped", self.name, register_label(reg), exc)
                return
        if not self._due(index, raw):
            return
        value: SampleValue = raw if isinstance(raw, bool) else scaled(raw, reg)
        await self._sink.put(Sample(reg.asset, reg.signal, polled_at, value, unit=reg.unit))
        self.stats.samples_read += 1

    def _due(self, index: int, raw: int | float | bool) -> bool:
        """Whether this reading is handed on: changed, first of the connection or heartbeat."""
        heartbeat = self._config.heartbeat
        previous = self._last.get(index)
        self._last[index] = raw
        if previous is None or previous != raw or type(previous) is not type(raw):
            self._unchanged[index] = 0
            return True
        unchanged = self._unchanged.get(index, 0) + 1
        if heartbeat is not None and unchanged >= heartbeat:
            self._unchanged[index] = 0
            return True
        self._unchanged[index] = unchanged
        return False


class _Timeout:
    """Marker: a request that got no answer."""


_TIMEOUT = _Timeout()


__all__ = [
    "DecodeError",
    "ModbusSource",
    "ModbusStats",
    "ReadBlock",
    "decode_registers",
    "plan_reads",
    "scaled",
]
