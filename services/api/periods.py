"""KPI components per period for the routes that report by hour, shift, day or week."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from karkhana.config.factory import MachineRef
from services.api.errors import unprocessable
from services.api.settings import ApiSettings
from services.catalog import Level
from services.kpi.buckets import OffGrid, PeriodKind
from services.kpi.source import SampleSource
from services.kpi_store import BucketSink, KpiStore, SampleCounter, kpi_path
from services.rollup import PeriodGroup, period_report


def period_groups(
    settings: ApiSettings,
    reader: SampleSource,
    refs: Sequence[MachineRef],
    start: datetime,
    end: datetime,
    kind: PeriodKind,
    level: Level,
    sink: BucketSink | None = None,
) -> list[PeriodGroup]:
    """Components of every ``level`` group per ``kind`` period; HTTP 422 off the grid.

    The bucket table is kept beside a SQLite store. With InfluxDB there is no cheap way to
    count samples per bucket yet, so buckets are computed afresh in memory per request."""
    influx = settings.store == "influxdb"
    store = KpiStore.open(":memory:" if influx else kpi_path(settings.db))
    counter = SampleCounter(None if influx else settings.db)
    try:
        report, _ = period_report(
            store, counter, reader, refs, start, end, kind, level, settings.max_gap_s, sink
        )
    except OffGrid as exc:
        raise unprocessable(str(exc)) from exc
    finally:
        counter.close()
        store.close()
    return report
