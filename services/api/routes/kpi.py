"""``GET /api/v1/kpi/oee``: OEE per machine, line, area or site, from summed components;
optionally per hour, shift, day or week, from the 15-minute bucket table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from karkhana.config.factory import MachineRef
from karkhana.models import iso_utc, utc_now
from karkhana.storage.influx_schema import InfluxHttp
from services.api.deps import FactoryDep, ReaderDep, SettingsDep
from services.api.errors import unprocessable
from services.api.params import check_window, default_bucket_end, parse_instant, select_asset
from services.api.periods import period_groups
from services.api.schemas import BucketBy, ComponentsOut, GroupBy, KpisOut, LossesOut, OeeItem
from services.api.settings import ApiSettings
from services.catalog import LEVELS, Level
from services.kpi import OeeComponents, compute_machine, compute_ratios
from services.kpi.buckets import BucketResult, PeriodKind
from services.kpi.source import SampleSource
from services.kpi_store import kpi_lines
from services.rollup import roll_up

router = APIRouter(prefix="/kpi", tags=["kpi"])


def _item(
    asset: str,
    level: GroupBy,
    start: datetime,
    end: datetime,
    c: OeeComponents,
    machines: int,
    period: str | None = None,
) -> OeeItem:
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
        components=ComponentsOut.from_components(c),
        losses=LossesOut.from_components(c),
        oee_excluding_external=r.oee_excluding_external,
        teep=r.teep,
        utilization=r.utilization,
        kpis=KpisOut.from_components(c),
        flags=sorted(r.flags),
        machines=machines,
        period=period,
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
        str | None,
        Query(
            description="window end (exclusive), ISO 8601; default now (with 'bucket': the "
            "start of the current 15-minute bucket)"
        ),
    ] = None,
    group_by: Annotated[
        GroupBy, Query(description="one item per machine, line, area or site")
    ] = GroupBy.MACHINE,
    bucket: Annotated[
        BucketBy | None,
        Query(
            description="one item per group and local hour, shift, day or ISO week; 'from' "
            "and 'to' must then be on the 15-minute grid"
        ),
    ] = None,
) -> list[OeeItem]:
    """OEE and its components for every machine (or line, area, site) under ``asset`` over
    ``[from, to)``. A group's figures come from the sums of its machines' components."""
    start = parse_instant("from", from_)
    if to is not None:
        end = parse_instant("to", to)
    else:
        end = default_bucket_end() if bucket is not None else utc_now()
    check_window(start, end, settings.max_window_days)
    selection = select_asset(factory, asset)
    level = Level(group_by.value)
    if LEVELS.index(level) < LEVELS.index(selection.level):
        raise unprocessable(
            f"group_by={group_by.value} needs an asset at {level.value} level or above; "
            f"{asset!r} is a {selection.level.value}"
        )
    if bucket is not None:
        return _bucketed(settings, reader, selection.machines, start, end, bucket, group_by)
    parts = [
        (ref, compute_machine(reader, ref, start, end, settings.max_gap_s))
        for ref in selection.machines
    ]
    return [
        _item(g.asset, group_by, start, end, g.components, g.machines)
        for g in roll_up(parts, level)
    ]


def _bucketed(
    settings: ApiSettings,
    reader: SampleSource,
    refs: list[MachineRef],
    start: datetime,
    end: datetime,
    bucket: BucketBy,
    group_by: GroupBy,
) -> list[OeeItem]:
    # With InfluxDB, the buckets computed for this request are written to the measurement
    # ``kpi`` for Grafana.
    influx = InfluxHttp(settings.influx_target()) if settings.store == "influxdb" else None

    def to_influx(ref: MachineRef, results: Sequence[BucketResult]) -> None:
        if influx is not None and results:
            influx.write_v1("\n".join(kpi_lines(ref, results)).encode())

    try:
        report = period_groups(
            settings,
            reader,
            refs,
            start,
            end,
            PeriodKind(bucket.value),
            Level(group_by.value),
            to_influx,
        )
    finally:
        if influx is not None:
            influx.close()
    report.sort(key=lambda pg: (pg.group.asset, pg.period.start))
    return [
        _item(
            pg.group.asset,
            group_by,
            pg.period.start,
            pg.period.end,
            pg.group.components,
            pg.group.machines,
            pg.period.label,
        )
        for pg in report
    ]
