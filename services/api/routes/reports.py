"""``GET /api/v1/reports/oee``: the OEE report of a shift or day as JSON, CSV or PDF.

Built from the same functions the KPI and downtime routes answer with: machine components
over the window (``compute_machine``), bucket sums (``period_report``) and the downtime
Pareto, so the report's numbers equal those routes' for the same window."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from karkhana.models import iso_utc, to_ns
from services.api.deps import FactoryDep, ReaderDep, SettingsDep
from services.api.errors import unprocessable
from services.api.params import parse_instant, select_asset
from services.api.periods import period_groups
from services.api.schemas import BucketBy
from services.api.settings import ApiSettings
from services.catalog import AssetSelection
from services.downtime import machine_events, pareto
from services.kpi import compute_machine
from services.kpi.buckets import OffGrid, PeriodKind, periods
from services.kpi.source import SampleSource
from services.reasons_store import open_reasons
from services.reports import OeeReport, build_report, render_pdf, report_csv
from services.reports.model import TrendInput

router = APIRouter(prefix="/reports", tags=["reports"])

# A report covers a shift, a day or up to a month; longer windows belong to the KPI API.
MAX_REPORT_DAYS = 31
# The trend chart and table stay readable on A4 pages up to this many buckets.
MAX_TREND_POINTS = 96


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PDF = "pdf"


def _window(from_: str, to: str) -> tuple[datetime, datetime]:
    start, end = parse_instant("from", from_), parse_instant("to", to)
    if start >= end:
        raise unprocessable(f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})")
    if end - start > timedelta(days=MAX_REPORT_DAYS):
        raise unprocessable(
            f"a report covers at most {MAX_REPORT_DAYS} days; the window from "
            f"{start.isoformat()} to {end.isoformat()} is longer (use /api/v1/kpi/oee)"
        )
    return start, end


def _trend(
    settings: ApiSettings,
    reader: SampleSource,
    selection: AssetSelection,
    start: datetime,
    end: datetime,
    kind: PeriodKind,
) -> list[TrendInput]:
    site = selection.machines[0].site
    try:
        count = len(periods(site, start, end, kind))
    except OffGrid as exc:
        raise unprocessable(str(exc)) from exc
    if count > MAX_TREND_POINTS:
        raise unprocessable(
            f"bucket={kind.value} gives {count} trend points; a report shows at most "
            f"{MAX_TREND_POINTS}: choose a longer bucket or a shorter window"
        )
    # /kpi/oee is the route that writes buckets back to InfluxDB; a report only reads them.
    report = period_groups(settings, reader, selection.machines, start, end, kind, selection.level)
    report.sort(key=lambda pg: pg.period.start)
    return [
        TrendInput(
            pg.period.label, iso_utc(pg.period.start), iso_utc(pg.period.end), pg.group.components
        )
        for pg in report
    ]


@router.get(
    "/oee",
    response_model=OeeReport,
    responses={
        200: {
            "content": {"text/csv": {}, "application/pdf": {}},
            "description": "the report as JSON, CSV (long form) or an A4 PDF",
        }
    },
)
def oee_report(
    factory: FactoryDep,
    settings: SettingsDep,
    reader: ReaderDep,
    asset: Annotated[
        str, Query(description="site, site/area, site/area/line or site/area/line/machine")
    ],
    from_: Annotated[str, Query(alias="from", description="window start, ISO 8601 with timezone")],
    to: Annotated[str, Query(description="window end (exclusive), ISO 8601 with timezone")],
    bucket: Annotated[
        BucketBy, Query(description="trend granularity; 'from' and 'to' on the 15-minute grid")
    ] = BucketBy.HOUR,
    format: Annotated[ReportFormat, Query(description="json, csv or pdf")] = ReportFormat.JSON,
) -> OeeReport | Response:
    """OEE report of ``asset`` over ``[from, to)`` (a shift or a day; at most 31 days):
    summary, OEE trend per ``bucket``, loss waterfall, downtime Pareto by reason and a
    per-machine table. Needs the manager role."""
    start, end = _window(from_, to)
    selection = select_asset(factory, asset)
    refs = selection.machines
    trend = _trend(settings, reader, selection, start, end, PeriodKind(bucket.value))
    machines = [
        (ref.path, compute_machine(reader, ref, start, end, settings.max_gap_s)) for ref in refs
    ]
    lo, hi = to_ns(start), to_ns(end)
    events = [ev for ref in refs for ev in machine_events(reader, ref, lo, hi)]
    with open_reasons(settings.reasons_path) as reasons:
        codings = reasons.get_many(ev.id for ev in events)
    report = build_report(
        asset=selection.path,
        level=selection.level.value,
        start=iso_utc(start),
        end=iso_utc(end),
        timezone=refs[0].site.timezone,
        bucket=bucket.value,
        machines=machines,
        trend=trend,
        pareto=pareto(events, codings, factory.reasons_for(refs[0].site)),
    )
    name = f"oee-{selection.path.replace('/', '_')}-{start:%Y%m%dT%H%M}"
    if format is ReportFormat.CSV:
        return Response(
            report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if format is ReportFormat.PDF:
        return Response(
            render_pdf(report),
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'},
        )
    return report
