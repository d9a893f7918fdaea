"""``GET /api/v1/kpi/oee``: OEE per machine or line, from summed components."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from karkhana.config.factory import MachineRef
from karkhana.models import iso_utc, utc_now
from services.api.deps import FactoryDep, ReaderDep, SettingsDep
from services.api.errors import not_found, unprocessable
from services.api.params import check_window, parse_instant
from services.api.schemas import ComponentsOut, GroupBy, OeeItem
from services.catalog import Level, MalformedAssetPath, UnknownAsset, select
from services.kpi import OeeComponents, compute_machine, compute_ratios, sum_components

router = APIRouter(prefix="/kpi", tags=["kpi"])


def _item(
    asset: str,
    level: GroupBy,
    start: datetime,
    end: datetime,
    parts: list[OeeComponents],
) -> OeeItem:
    c = sum_components(parts)
    r = compute_ratios(c)
    return OeeItem(
        asset=asset,
        level=level,
        from_=iso_utc(start),
        to=iso_utc(end),
        availability=r.availability,
        performance=r.performance,
        quality=r.quality,
        oee=r.oee,
        coverage=r.coverage if r.coverage is not None else 0.0,
        components=ComponentsOut(
            planned_s=c.planned_s,
            run_s=c.run_s,
            short_stop_s=c.short_stop_s,
            down_s=dict(c.down_s),
            no_data_s=c.no_data_s,
            planned_stop_s=c.planned_stop_s,
            ideal_s=c.ideal_s,
            total=_count(c.total),
            good=_count(c.good),
            covered_s=c.covered_s,
            window_s=c.window_s,
        ),
        flags=sorted(r.flags),
        machines=len(parts),
    )


@router.get("/oee", response_model=list[OeeItem])
def oee(
    factory: FactoryDep,
    settings: SettingsDep,
    reader: ReaderDep,
    asset: Annotated[
        str, Query(description="site, site/area, site/area/line or site/area/line/machine")
    ],
    from_: Annotated[str, Query(alias="from", description="window start, ISO 8601 with timezone")],
    to: Annotated[
        str | None, Query(description="window end (exclusive), ISO 8601; default now")
    ] = None,
    group_by: Annotated[GroupBy, Query(description="one item per machine or per line")] = (
        GroupBy.MACHINE
    ),
) -> list[OeeItem]:
    """OEE and its components for every machine (or line) under ``asset`` over
    ``[from, to)``. A line's figures come from the sums of its machines' components."""
    start = parse_instant("from", from_)
    end = parse_instant("to", to) if to is not None else utc_now()
    check_window(start, end, settings.max_window_days)
    try:
        selection = select(factory, asset)
    except MalformedAssetPath as exc:
        raise unprocessable(str(exc)) from exc
    except UnknownAsset as exc:
        raise not_found(str(exc)) from exc
    if group_by is GroupBy.LINE and selection.level is Level.MACHINE:
        raise unprocessable(
            f"group_by=line needs a site, area or line asset; {asset!r} is a machine"
        )

    def components(ref: MachineRef) -> OeeComponents:
        return compute_machine(reader, ref, start, end, settings.max_gap_s)

    if group_by is GroupBy.MACHINE:
        return [
            _item(ref.path, GroupBy.MACHINE, start, end, [components(ref)])
            for ref in selection.machines
        ]
    return [
        _item(line, GroupBy.LINE, start, end, [components(ref) for ref in refs])
        for line, refs in selection.lines().items()
    ]


def _count(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
