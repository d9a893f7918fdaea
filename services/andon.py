"""What the shop-floor andon shows: each machine's live state and the OEE of the current
shift with its hourly trend, as one JSON-ready snapshot (docs/andon.md).

Plain functions over a ``SampleSource``: no web framework here. Two paces: machine states
are cheap to read (one short query per signal) and are polled often; the shift's KPIs are
computed less often.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from karkhana.calendar import ShiftInstance, shift_instances
from karkhana.config.factory import FactoryConfig, MachineRef, Site
from karkhana.models import from_ns, iso_utc, to_ns
from services.kpi import (
    OeeComponents,
    compute_machine,
    compute_ratios,
    current_state,
    sum_components,
)
from services.kpi.source import SampleSource

__all__ = [
    "MachineLive",
    "ShiftKpis",
    "current_shift",
    "data_now",
    "live_changes",
    "read_live",
    "shift_kpis",
    "snapshot",
]

# Far beyond any real timestamp, with room for a store to add a window to it (2116).
_LATEST_NS = 2**62
TREND_STEP = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class MachineLive:
    """One machine now: its canonical state (None when unknown), since when, and the
    newest sample of any of its signals."""

    state: str | None
    since_ns: int | None
    last_ns: int | None

    def stale(self, now: datetime, max_gap_s: float) -> bool:
        """No fresh data: nothing at all, or nothing within ``max_gap_s`` before ``now``."""
        return self.last_ns is None or to_ns(now) - self.last_ns > max_gap_s * 1e9


def read_live(source: SampleSource, refs: list[MachineRef]) -> dict[str, MachineLive]:
    """The latest state of every machine in ``refs``."""
    out: dict[str, MachineLive] = {}
    for ref in refs:
        now = current_state(
            source.points_before(ref.path, ref.machine.signals.state, _LATEST_NS), ref.state_map
        )
        times = source.sample_times(ref.path, _LATEST_NS, _LATEST_NS)
        out[ref.path] = MachineLive(
            state=now.state if now else None,
            since_ns=now.since_ns if now else None,
            last_ns=times[-1] if times else None,
        )
    return out


def data_now(live: dict[str, MachineLive], wall: datetime, clock: str = "wall") -> datetime:
    """The andon's clock: the wall clock, or with ``clock="data"`` the newest sample of any
    machine (a simulation's clock, e.g. ``karkhana demo``, which runs faster than real time
    from the start of the latest shift); the wall clock while there is no data."""
    if clock != "data":
        return wall
    newest = max((m.last_ns for m in live.values() if m.last_ns is not None), default=None)
    return from_ns(newest) if newest is not None else wall


def current_shift(site: Site, now: datetime) -> ShiftInstance | None:
    """The shift instance of ``site`` running at ``now`` (None between shifts)."""
    found = shift_instances(site, now, now + timedelta(microseconds=1))
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class ShiftKpis:
    """Components of the current shift so far, per machine, and per hour for the trend."""

    now: datetime
    shifts: dict[str, ShiftInstance | None]  # site id -> shift
    machines: dict[str, OeeComponents]
    trends: dict[str, list[tuple[datetime, OeeComponents]]]


def shift_kpis(
    source: SampleSource, factory: FactoryConfig, now: datetime, max_gap_s: float
) -> ShiftKpis:
    """Each machine's components over its site's current shift up to ``now``: computed per
    hour of the shift (the trend) and summed for the shift (components are additive)."""
    shifts = {site.id: current_shift(site, now) for site in factory.sites}
    machines: dict[str, OeeComponents] = {}
    trends: dict[str, list[tuple[datetime, OeeComponents]]] = {}
    for ref in factory.machines():
        shift = shifts[ref.site.id]
        if shift is None:
            continue
        hours: list[tuple[datetime, OeeComponents]] = []
        start = shift.start
        while start < now:
            end = min(start + TREND_STEP, now)
            hours.append((start, compute_machine(source, ref, start, end, max_gap_s)))
            start = end
        trends[ref.path] = hours
        machines[ref.path] = sum_components(c for _, c in hours)
    return ShiftKpis(now=now, shifts=shifts, machines=machines, trends=trends)


def _ratios(c: OeeComponents | None) -> dict[str, float | None] | None:
    if c is None:
        return None
    r = compute_ratios(c)
    return {
        "oee": r.oee,
        "availability": r.availability,
        "performance": r.performance,
        "quality": r.quality,
        "coverage": r.coverage,
    }


def machine_live_json(live: MachineLive, now: datetime, max_gap_s: float) -> dict[str, Any]:
    return {
        "state": live.state,
        "since": iso_utc(from_ns(live.since_ns)) if live.since_ns is not None else None,
        "last_seen": iso_utc(from_ns(live.last_ns)) if live.last_ns is not None else None,
        "stale": live.stale(now, max_gap_s),
    }


def snapshot(
    factory: FactoryConfig,
    live: dict[str, MachineLive],
    kpis: ShiftKpis | None,
    now: datetime,
    max_gap_s: float,
) -> dict[str, Any]:
    """Everything the andon page shows, grouped site > line > machine in factory order."""
    refs = factory.machines()
    unknown = MachineLive(None, None, None)
    sites: list[dict[str, Any]] = []
    for site in factory.sites:
        shift = kpis.shifts.get(site.id) if kpis else None
        lines: list[dict[str, Any]] = []
        site_refs = [r for r in refs if r.site.id == site.id]
        for _, group in itertools.groupby(site_refs, key=lambda r: (r.area.id, r.line.id)):
            members = list(group)
            area, line = members[0].area, members[0].line
            tiles = []
            for ref in members:
                comps = kpis.machines.get(ref.path) if kpis else None
                trend = kpis.trends.get(ref.path, []) if kpis else []
                tiles.append(
                    {
                        "path": ref.path,
                        "id": ref.machine.id,
                        "name": ref.machine.name,
                        **machine_live_json(live.get(ref.path, unknown), now, max_gap_s),
                        "kpi": _ratios(comps),
                        "trend": [
                            {"from": iso_utc(t), "oee": compute_ratios(c).oee} for t, c in trend
                        ],
                    }
                )
            line_comps = [
                kpis.machines[r.path] for r in members if kpis and r.path in kpis.machines
            ]
            lines.append(
                {
                    "path": f"{site.id}/{area.id}/{line.id}",
                    "name": line.name,
                    "area": area.name or area.id,
                    "kpi": _ratios(sum_components(line_comps)) if line_comps else None,
                    "machines": tiles,
                }
            )
        sites.append(
            {
                "id": site.id,
                "name": site.name,
                "timezone": site.timezone,
                "shift": (
                    {"name": shift.name, "start": iso_utc(shift.start), "end": iso_utc(shift.end)}
                    if shift is not None
                    else None
                ),
                "lines": lines,
            }
        )
    return {
        "now": iso_utc(now),
        "kpi_at": iso_utc(kpis.now) if kpis else None,
        "max_gap_s": max_gap_s,
        "sites": sites,
    }


def live_changes(
    before: dict[str, MachineLive],
    after: dict[str, MachineLive],
    now_before: datetime,
    now: datetime,
    max_gap_s: float,
) -> list[dict[str, Any]]:
    """One ``state`` event body per machine whose state, start or freshness changed."""
    changes: list[dict[str, Any]] = []
    for path, live in after.items():
        old = before.get(path)
        if (
            old is None
            or (old.state, old.since_ns) != (live.state, live.since_ns)
            or old.stale(now_before, max_gap_s) != live.stale(now, max_gap_s)
        ):
            changes.append({"path": path, **machine_live_json(live, now, max_gap_s)})
    return changes
