"""Roll-ups: machine -> line -> area -> site by summing components, per reporting period.

A group's KPIs are the ratios of its machines' *summed* components; ratios are never
averaged. ``period_report`` answers from the bucket table (``services.kpi_store``), bringing
it up to date first (missing, open and late-data buckets are recomputed from raw samples).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from karkhana.config.factory import MachineRef, Site
from karkhana.models import to_ns
from services.catalog import LEVELS, Level
from services.kpi import OeeComponents
from services.kpi.buckets import Period, PeriodKind, check_grid, check_window, periods
from services.kpi.source import SampleSource
from services.kpi_store import BucketSink, KpiStore, RefreshStats, SampleCounter, refresh


def group_path(ref: MachineRef, level: Level) -> str:
    """The path of the asset at ``level`` that ``ref`` belongs to."""
    depth = LEVELS.index(level) + 1
    return "/".join(ref.path.split("/")[:depth])


@dataclass(slots=True)
class Group:
    """Summed components of the machines of one asset (over one period, when bucketed)."""

    asset: str
    components: OeeComponents = field(default_factory=OeeComponents)
    machines: int = 0


def roll_up(parts: Iterable[tuple[MachineRef, OeeComponents]], level: Level) -> list[Group]:
    """Sum machine components into groups at ``level``, in the order groups first appear."""
    groups: dict[str, Group] = {}
    for ref, c in parts:
        key = group_path(ref, level)
        g = groups.get(key)
        if g is None:
            groups[key] = Group(key, c, 1)  # no addition for a group of one
        else:
            g.components = g.components + c
            g.machines += 1
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class PeriodGroup:
    period: Period
    group: Group


def _by_site(refs: Sequence[MachineRef]) -> dict[str, tuple[Site, list[MachineRef]]]:
    out: dict[str, tuple[Site, list[MachineRef]]] = {}
    for ref in refs:
        out.setdefault(ref.site.id, (ref.site, []))[1].append(ref)
    return out


def period_report(
    store: KpiStore,
    counter: SampleCounter,
    source: SampleSource,
    refs: Sequence[MachineRef],
    start: datetime,
    end: datetime,
    kind: PeriodKind,
    level: Level,
    max_gap_s: float,
    sink: BucketSink | None = None,
) -> tuple[list[PeriodGroup], RefreshStats]:
    """Components of every ``level`` group of ``refs`` per ``kind`` period of
    ``[start, end)`` (bucket boundaries), from the bucket table.

    Raises ``OffGrid`` when the window is off the bucket grid, or, for shifts, a shift of a
    site's calendar starts or ends off it.
    """
    check_window(start, end)
    stats = RefreshStats()
    out: list[PeriodGroup] = []
    for site, site_refs in _by_site(refs).values():
        if kind is PeriodKind.SHIFT:
            check_grid(site, start, end)
        done = refresh(store, counter, source, site_refs, to_ns(start), to_ns(end), max_gap_s, sink)
        stats.recomputed += done.recomputed
        stats.late += done.late
        site_periods = periods(site, start, end, kind)
        sums = store.sums(
            [r.path for r in site_refs], [(to_ns(p.start), to_ns(p.end)) for p in site_periods]
        )
        for i, period in enumerate(site_periods):
            parts = [(r, _get(sums, r.path, i)) for r in site_refs]
            out.extend(PeriodGroup(period, g) for g in roll_up(parts, level))
    return out, stats


def _get(sums: Mapping[tuple[str, int], OeeComponents], machine: str, i: int) -> OeeComponents:
    return sums.get((machine, i)) or OeeComponents()
