"""Keeps the InfluxDB series Grafana reads current, without anyone asking the API.

Every ``kpi_publish_s`` seconds (API setting; 0 disables) the publisher, a background task of
the API service on an InfluxDB store:

- brings the 15-minute KPI buckets of every machine over the publishing window (from the
  site's previous local midnight to the start of the current bucket) up to date with the
  bucket machinery of ``services.kpi_store`` (missing, open and late-data buckets are
  recomputed; everything else is left alone) and writes the recomputed ones to ``kpi``;
- rewrites the stop events (``downtime``) of a machine from its first recomputed bucket on;
- writes each new state sample of a machine as its canonical state (``machine_state``), so a
  state timeline shows ``running``/``fault`` whatever codes the PLC uses.

Schemas: ``docs/storage.md``. Samples per bucket are counted with InfluxQL
(``GROUP BY time(15m)``), which is what the late-data check needs; the bucket table itself is
kept in memory and rebuilt when the window moves to a new day (all buckets of the window are
then written once more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from karkhana.config.factory import FactoryConfig, MachineRef
from karkhana.errors import StoreError
from karkhana.models import to_ns, utc_now
from karkhana.storage.influx_schema import (
    SAMPLES,
    DatabaseNotFound,
    InfluxHttp,
    InfluxTarget,
    escape_tag,
    field_string,
    ql_string,
)
from karkhana.storage.sqlite_chunks import counts_fingerprint
from services.downtime import DowntimeEvent, machine_events
from services.influx_reader import InfluxSource
from services.kpi.buckets import BUCKET_NS, BucketResult, floor_bucket
from services.kpi.source import SampleSource
from services.kpi.timeline import canonical_state
from services.kpi_store import KpiStore, SampleCounter, kpi_lines, refresh
from services.reasons_store import Coding, ReasonsStore

if TYPE_CHECKING:  # the API imports this module
    from services.api.settings import ApiSettings

logger = logging.getLogger(__name__)

DOWNTIME = "downtime"
MACHINE_STATE = "machine_state"
UNKNOWN_STATE = "unknown"
LINES_PER_WRITE = 5000
_BUCKET = f"{BUCKET_NS // 1_000_000_000}s"


class InfluxSampleCounter(SampleCounter):
    """Samples per machine and bucket, counted by InfluxDB (``count(quality)``)."""

    def __init__(self, http: InfluxHttp) -> None:
        super().__init__(None)
        self._http = http

    def counts(self, asset: str, start_ns: int, end_ns: int) -> dict[int, int]:
        if start_ns >= end_ns:
            return {}
        q = (
            f"SELECT count(quality) FROM {SAMPLES} WHERE asset = {ql_string(asset)} "
            f"AND time >= {start_ns} AND time < {end_ns} GROUP BY time({_BUCKET}) fill(none)"
        )
        try:
            series = self._http.query(q)
        except DatabaseNotFound:
            return {}
        out: dict[int, int] = {}
        for s in series:
            for row in s.rows():
                out[int(row["time"])] = int(row.get("count") or 0)
        return out

    def fingerprint(self, asset: str, start_ns: int, end_ns: int) -> tuple[int, int]:
        # Samples are only ever added (or rewritten in place), so the counts per bucket,
        # weighted by the bucket's position, change whenever the data does.
        return counts_fingerprint(self.counts(asset, start_ns, end_ns))


def asset_tags(path: str) -> str:
    """``asset=...,site=...,area=...,line=...,machine=...`` of a machine path."""
    site, area, line, machine = path.split("/")
    pairs = (("asset", path), ("site", site), ("area", area), ("line", line), ("machine", machine))
    return ",".join(f"{k}={escape_tag(v)}" for k, v in pairs)


def downtime_line(event: DowntimeEvent, coding: Coding | None) -> str:
    """One point of ``downtime`` at the event's start (its stable key with the tags)."""
    fields = [
        f"duration_s={event.duration_s!r}",
        f"planned_s={event.planned_s!r}",
        f"state={field_string(event.state.value)}",
        f"reason={field_string(coding.reason if coding else '')}",
        f"short={'true' if event.short else 'false'}",
        f"open={'true' if event.open else 'false'}",
        f"event_id={field_string(event.id)}",
    ]
    return f"{DOWNTIME},{asset_tags(event.asset)} {','.join(fields)} {event.start_ns}"


def window_start(ref: MachineRef, now: datetime) -> int:
    """Start of the publishing window: local midnight of the day before ``now`` at the site."""
    tz = ZoneInfo(ref.site.timezone)
    day = now.astimezone(tz).date() - timedelta(days=1)
    return floor_bucket(to_ns(datetime.combine(day, time(0), tzinfo=tz)))


@dataclass(slots=True)
class PublishReport:
    """What one round wrote."""

    buckets: int = 0
    downtime_events: int = 0
    states: int = 0
    late: int = 0

    @property
    def points(self) -> int:
        return self.buckets + self.downtime_events + self.states


