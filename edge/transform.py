"""Value mapping of samples: linear scaling, deadbands and state-code maps.

Every OPC UA node, MQTT topic and Modbus register of ``edge.yaml`` may carry the keys of
:class:`MappingKeys`. :func:`build_transforms` turns them into one :class:`Transform` per
(asset, signal); the agent applies it to each sample on its way into the buffer, so every
source type gets the same mapping without code of its own.

Order of operations for one sample: ``state_map`` (raw device code -> mapped value), else
``value * scale + offset`` for numbers, then the deadband on the result. A deadband never
applies unless configured: counters and states pass unfiltered by default.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from karkhana.models import Quality, Sample, SampleValue

if TYPE_CHECKING:
    from edge.config import EdgeConfig

log = logging.getLogger(__name__)

StateKey = int | str
MAX_NEGATIVE_CACHE = 10_000  # (asset, signal) pairs remembered as "no transform"


class MappingKeys(BaseModel):
    """The value mapping keys shared by OPC UA nodes, MQTT topics and Modbus registers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 1.0
    offset: float = 0.0
    deadband: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, gt=0, le=100)
    range: tuple[float, float] | None = None
    state_map: dict[StateKey, bool | int | float | str] | None = None

    @field_validator("scale", "offset", "deadband", "deadband_percent")
    @classmethod
    def _mapping_finite(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite number")
        if info.field_name == "scale" and value == 0:
            raise ValueError("scale must not be 0 (every reading would become the offset)")
        return value

    @field_validator("range")
    @classmethod
    def _range_ok(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is None:
            return None
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError("range must be [low, high] with finite low < high")
        return value

    @field_validator("state_map")
    @classmethod
    def _state_map_ok(cls, value: dict[StateKey, Any] | None) -> dict[StateKey, Any] | None:
        if value is not None and not value:
            raise ValueError("state_map is empty (leave it out instead)")
        if value is not None:
            for mapped in value.values():
                if isinstance(mapped, float) and not math.isfinite(mapped):
                    raise ValueError(f"state_map value {mapped!r} is not a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MappingKeys:
        if self.deadband is not None and self.deadband_percent is not None:
            raise ValueError("give deadband or deadband_percent, not both")
        if self.range is not None and self.deadband_percent is None:
            raise ValueError("range is only used with deadband_percent")
        if self.state_map is not None and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("state_map cannot be combined with scale or offset")
        return self

    @property
    def has_mapping(self) -> bool:
        """True when any key changes or filters values."""
        return (
            self.scale != 1.0
            or self.offset != 0.0
            or self.deadband is not None
            or self.deadband_percent is not None
            or self.state_map is not None
        )


@dataclass(frozen=True, slots=True)
class TransformSpec:
    """The immutable recipe of a transform (one per configured node/topic/register)."""

    scale: float = 1.0
    offset: float = 0.0
    deadband: float | None = None
    deadband_percent: float | None = None
    range: tuple[float, float] | None = None
    state_map: dict[StateKey, SampleValue] | None = None

    @classmethod
    def from_keys(cls, keys: MappingKeys, *, scaled_at_source: bool = False) -> TransformSpec:
        """``scaled_at_source``: the source already applied scale/offset (Modbus)."""
        return cls(
            scale=1.0 if scaled_at_source else keys.scale,
            offset=0.0 if scaled_at_source else keys.offset,
            deadband=keys.deadband,
            deadband_percent=keys.deadband_percent,
            range=keys.range,
            state_map=dict(keys.state_map) if keys.state_map is not None else None,
        )


_UNSET = object()


@dataclass(slots=True)
class Transform:
    """Maps and filters the samples of one (asset, signal); keeps the deadband state.

    :meth:`apply` returns the sample to forward or ``None`` when the deadband suppresses it.
    """

    spec: TransformSpec
    suppressed: int = 0
    unmapped: int = 0  # values with no entry in state_map (passed through unchanged)
    _last_value: float | None = None
    _last_quality: Quality | None = None
    _scales: bool = field(init=False)
    _deadband: bool = field(init=False)
    _range_base: float | None = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self._scales = spec.scale != 1.0 or spec.offset != 0.0
        self._deadband = spec.deadband is not None or spec.deadband_percent is not None
        self._range_base = None if spec.range is None else spec.range[1] - spec.range[0]

    def map_value(self, value: SampleValue) -> SampleValue:
        """The mapped value (state map or scaling), without the deadband."""
        spec = self.spec
        if spec.state_map is not None:
            # bool keys would hash like 0/1; a float 3.0 finds the key 3
            mapped = spec.state_map.get(value, _UNSET)  # type: ignore[arg-type]
            if mapped is _UNSET:
                self.unmapped += 1
                if self.unmapped == 1:
                    log.warning("state_map has no entry for %r; passed through unchanged", value)
                return value
            return mapped  # type: ignore[return-value]
        if self._scales and isinstance(value, int | float) and not isinstance(value, bool):
            return value * spec.scale + spec.offset
        return value

    def threshold(self, last: float) -> float:
        """The deadband around the last forwarded value ``last``."""
        spec = self.spec
        if spec.deadband is not None:
            return spec.deadband
        assert spec.deadband_percent is not None
        base = self._range_base if self._range_base is not None else abs(last)
        return spec.deadband_percent / 100.0 * base

    def apply(self, sample: Sample) -> Sample | None:
        value = self.map_value(sample.value)
        if self._deadband:
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            last = self._last_value
            if (
                numeric
                and last is not None
                and sample.quality == self._last_quality
                and abs(value - last) <= self.threshold(last)  # type: ignore[operator]
            ):
                self.suppressed += 1
                return None
            self._last_value = value if numeric else None  # type: ignore[assignment]
            self._last_quality = sample.quality
        if value is sample.value:
            return sample
        return Sample(sample.asset, sample.signal, sample.ts, value, sample.quality, sample.unit)


def _template_regex(template: str, multi: frozenset[str] = frozenset()) -> re.Pattern[str]:
    """``plant/{area}/{machine}`` -> a regex the filled-in text must match; a placeholder
    in ``multi`` (a ``{name+}`` capture of the topic) may span several ``/`` levels."""
    from edge.config import PLACEHOLDER_RE

    parts: list[str] = []
    pos = 0
    for match in PLACEHOLDER_RE.finditer(template):
        parts.append(re.escape(template[pos : match.start()]))
        parts.append(".+" if match.group(1) in multi else "[^/]+")
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(parts) + "$")


@dataclass(frozen=True, slots=True)
class _TemplateRule:
    asset: re.Pattern[str]
    signal: re.Pattern[str]
    spec: TransformSpec


class TransformTable:
    """(asset, signal) -> :class:`Transform`, built from the whole ``edge.yaml``.

    Exact pairs (OPC UA nodes, Modbus registers, MQTT topics without placeholders) are a
    plain dict lookup. MQTT topics with placeholders are matched once per new pair (first
    matching topic in config order) and the answer is cached.
    """

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Transform | None] = {}
        self._rules: list[_TemplateRule] = []
        self._negative = 0

    def __len__(self) -> int:
        return sum(1 for t in self._exact.values() if t is not None)

    def add(
        self, asset: str, signal: str, spec: TransformSpec, multi: frozenset[str] = frozenset()
    ) -> None:
        """Register a transform; ``asset``/``signal`` may be MQTT templates (``multi``:
        the names of the topic's ``{name+}`` placeholders)."""
        if "{" in asset or "{" in signal:
            rule = _TemplateRule(
                _template_regex(asset, multi), _template_regex(signal, multi), spec
            )
            self._rules.append(rule)
        else:
            self._exact.setdefault((asset, signal), Transform(spec))

    def lookup(self, asset: str, signal: str) -> Transform | None:
        key = (asset, signal)
        try:
            return self._exact[key]
        except KeyError:
            pass
        if not self._rules:
            return None
        found: Transform | None = None
        for rule in self._rules:
            if rule.asset.match(asset) and rule.signal.match(signal):
                found = Transform(rule.spec)
                break
        if found is not None:
            self._exact[key] = found
        elif self._negative < MAX_NEGATIVE_CACHE:
            self._negative += 1
            self._exact[key] = None
        return found

    @property
    def empty(self) -> bool:
        return not self._rules and not any(self._exact.values())

    @property
    def unmapped(self) -> int:
        """Values so far that had no entry in their ``state_map`` (passed through)."""
        return sum(t.unmapped for t in self._exact.values() if t is not None)


def build_transforms(config: EdgeConfig) -> TransformTable:
    """One transform per configured mapping (nodes, topics, registers with mapping keys)."""
    from edge.config import MqttSourceConfig, OpcUaSourceConfig, multi_level_placeholders
    from edge.modbus_config import ModbusSourceConfig

    table = TransformTable()
    for source in config.sources:
        if isinstance(source, OpcUaSourceConfig):
            for node in source.nodes:
                if node.has_mapping:
                    table.add(node.asset, node.signal, TransformSpec.from_keys(node))
        elif isinstance(source, MqttSourceConfig):
            for topic in source.topics:
                if topic.has_mapping:
                    multi = frozenset(multi_level_placeholders(topic.topic))
                    spec = TransformSpec.from_keys(topic)
                    table.add(topic.asset, topic.signal, spec, multi)
        elif isinstance(source, ModbusSourceConfig):
            for reg in source.registers:
                if reg.has_mapping and (
                    reg.deadband is not None
                    or reg.deadband_percent is not None
                    or reg.state_map is not None
                ):
                    spec = TransformSpec.from_keys(reg, scaled_at_source=True)
                    table.add(reg.asset, reg.signal, spec)
    return table


__all__ = [
    "MappingKeys",
    "Transform",
    "TransformSpec",
    "TransformTable",
    "build_transforms",
]
