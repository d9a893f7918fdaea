"""The simulated factory: scenario timelines driving OPC UA PLCs and MQTT sensors on a
simulated clock, with exact ground truth."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from devices.config import (
    MachineSimConfig,
    SimulationConfig,
    device_state_codes,
    load_simulation,
    scenario_params,
)
from devices.control import SimControl, SimControlError
from devices.modbus_plc import ModbusPlc
from devices.mqtt_sensors import MqttHub, MqttSensorSet
from devices.opcua_plc import OpcUaPlc, PlcGroup
from devices.physics import Thermal, energy_kwh, measured_power_kw
from devices.scenario import MachineScenario, default_start, machine_seed
from devices.timeutil import US, from_us, to_us
from devices.truth import GroundTruth, KpiComponents, add_rejects, sum_by_line, time_components
from devices.updates import Device, SignalUpdate
from karkhana.calendar import planned_intervals
from karkhana.config.factory import FactoryConfig, MachineRef
from karkhana.errors import ConfigError
from karkhana.models import MachineState, utc_now
from karkhana.mqtt_url import parse_broker_url

log = logging.getLogger(__name__)


class SimSettings(BaseSettings):
    """Settings of ``karkhana sim`` (environment prefix ``KARKHANA_SIM_``)."""

    model_config = SettingsConfigDict(env_prefix="KARKHANA_SIM_", extra="forbid")

    broker: str | None = None  # overrides simulation.broker
    speed: float = Field(default=1.0, gt=0)  # simulated seconds per real second
    duration_s: float | None = Field(default=None, gt=0)  # REAL seconds; None = until stopped
    start: datetime | None = None  # aware; default: start of the current shift
    seed: int | None = None  # overrides simulation.seed
    tick_hz: float = Field(default=10.0, gt=0, le=1000)
    truth_out: Path | None = None

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("start must carry a UTC offset (e.g. 2024-05-06T01:00:00Z)")
        return value

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is not None:
            parse_broker_url(value)
        return value


@dataclass(frozen=True, slots=True)
class MachineStatus:
    state: MachineState
    total: int  # units completed since the start of the simulation
    good: int


@dataclass
class _Machine:
    ref: MachineRef
    entry: MachineSimConfig
    scenario: MachineScenario
    device: Device
    thermal: Thermal
    noise: random.Random
    base_total: int
    base_reject: int
    base_energy_kwh: float
    units: int = 0
    rejects: int = 0
    mode: str = "auto"
    energy_kwh: float = 0.0


def _mode_codes(ref: MachineRef, source: str | Path) -> dict[str, int]:
    codes: dict[str, int] = {}
    for key, mode in ref.machine.mode_map.items():
        try:
            codes.setdefault(mode, int(key))
        except ValueError:
            continue
    missing = [m for m in ("auto", "manual") if m not in codes]
    if missing:
        raise ConfigError(
            source,
            f"simulation.machines.{ref.path}.device",
            f"the machine's mode_map has no integer code for {', '.join(missing)}",
        )
    return codes


def _write_atomically(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FactorySimulator:
    """Simulated factory; use as ``async with FactorySimulator(...) as sim: await sim.run()``."""

    def __init__(
        self,
        factory: FactoryConfig,
        settings: SimSettings,
        source: str | Path = "factory.yaml",
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.source = source
        self.config: SimulationConfig | None = None
        self.seed = 0
        self.start: datetime = settings.start or default_start(factory.sites, utc_now())
        self.start = from_us(to_us(self.start))  # whole microseconds, UTC
        self.end: datetime | None = (
            self.start + timedelta(seconds=settings.duration_s * settings.speed)
            if settings.duration_s is not None
            else None
        )
        self._start_us = to_us(self.start)
        self._end_us = to_us(self.end) if self.end is not None else None
        self._published_until = self._start_us
        # Updates up to this time are published or being computed: forced states start after.
        self._horizon_us = self._start_us
        self._initial_done = False
        self._t0: float | None = None
        self._machines: list[_Machine] = []
        self._stack: AsyncExitStack | None = None
        self.endpoints: dict[str, str] = {}
        self._modbus_plcs: list[ModbusPlc] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> FactorySimulator:
        cfg = load_simulation(self.factory, self.source)
        self.config = cfg
        self.seed = self.settings.seed if self.settings.seed is not None else cfg.seed
        broker = self.settings.broker or cfg.broker
        refs = self.factory.machines()
        needs_mqtt = any(cfg.machines[r.path].device == "mqtt" for r in refs)
        if needs_mqtt and broker is None:
            raise ConfigError(
                self.source,
                "simulation.broker",
                "mqtt devices need a broker: set simulation.broker or pass --broker",
            )
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            hub: MqttHub | None = None
            if needs_mqtt and broker is not None:
                client_id = f"karkhana-sim-{self.seed}-{os.getpid()}"
                hub = await stack.enter_async_context(MqttHub(broker, client_id))
            plcs: list[OpcUaPlc] = []
            for ref in refs:
                self._machines.append(self._build(ref, cfg, hub, plcs))
            if plcs:
                await stack.enter_async_context(PlcGroup(plcs))
            if broker is not None:
                control_id = f"karkhana-sim-control-{os.getpid()}-{id(self):x}"
                await stack.enter_async_context(SimControl(broker, control_id, self))
            for modbus_plc in self._modbus_plcs:
                await stack.enter_async_context(modbus_plc)
            # Devices show their values at the start time as soon as they are up, so a
            # reader that connects before run() starts the clock sees the right state.
            await self._publish_initial()
            self._initial_done = True
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    def _build(
        self, ref: MachineRef, cfg: SimulationConfig, hub: MqttHub | None, plcs: list[OpcUaPlc]
    ) -> _Machine:
        entry = cfg.machines[ref.path]
        codes = device_state_codes(ref, entry.device)
        device: Device
        if entry.device == "opcua":
            assert entry.port is not None
            plc = OpcUaPlc(
                ref.machine.id,
                cfg.opcua_host,
                entry.port,
                codes,
                _mode_codes(ref, self.source),
                initial_ts=self.start,
            )
            plcs.append(plc)
            device = plc
        elif entry.device == "modbus":
            assert entry.port is not None
            modbus_plc = ModbusPlc(
                ref.machine.id, cfg.modbus_host, entry.port, codes, _mode_codes(ref, self.source)
            )
            self._modbus_plcs.append(modbus_plc)
            device = modbus_plc
        else:
            assert hub is not None and entry.topic_prefix is not None
            device = MqttSensorSet(hub, entry.topic_prefix, codes)
        self.endpoints[ref.path] = device.endpoint
        params = scenario_params(entry, ref.machine.ideal_cycle_s, cfg.power_outages)
        scenario = MachineScenario(ref.path, ref.site, params, self.seed, self._start_us)
        rng = random.Random(machine_seed(self.seed, ref.path) * 7 + 1)
        base_total = rng.randrange(10_000, 2_000_000)
        return _Machine(
            ref=ref,
            entry=entry,
            scenario=scenario,
            device=device,
            thermal=Thermal(rng),
            noise=rng,
            base_total=base_total,
            base_reject=base_total // 60,
            base_energy_kwh=round(rng.uniform(1_000, 90_000), 1),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.settings.truth_out is not None and self.config is not None:
                self.write_truth(self.settings.truth_out)
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                await stack.aclose()

    # ---- clock and tick loop ---------------------------------------------------------

    def _clock_us(self) -> int:
        if self._t0 is None:
            return self._published_until
        elapsed = asyncio.get_running_loop().time() - self._t0
        now = self._start_us + int(elapsed * self.settings.speed * US)
        if self._end_us is not None:
            now = min(now, self._end_us)
        return max(now, self._published_until)

    def now(self) -> datetime:
        """The simulated clock."""
        return from_us(self._clock_us())

    async def run(self) -> None:
        """Publish until the end time (then return) or until cancelled."""
        if self._stack is None:
            raise RuntimeError("use 'async with FactorySimulator(...) as sim' before run()")
        loop = asyncio.get_running_loop()
        if not self._initial_done:
            await self._publish_initial()
            self._initial_done = True
        done_s = (self._published_until - self._start_us) / US / self.settings.speed
        self._t0 = loop.time() - done_s
        period = 1.0 / self.settings.tick_hz
        next_tick = loop.time()
        try:
            while True:
                now_us = self._clock_us()
                if now_us > self._published_until:
                    await self._advance(now_us)
                if self._end_us is not None and now_us >= self._end_us:
                    return
                next_tick += period
                delay = next_tick - loop.time()
                if delay < 0:
                    next_tick = loop.time()
                    delay = 0.0
                await asyncio.sleep(delay)
        finally:
            self._t0 = None

    async def _publish_initial(self) -> None:
        ts = self.start
        t = self._start_us

        async def initial(m: _Machine) -> None:
            seg = m.scenario.segment_at(t)
            m.mode = "manual" if seg.state is MachineState.SETUP else "auto"
            updates = [
                SignalUpdate("state", seg.state, ts),
                SignalUpdate("mode", m.mode, ts),
                SignalUpdate("count_total", m.base_total, ts),
                SignalUpdate("count_reject", m.base_reject, ts),
                SignalUpdate("speed", self._speed(seg.cycle_us), ts),
                SignalUpdate("temperature", m.thermal.step(seg.state, 0.0), ts),
                SignalUpdate("power", measured_power_kw(seg, m.entry.rated_power_kw, m.noise), ts),
                SignalUpdate("energy", m.base_energy_kwh, ts),
            ]
            await m.device.publish(updates)

        await asyncio.gather(*(initial(m) for m in self._machines))

    @staticmethod
    def _speed(cycle_us: int) -> float:
        return round(60 * US / cycle_us, 3) if cycle_us > 0 else 0.0

    async def _advance(self, now_us: int) -> None:
        prev = self._published_until
        self._horizon_us = now_us
        await asyncio.gather(*(self._advance_machine(m, prev, now_us) for m in self._machines))
        self._published_until = now_us

    async def _advance_machine(self, m: _Machine, prev: int, now: int) -> None:
        sc = m.scenario
        updates: list[SignalUpdate] = []
        for t, state in sc.state_changes(prev, now):
            ts = from_us(t)
            updates.append(SignalUpdate("state", state, ts))
            mode = "manual" if state is MachineState.SETUP else "auto"
            if mode != m.mode:
                m.mode = mode
                updates.append(SignalUpdate("mode", mode, ts))
        units, rejects, last_unit, last_reject = sc.counts_before(now)
        if units != m.units and last_unit is not None:
            m.units = units
            updates.append(SignalUpdate("count_total", m.base_total + units, from_us(last_unit)))
        if rejects != m.rejects and last_reject is not None:
            # One update per reject, each at its own completion time, so the data can tell
            # startup rejects from production rejects exactly (a device that samples
            # slower, like the Modbus PLC, still shows only the last).
            times = sc.reject_times(prev, now)
            if len(times) == rejects - m.rejects:
                for n, t in enumerate(times, start=m.rejects + 1):
                    updates.append(SignalUpdate("count_reject", m.base_reject + n, from_us(t)))
            else:  # cannot happen while both count the same units; keep the total right
                updates.append(
                    SignalUpdate("count_reject", m.base_reject + rejects, from_us(last_reject))
                )
            m.rejects = rejects
        rated = m.entry.rated_power_kw
        m.energy_kwh += energy_kwh(sc.segments_between(prev, now), rated)
        seg = sc.segment_at(now)
        ts = from_us(now)
        updates += [
            SignalUpdate("speed", self._speed(seg.cycle_us), ts),
            SignalUpdate("temperature", m.thermal.step(seg.state, (now - prev) / US), ts),
            SignalUpdate("power", measured_power_kw(seg, rated, m.noise), ts),
            SignalUpdate("energy", round(m.base_energy_kwh + m.energy_kwh, 4), ts),
        ]
        await m.device.publish(updates)

    # ---- control ---------------------------------------------------------------------

    def force_state(
        self, machine: str, state: MachineState, duration_s: float
    ) -> tuple[datetime, datetime]:
        """Put ``machine`` (its asset path) in the stop ``state`` for ``duration_s``
        simulated seconds from the next tick on; returns the forced span (simulated time).
        The ground truth includes it. Raises SimControlError for a request it cannot do."""
        found = [m for m in self._machines if m.ref.path == machine]
        if not found:
            known = ", ".join(m.ref.path for m in self._machines)
            raise SimControlError(f"unknown machine {machine!r}; known: {known}")
        if state is MachineState.RUNNING:
            raise SimControlError("only a stop state can be forced, not 'running'")
        if not duration_s > 0:
            raise SimControlError(f"duration_s must be above 0, got {duration_s}")
        start = max(self._clock_us(), self._horizon_us, self._published_until) + 1
        end = start + max(1, round(duration_s * US))
        if self._end_us is not None:
            if start >= self._end_us:
                raise SimControlError("the simulation has reached its end time")
            end = min(end, self._end_us)
        found[0].scenario.force(start, end, state)
        log.info("forced %s to %s from %s to %s", machine, state, from_us(start), from_us(end))
        return from_us(start), from_us(end)

    # ---- observation -----------------------------------------------------------------

    def machine_status(self) -> dict[str, MachineStatus]:
        """State and units since the start, as published so far."""
        out: dict[str, MachineStatus] = {}
        t = self._published_until
        for m in self._machines:
            units, rejects, _, _ = m.scenario.counts_before(t)
            out[m.ref.path] = MachineStatus(m.scenario.state_at(t), units, units - rejects)
        return out

    def truth(self, until: datetime | None = None) -> GroundTruth:
        """Exact KPI components of ``[start, until)`` (default: the time published so far)."""
        u = self._published_until if until is None else to_us(until)
        u = max(u, self._start_us)
        window = (self._start_us, u)
        machines: dict[str, KpiComponents] = {}
        for m in self._machines:
            site = m.ref.site
            shift_us = sum(
                to_us(b) - to_us(a) for a, b in planned_intervals(site, self.start, from_us(u))
            )
            planned = [
                (to_us(a), to_us(b))
                for a, b in planned_intervals(site, self.start, from_us(u), m.ref.path)
            ]
            # The simulated mode is manual during setup (see _advance_machine).
            has_mode = m.ref.machine.signals.mode is not None
            comp = time_components(
                m.scenario.spans(u),
                planned,
                window,
                m.ref.short_stop_threshold_s,
                m.ref.external_causes,
                frozenset({MachineState.SETUP}) if has_mode else None,
            )
            comp.maintenance_us = shift_us - sum(b - a for a, b in planned)
            # Every tick publishes power and energy, far more often than max_gap_s.
            comp.covered_us = comp.window_us
            add_rejects(
                comp,
                m.scenario.segments_between(*window),
                window,
                m.ref.startup_window_s,
                m.ref.machine.ideal_cycle_s,
            )
            comp.energy_kwh = energy_kwh(
                m.scenario.segments_between(*window), m.entry.rated_power_kw
            )
            machines[m.ref.path] = comp
        return GroundTruth(
            start=self.start,
            end=from_us(u),
            speed=self.settings.speed,
            seed=self.seed,
            machines=machines,
            lines=sum_by_line(machines),
        )

    def write_truth(self, path: Path, until: datetime | None = None) -> None:
        """Write :meth:`truth` as JSON, atomically (temporary file + rename)."""
        _write_atomically(path, self.truth(until).to_json())
        log.info("ground truth written to %s", path)

    def describe(self) -> str:
        """One line: devices and the simulated window."""
        plcs = [e for e in self.endpoints.values() if e.startswith("opc.tcp://")]
        modbus = [e for e in self.endpoints.values() if e.startswith("modbus://")]
        sensors = [e for e in self.endpoints.values() if e.startswith("mqtt://")]
        parts = []
        if plcs:
            parts.append(f"{len(plcs)} OPC UA PLC(s) {', '.join(plcs)}")
        if modbus:
            parts.append(f"{len(modbus)} Modbus PLC(s) {', '.join(modbus)}")
        if sensors:
            parts.append(f"{len(sensors)} MQTT sensor set(s) on {sensors[0].split(' ')[0]}")
        end = self.end.isoformat() if self.end is not None else "until stopped"
        return (
            f"simulating {'; '.join(parts)}; sim time {self.start.isoformat()} -> {end} "
            f"at {self.settings.speed:g}x, seed {self.seed}"
        )
