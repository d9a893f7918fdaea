"""Canonical data models shared by every component (the wire contract's vocabulary)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

SampleValue = float | int | bool | str

_SEGMENT = r"[a-z0-9][a-z0-9_-]*"
ASSET_PATH_RE = re.compile(rf"^{_SEGMENT}/{_SEGMENT}/{_SEGMENT}/{_SEGMENT}$")
SEGMENT_RE = re.compile(rf"^{_SEGMENT}$")
SIGNAL_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class MachineState(StrEnum):
    """Canonical machine states every device state code is mapped onto."""

    RUNNING = "running"
    IDLE = "idle"
    STOPPED = "stopped"
    FAULT = "fault"
    SETUP = "setup"
    PLANNED_STOP = "planned_stop"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class AssetPath:
    """ISA-95 path ``site/area/line/machine``."""

    site: str
    area: str
    line: str
    machine: str

    @classmethod
    def parse(cls, text: str) -> AssetPath:
        if not ASSET_PATH_RE.fullmatch(text):
            raise ValueError(
                f"asset path {text!r} is not 'site/area/line/machine' "
                "(lower-case letters, digits, '-' and '_')"
            )
        site, area, line, machine = text.split("/")
        return cls(site, area, line, machine)

    @property
    def line_path(self) -> str:
        return f"{self.site}/{self.area}/{self.line}"

    def __str__(self) -> str:
        return f"{self.site}/{self.area}/{self.line}/{self.machine}"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one signal of one asset at one instant (``ts`` is timezone-aware UTC)."""

    asset: str
    signal: str
    ts: datetime
    value: SampleValue
    quality: Quality = Quality.GOOD
    unit: str | None = None


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_ns(ts: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (exact to the microsecond)."""
    if ts.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1_000
    )


def iso_utc(ts: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, microsecond precision when needed."""
    text = ts.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
