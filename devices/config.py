"""The ``simulation:`` block of factory.yaml: devices and scenario parameters per machine.

The kernel keeps the block opaque; it is validated here with models that forbid unknown keys,
and every problem is raised as a :class:`karkhana.errors.ConfigError` whose key path starts
with ``simulation.``.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devices.scenario import ScenarioParams
from karkhana.config.factory import FactoryConfig, MachineRef, parse_hhmm
from karkhana.config.loading import validation_to_config_error
from karkhana.errors import ConfigError
from karkhana.models import MachineState
from karkhana.mqtt_url import parse_broker_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DailyWindow(_Strict):
    """A window that recurs every day at the same local time (site timezone)."""

    start: time
    duration_min: float = Field(gt=0, le=24 * 60)

    _parse = field_validator("start", mode="before")(parse_hhmm)


class MachineSimConfig(_Strict):
    """One simulated machine: its device and the parameters of its scenario."""

    device: Literal["opcua", "mqtt", "modbus"]
    port: int | None = Field(default=None, ge=1, le=65535)
    topic_prefix: str | None = None

    # Speed: actual speed / ideal speed while running normally.
    speed_factor: float = Field(default=0.95, gt=0, le=1.5)
    # Breakdowns (state fault): expected number per hour of production, mean repair time.
    breakdowns_per_hour: float = Field(default=0.15, ge=0)
    repair_min: float = Field(default=12.0, gt=0)
    # Short stops (state stopped): expected per hour, mean length (well below the threshold).
    short_stops_per_hour: float = Field(default=4.0, ge=0)
    short_stop_s: float = Field(default=30.0, gt=0)
    # Changeovers (state setup): expected per shift, mean length.
    changeovers_per_shift: float = Field(default=1.0, ge=0)
    changeover_min: float = Field(default=15.0, gt=0)
    # Idle periods (waiting for material or an operator): expected per shift, mean length.
    idle_per_shift: float = Field(default=1.0, ge=0)
    idle_min: float = Field(default=6.0, gt=0)
    # Periods of reduced speed: expected per shift, mean length, speed multiplier.
    slow_periods_per_shift: float = Field(default=1.0, ge=0)
    slow_period_min: float = Field(default=20.0, gt=0)
    slow_factor: float = Field(default=0.7, gt=0, le=1)
    # Rejects: probability per unit, plus bursts with a higher probability.
    reject_rate: float = Field(default=0.01, ge=0, le=1)
    reject_bursts_per_shift: float = Field(default=0.5, ge=0)
    reject_burst_min: float = Field(default=5.0, gt=0)
    reject_burst_rate: float = Field(default=0.25, ge=0, le=1)
    # Planned maintenance windows (state planned_stop), every day at local time.
    planned_stops: list[DailyWindow] = Field(default_factory=list)
    # Electrical rating: power drawn while running at the ideal speed, kW.
    rated_power_kw: float = Field(default=7.5, ge=0)

    @field_validator("topic_prefix")
    @classmethod
    def _topic_ok(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_prefix must be non-empty and not start or end with '/'")
        if any(ch in value for ch in "+#") or "//" in value:
            raise ValueError("topic_prefix must not contain '+', '#' or empty levels")
        return value

    @model_validator(mode="after")
    def _device_keys(self) -> MachineSimConfig:
        if self.device in ("opcua", "modbus"):
            if self.port is None:
                raise ValueError(f"an {self.device} device needs a 'port'")
            if self.topic_prefix is not None:
                raise ValueError(f"'topic_prefix' belongs to mqtt devices, not {self.device}")
        else:
            if self.topic_prefix is None:
                raise ValueError("an mqtt device needs a 'topic_prefix'")
            if self.port is not None:
                raise ValueError("'port' belongs to opcua and modbus devices, not mqtt")
        return self


class SimulationConfig(_Strict):
    seed: int = 0
    opcua_host: str = "127.0.0.1"
    modbus_host: str = "127.0.0.1"
    broker: str | None = None
    power_outages: list[DailyWindow] = Field(default_factory=list)
    machines: dict[str, MachineSimConfig]

    @field_validator("broker")
    @classmethod
    def _broker_ok(cls, value: str | None) -> str | None:
        if value is not None:
            parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _unique_endpoints(self) -> SimulationConfig:
        ports: dict[int, str] = {}
        prefixes: dict[str, str] = {}
        for path, m in self.machines.items():
            if m.port is not None:
                if m.port in ports:
                    raise ValueError(f"port {m.port} is used by {ports[m.port]} and {path}")
                ports[m.port] = path
            if m.topic_prefix is not None:
                if m.topic_prefix in prefixes:
                    raise ValueError(
                        f"topic_prefix {m.topic_prefix!r} is used by {prefixes[m.topic_prefix]} "
                        f"and {path}"
                    )
                prefixes[m.topic_prefix] = path
        return self


# States a scenario can put a machine into, given its parameters.
def states_used(m: MachineSimConfig) -> set[MachineState]:
    used = {MachineState.RUNNING, MachineState.IDLE, MachineState.OFF}
    if m.breakdowns_per_hour > 0:
        used.add(MachineState.FAULT)
    if m.short_stops_per_hour > 0:
        used.add(MachineState.STOPPED)
    if m.changeovers_per_shift > 0:
        used.add(MachineState.SETUP)
    if m.planned_stops:
        used.add(MachineState.PLANNED_STOP)
    return used


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def device_state_codes(ref: MachineRef, device: str) -> dict[MachineState, int | str]:
    """The machine's state map inverted: the value its device publishes for each state.

    OPC UA and Modbus PLCs publish the smallest integer code of a state; MQTT sensors publish
    the first text key (an integer code when the map has no text key for that state).
    """
    codes: dict[MachineState, int | str] = {}
    for key, state in ref.state_map.items():
        if device in ("opcua", "modbus"):
            if not _is_int(key):
                continue
            current = codes.get(state)
            if current is None or int(key) < int(current):
                codes[state] = int(key)
        else:
            current = codes.get(state)
            if current is None or (isinstance(current, int) and not _is_int(key)):
                codes[state] = int(key) if _is_int(key) else key
    return codes


def _prefixed(source: str | Path, exc: ValidationError, prefix: str) -> ConfigError:
    err = validation_to_config_error(source, exc)
    key = f"{prefix}.{err.key_path}" if err.key_path else prefix
    return ConfigError(source, key, err.problem)


def load_simulation(
    factory: FactoryConfig, source: str | Path = "factory.yaml"
) -> SimulationConfig:
    """Validate ``factory.simulation`` and check it against the factory's machines."""
    if factory.simulation is None:
        raise ConfigError(source, "simulation", "the factory has no 'simulation' block")
    try:
        sim = SimulationConfig.model_validate(factory.simulation)
    except ValidationError as exc:
        raise _prefixed(source, exc, "simulation") from exc
    refs = {ref.path: ref for ref in factory.machines()}
    for path in sim.machines:
        if path not in refs:
            raise ConfigError(
                source,
                f"simulation.machines.{path}",
                "no such machine in the factory (expected a site/area/line/machine path "
                "declared under sites)",
            )
    for path, ref in refs.items():
        entry = sim.machines.get(path)
        if entry is None:
            raise ConfigError(
                source, "simulation.machines", f"machine {path} has no simulation entry"
            )
        key = f"simulation.machines.{path}"
        limit = ref.short_stop_threshold_s
        if entry.short_stops_per_hour > 0 and entry.short_stop_s * 1.5 >= limit:
            raise ConfigError(
                source,
                f"{key}.short_stop_s",
                f"short stops last up to 1.5 x short_stop_s = {entry.short_stop_s * 1.5:g} s, "
                f"which must stay below the machine's short_stop_threshold_s ({limit:g} s)",
            )
        codes = device_state_codes(ref, entry.device)
        missing = sorted(s.value for s in states_used(entry) if s not in codes)
        if missing:
            kind = "an integer" if entry.device in ("opcua", "modbus") else "a"
            raise ConfigError(
                source,
                f"{key}.device",
                f"the machine's state map has no {kind} code for state(s) {', '.join(missing)}",
            )
    return sim


