"""Modbus TCP source: polls one device with the async pymodbus client.

Registers of one table that sit next to each other are read with one request (up to the
protocol's limit per request); a value's ``timestamp`` registers take part in that planning,
so a value and its timestamp that are contiguous arrive in the same answer and agree.

Modbus itself carries no timestamps. A value with a ``timestamp`` block is stamped with the
device time decoded from it (a timestamp of 0, a device clock that was never set, falls back
to the poll time with a warning logged once); any other value with the time its poll started
(UTC), so its time is only as exact as the poll interval. A value is handed on when it, or
its device timestamp, differs from the last reading (the first poll of every connection hands
on everything), and with ``heartbeat: N`` also every N polls while both stay the same.

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
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge.modbus_config import (
    ModbusRegister,
    ModbusSourceConfig,
    ModbusTimestamp,
    register_label,
)
from edge.sources.base import Backoff, Sink, SourceStats
from karkhana.errors import ConnectionFailed
from karkhana.models import Sample, SampleValue, utc_now
from karkhana.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_REGISTERS_PER_READ = 125  # protocol limit of function codes 3 and 4
MAX_BITS_PER_READ = 2000  # protocol limit of function codes 1 and 2
FAILED_POLLS_BEFORE_RECONNECT = 3  # consecutive polls in which every read timed out

_STRUCT_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def decode_timestamp(registers: Sequence[int], ts: ModbusTimestamp) -> datetime | None:
    """The device time held by a timestamp's registers; None when they hold 0 (not set).

    Each register is an unsigned big-endian word; ``word_order: big`` puts the most
    significant word first."""
    words = list(registers)
    if len(words) != ts.count:
        raise ValueError(f"a {ts.type} timestamp takes {ts.count} registers, got {len(words)}")
    if ts.word_order == "little":
        words.reverse()
    raw = 0
    for word in words:
        raw = (raw << 16) | (word & 0xFFFF)
    if raw == 0:
        return None
    try:
        return _EPOCH + timedelta(microseconds=raw * _US_PER_UNIT[ts.unit])
    except OverflowError as exc:
        raise DecodeError(
            f"timestamp registers {list(registers)} hold {raw} {ts.unit} since 1970, "
            "which is not a date"
        ) from exc


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
    # The values that need this request (for their value or their timestamp), in address
    # order: (index in the source's registers, register).
    registers: list[tuple[int, ModbusRegister]] = field(default_factory=list)
    failing: str | None = None  # reason of the last failure, for logging changes only

    def holds(self, table: str, address: int, count: int) -> bool:
        return (
            table == self.table
            and self.address <= address
            and address + count <= self.address + self.count
        )


def plan_reads(registers: Sequence[ModbusRegister]) -> list[ReadBlock]:
    """Group registers into as few requests as possible without reading unmapped addresses.

    Values and timestamps of one table that are contiguous (or overlap) share a request, as
    long as it stays within the protocol's limit per request.
    """
    spans: list[tuple[str, int, int, int, ModbusRegister]] = []  # table, address, count
    for index, reg in enumerate(registers):
        spans.append((reg.table, reg.address, reg.count, index, reg))
        if reg.timestamp is not None:
            ts = reg.timestamp
            spans.append((reg.table, ts.address, ts.count, index, reg))
    spans.sort(key=lambda span: (span[0], span[1]))
    blocks: list[ReadBlock] = []
    for table, address, count, index, reg in spans:
        end = address + count
        limit = MAX_BITS_PER_READ if reg.is_bit else MAX_REGISTERS_PER_READ
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.table == table
            and address <= last.address + last.count
            and max(end, last.address + last.count) - last.address <= limit
        ):
            last.count = max(end, last.address + last.count) - last.address
            if all(i != index for i, _ in last.registers):
                last.registers.append((index, reg))
        else:
            blocks.append(ReadBlock(table, address, count, [(index, reg)]))
    return blocks


def _block_holding(blocks: Sequence[ReadBlock], table: str, address: int, count: int) -> int:
    """Index of the request that reads the whole span (plan_reads never splits one)."""
    for i, block in enumerate(blocks):
        if block.holds(table, address, count):
            return i
    raise AssertionError(f"no planned read covers {table} {address}+{count}")


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
        # Per value: the request holding its registers and the one holding its timestamp.
        self._where: list[tuple[int, int | None]] = [
            (
                _block_holding(self._blocks, reg.table, reg.address, reg.count),
                None
                if reg.timestamp is None
                else _block_holding(
                    self._blocks, reg.table, reg.timestamp.address, reg.timestamp.count
                ),
            )
            for reg in config.registers
        ]
        self._last: dict[int, tuple[int | float | bool, datetime | None]] = {}
        self._unchanged: dict[int, int] = {}
        self._undecodable: set[int] = set()  # values whose last reading could not be decoded
        self._clock_unset_logged: set[tuple[str, int]] = set()  # timestamps found at 0
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
        results: list[list[int] | list[bool] | None] = []
        for block in self._blocks:
            result = await self._read(client, block)
            if isinstance(result, _Timeout):
                results.append(None)
                continue
            answered = True
            results.append(result)
        for index, reg in enumerate(self._config.registers):
            value_block, ts_block = self._where[index]
            data = results[value_block]
            stamp: tuple[ReadBlock, list[int] | list[bool]] | None = None
            if ts_block is not None:
                ts_data = results[ts_block]
                stamp = None if ts_data is None else (self._blocks[ts_block], ts_data)
            if data is None or (ts_block is not None and stamp is None):
                self.poll_stats.values_skipped += 1  # its request failed, already logged
                continue
            await self._handle_value(index, reg, self._blocks[value_block], data, stamp, polled_at)
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
        stamp: tuple[ReadBlock, list[int] | list[bool]] | None,
        polled_at: datetime,
    ) -> None:
        start = reg.address - block.address
        raw: int | float | bool
        device_time: datetime | None = None
        try:
            if reg.is_bit:
                raw = bool(data[start])
            else:
                words = [int(w) for w in data[start : start + reg.count]]
                raw = decode_registers(words, reg.type, reg.byte_order, reg.word_order)
            if stamp is not None and reg.timestamp is not None:
                ts_block, ts_data = stamp
                first = reg.timestamp.address - ts_block.address
                ts_words = [int(w) for w in ts_data[first : first + reg.timestamp.count]]
                device_time = decode_timestamp(ts_words, reg.timestamp)
                if device_time is None:
                    self._clock_not_set(reg)
        except DecodeError as exc:
            self.stats.parse_errors += 1
            self.poll_stats.values_skipped += 1
            if index not in self._undecodable:  # log a new problem once, not at every poll
                self._undecodable.add(index)
                log.warning("modbus %s: %s: %s; skipped", self.name, register_label(reg), exc)
            return
        if index in self._undecodable:
            self._undecodable.discard(index)
            log.info("modbus %s: %s decodes again", self.name, register_label(reg))
        if not self._due(index, raw, device_time):
            return
        value: SampleValue = raw if isinstance(raw, bool) else scaled(raw, reg)
        ts = device_time if device_time is not None else polled_at
        await self._sink.put(Sample(reg.asset, reg.signal, ts, value, unit=reg.unit))
        self.stats.samples_read += 1

    def _clock_not_set(self, reg: ModbusRegister) -> None:
        assert reg.timestamp is not None
        key = (reg.table, reg.timestamp.address)
        if key not in self._clock_unset_logged:
            self._clock_unset_logged.add(key)
            log.warning(
                "modbus %s: timestamp %s %d holds 0 (device clock not set?); values that use "
                "it are stamped with the poll time until it is set",
                self.name,
                reg.table,
                reg.timestamp.address,
            )

    def _due(self, index: int, raw: int | float | bool, device_time: datetime | None) -> bool:
        """Whether this reading is handed on: changed (value or device timestamp), first of
        the connection, or heartbeat."""
        heartbeat = self._config.heartbeat
        previous = self._last.get(index)
        self._last[index] = (raw, device_time)
        if previous is None or previous != (raw, device_time) or type(previous[0]) is not type(raw):
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
    "decode_timestamp",
    "plan_reads",
    "scaled",
]
