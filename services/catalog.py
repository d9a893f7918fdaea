"""The factory's asset hierarchy: resolve a path at any level to its machines and lines."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from karkhana.config.factory import FactoryConfig, MachineRef
from karkhana.models import SEGMENT_RE


class Level(StrEnum):
    SITE = "site"
    AREA = "area"
    LINE = "line"
    MACHINE = "machine"


LEVELS = (Level.SITE, Level.AREA, Level.LINE, Level.MACHINE)


class MalformedAssetPath(ValueError):
    """The text is not an asset path at any level."""


class UnknownAsset(LookupError):
    """A well-formed path that names no asset of the factory."""


@dataclass(frozen=True, slots=True)
class AssetSelection:
    path: str
    level: Level
    machines: list[MachineRef]

    def lines(self) -> dict[str, list[MachineRef]]:
        """The selected machines grouped by line path, in declaration order."""
        out: dict[str, list[MachineRef]] = {}
        for ref in self.machines:
            out.setdefault(ref.line_path, []).append(ref)
        return out


def parse_asset_path(text: str) -> tuple[str, ...]:
    """``site[/area[/line[/machine]]]`` -> its segments; MalformedAssetPath otherwise."""
    parts = tuple(text.split("/"))
    if not 1 <= len(parts) <= 4 or not all(SEGMENT_RE.fullmatch(p) for p in parts):
        raise MalformedAssetPath(
            f"asset path {text!r} is not 'site', 'site/area', 'site/area/line' or "
            "'site/area/line/machine' (segments of lower-case letters, digits, '-' and '_')"
        )
    return parts


def select(factory: FactoryConfig, text: str) -> AssetSelection:
    """The machines under the asset ``text`` (a site, area, line or machine path)."""
    parts = parse_asset_path(text)
    machines = [
        ref for ref in factory.machines() if tuple(ref.path.split("/")[: len(parts)]) == parts
    ]
    if not machines:
        raise UnknownAsset(f"no {LEVELS[len(parts) - 1]} {'/'.join(parts)!r} in the factory")
    return AssetSelection("/".join(parts), LEVELS[len(parts) - 1], machines)