def _windows(items: list[DailyWindow]) -> tuple[tuple[int, int, float], ...]:
    return tuple((w.start.hour, w.start.minute, w.duration_min) for w in items)


def scenario_params(
    entry: MachineSimConfig, ideal_cycle_s: float, power_outages: list[DailyWindow]
) -> ScenarioParams:
    """The scenario engine's parameters for one validated machine entry."""
    return ScenarioParams(
        ideal_cycle_s=ideal_cycle_s,
        speed_factor=entry.speed_factor,
        breakdowns_per_hour=entry.breakdowns_per_hour,
        repair_min=entry.repair_min,
        short_stops_per_hour=entry.short_stops_per_hour,
        short_stop_s=entry.short_stop_s,
        changeovers_per_shift=entry.changeovers_per_shift,
        changeover_min=entry.changeover_min,
        idle_per_shift=entry.idle_per_shift,
        idle_min=entry.idle_min,
        slow_periods_per_shift=entry.slow_periods_per_shift,
        slow_period_min=entry.slow_period_min,
        slow_factor=entry.slow_factor,
        reject_rate=entry.reject_rate,
        reject_bursts_per_shift=entry.reject_bursts_per_shift,
        reject_burst_min=entry.reject_burst_min,
        reject_burst_rate=entry.reject_burst_rate,
        planned_stops=_windows(entry.planned_stops),
        power_outages=_windows(power_outages),
    )