class KpiPublisher:
    """One publishing round per :meth:`publish_once` (blocking); :meth:`run` repeats it."""

    def __init__(
        self,
        target: InfluxTarget,
        factory: FactoryConfig,
        *,
        max_gap_s: float,
        reasons_path: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._refs = factory.machines()
        self._max_gap_s = max_gap_s
        self._reasons_path = reasons_path
        self._clock = clock
        self._source = InfluxSource(target)
        self._http = InfluxHttp(target)
        self._counter = InfluxSampleCounter(self._http)
        self._store = KpiStore.open(":memory:")
        self._window: dict[str, int] = {}
        self._state_from: dict[str, int] = {}

    def close(self) -> None:
        self._store.close()
        self._http.close()
        self._source.close()

    async def run(self, interval_s: float) -> None:
        """Publish every ``interval_s`` until cancelled; a failed round is logged and the
        next one tries again (the buckets it missed stay due)."""
        while True:
            try:
                report = await self._round()
                if report.points:
                    logger.info(
                        "published %d KPI bucket(s) (%d after late data), %d downtime "
                        "event(s), %d state(s)",
                        report.buckets,
                        report.late,
                        report.downtime_events,
                        report.states,
                    )
            except StoreError as exc:
                logger.warning("KPI publishing failed, retrying in %gs: %s", interval_s, exc)
            except Exception:
                logger.exception("KPI publishing failed, retrying in %gs", interval_s)
            await asyncio.sleep(interval_s)

    async def _round(self) -> PublishReport:
        """One round in a worker thread; when cancelled, the round in progress finishes
        first, so that :meth:`close` never pulls the connections from under it."""
        running = asyncio.ensure_future(asyncio.to_thread(self.publish_once))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await running
            raise

    def publish_once(self) -> PublishReport:
        now = self._clock()
        now_ns = to_ns(now)
        end_ns = floor_bucket(now_ns)
        reader = self._source.reader()
        report = PublishReport()
        self._roll_day(now)
        recomputed: dict[str, list[BucketResult]] = {}

        def collect(ref: MachineRef, results: Sequence[BucketResult]) -> None:
            recomputed.setdefault(ref.path, []).extend(results)

        for start_ns, refs in self._by_window().items():
            # A machine without a sample in the window has nothing to publish yet (its
            # buckets would only say "planned, no data").
            live = [r for r in refs if self._counter.fingerprint(r.path, start_ns, now_ns)[0]]
            if live and start_ns < end_ns:
                stats = refresh(
                    self._store,
                    self._counter,
                    reader,
                    live,
                    start_ns,
                    end_ns,
                    self._max_gap_s,
                    collect,
                )
                report.late += stats.late
        lines: list[str] = []
        for ref in self._refs:
            results = recomputed.get(ref.path, [])
            lines += kpi_lines(ref, results)
            report.buckets += len(results)
            changed_from = min((r.start_ns for r in results), default=None)
            if changed_from is not None:
                events = machine_events(reader, ref, changed_from, now_ns)
                lines += self._downtime_lines(events)
                report.downtime_events += len(events)
            states = self._state_lines(reader, ref, changed_from, now_ns)
            lines += states
            report.states += len(states)
        for i in range(0, len(lines), LINES_PER_WRITE):
            self._http.write_v1("\n".join(lines[i : i + LINES_PER_WRITE]).encode())
        return report

    def _by_window(self) -> dict[int, list[MachineRef]]:
        groups: dict[int, list[MachineRef]] = {}
        for ref in self._refs:
            groups.setdefault(self._window[ref.path], []).append(ref)
        return groups

    def _roll_day(self, now: datetime) -> None:
        """On a new local day the window moves: start a fresh bucket table so that it holds
        only the window's buckets (they are all recomputed and written once more)."""
        window = {ref.path: window_start(ref, now) for ref in self._refs}
        if self._window and window != self._window:
            self._store.close()
            self._store = KpiStore.open(":memory:")
        self._window = window

    def _downtime_lines(self, events: Sequence[DowntimeEvent]) -> list[str]:
        codings = self._codings([e.id for e in events]) if events else {}
        return [downtime_line(e, codings.get(e.id)) for e in events]

    def _codings(self, ids: list[str]) -> dict[str, Coding]:
        """Operators' reason codings, when the API's reasons file exists."""
        if self._reasons_path is None or not self._reasons_path.exists():
            return {}
        store = ReasonsStore.open(self._reasons_path)
        try:
            return store.get_many(ids)
        finally:
            store.close()

    def _state_lines(
        self, reader: SampleSource, ref: MachineRef, changed_from: int | None, now_ns: int
    ) -> list[str]:
        """Canonical states of the state samples not written yet (and again from
        ``changed_from`` on, where late data arrived)."""
        start = self._state_from.get(ref.path, self._window[ref.path])
        if changed_from is not None:
            start = min(start, changed_from)
        points = reader.points(ref.path, ref.machine.signals.state, start, now_ns + 1)
        if not points:
            return []
        tags = asset_tags(ref.path)
        out = []
        for p in points:
            state = canonical_state(p, ref.state_map)
            value = state.value if state is not None else UNKNOWN_STATE
            out.append(
                f"{MACHINE_STATE},{tags} state={field_string(value)},"
                f"code={field_string(str(p.value))} {p.ts_ns}"
            )
        self._state_from[ref.path] = points[-1].ts_ns + 1
        return out


@asynccontextmanager
async def publishing(settings: ApiSettings, factory: FactoryConfig) -> AsyncIterator[None]:
    """The KPI publisher as a background task while the API runs (InfluxDB store only)."""
    if settings.kpi_publish_s <= 0:
        yield
        return
    publisher = KpiPublisher(
        settings.influx_target(),
        factory,
        max_gap_s=settings.max_gap_s,
        reasons_path=settings.reasons_path,
    )
    task = asyncio.create_task(publisher.run(settings.kpi_publish_s), name="kpi-publisher")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        publisher.close()
