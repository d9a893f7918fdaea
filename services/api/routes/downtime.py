"""Downtime events and their reasons: list, code (operators), Pareto by reason."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from karkhana.config.factory import FactoryConfig, ReasonCatalogue
from karkhana.models import MachineState, from_ns, iso_utc, to_ns, utc_now
from services.api.auth import OperatorDep
from services.api.deps import FactoryDep, ReaderDep, SettingsDep
from services.api.errors import not_found, unprocessable
from services.api.params import check_window, parse_instant, select_asset
from services.api.settings import ApiSettings
from services.catalog import AssetSelection
from services.downtime import (
    BadEventId,
    DowntimeEvent,
    find_event,
    machine_events,
    pareto,
    parse_event_id,
)
from services.kpi.source import SampleSource
from services.reasons_store import Coding, ReasonsStore, open_reasons

router = APIRouter(prefix="/downtime", tags=["downtime"])


def get_reasons_store(settings: SettingsDep) -> Iterator[ReasonsStore]:
    # A plain generator: FastAPI runs it (and the SQLite I/O) in its thread pool.
    with open_reasons(settings.reasons_path) as store:
        yield store


ReasonsDep = Annotated[ReasonsStore, Depends(get_reasons_store)]

AssetQuery = Annotated[
    str, Query(description="site, site/area, site/area/line or site/area/line/machine")
]
FromQuery = Annotated[str, Query(alias="from", description="window start, ISO 8601 with timezone")]
ToQuery = Annotated[str | None, Query(description="window end (exclusive), ISO 8601; default now")]
MinQuery = Annotated[
    float, Query(ge=0, description="only events lasting at least this many seconds")
]


class CodingOut(BaseModel):
    code: str
    name: str | None = Field(description="from the reason catalogue; null if no longer in it")
    category: str | None
    comment: str
    coded_by: str | None = Field(description="name of the API key that coded the event")
    coded_at: str = Field(description="when it was coded (ISO 8601, UTC)")


class DowntimeOut(BaseModel):
    id: str = Field(description="stable id: the same event keeps it across queries")
    asset: str
    start: str
    end: str | None = Field(description="null while the event is still open")
    open: bool
    short: bool = Field(description="shorter than the machine's short-stop threshold")
    state: MachineState = Field(description="the stop state the event spent most time in")
    state_s: dict[str, float] = Field(description="seconds of the event in each stop state")
    duration_s: float = Field(description="whole event; an open one up to the window end")
    planned_s: float = Field(description="planned production time inside the whole event")
    window_s: float = Field(description="part of the event inside [from, to)")
    window_planned_s: float = Field(description="planned time of the event inside [from, to)")
    reason: CodingOut | None = Field(description="the operator's coding; null if not coded")


class CodingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=64, description="a code of the catalogue")
    comment: str = Field(default="", max_length=2000)


class ParetoOut(BaseModel):
    reason: str | None = Field(description="reason code; null for events not coded")
    name: str | None
    category: str | None
    seconds: float = Field(description="downtime inside the window")
    planned_s: float = Field(description="planned production time lost inside the window")
    count: int = Field(description="events overlapping the window")


class ReasonOut(BaseModel):
    code: str
    name: str
    category: str


def _window(settings: ApiSettings, from_: str, to: str | None) -> tuple[datetime, datetime]:
    start = parse_instant("from", from_)
    end = parse_instant("to", to) if to is not None else utc_now()
    check_window(start, end, settings.max_window_days)
    return start, end


def _coded_events(
    factory: FactoryConfig,
    settings: ApiSettings,
    reader: SampleSource,
    reasons: ReasonsStore,
    asset: str,
    from_: str,
    to: str | None,
    min_s: float,
) -> tuple[list[DowntimeEvent], dict[str, Coding], ReasonCatalogue]:
    """The events ``GET /downtime`` lists, their codings, and the site's reason catalogue."""
    start, end = _window(settings, from_, to)
    selection = select_asset(factory, asset)
    events = _events(reader, selection, start, end, min_s)
    codings = reasons.get_many(ev.id for ev in events)
    return events, codings, factory.reasons_for(selection.machines[0].site)


def _events(
    reader: SampleSource, selection: AssetSelection, start: datetime, end: datetime, min_s: float
) -> list[DowntimeEvent]:
    start_ns, end_ns = to_ns(start), to_ns(end)
    events = [
        ev
        for ref in selection.machines
        for ev in machine_events(reader, ref, start_ns, end_ns)
        if ev.duration_s >= min_s
    ]
    events.sort(key=lambda ev: (ev.start_ns, ev.asset))
    return events


def _out(ev: DowntimeEvent, coding: Coding | None, catalogue: ReasonCatalogue) -> DowntimeOut:
    reason = None
    if coding is not None:
        known = catalogue.get(coding.reason)
        reason = CodingOut(
            code=coding.reason,
            name=known.name if known else None,
            category=known.category.value if known else None,
            comment=coding.comment,
            coded_by=coding.coded_by,
            coded_at=iso_utc(from_ns(coding.coded_ns)),
        )
    return DowntimeOut(
        id=ev.id,
        asset=ev.asset,
        start=iso_utc(from_ns(ev.start_ns)),
        end=None if ev.open else iso_utc(from_ns(ev.end_ns)),
        open=ev.open,
        short=ev.short,
        state=ev.state,
        state_s=dict(ev.state_s),
        duration_s=ev.duration_s,
        planned_s=ev.planned_s,
        window_s=ev.window_s,
        window_planned_s=ev.window_planned_s,
        reason=reason,
    )


@router.get("", response_model=list[DowntimeOut])
def list_downtime(
    factory: FactoryDep,
    settings: SettingsDep,
    reader: ReaderDep,
    reasons: ReasonsDep,
    asset: AssetQuery,
    from_: FromQuery,
    to: ToQuery = None,
    min_s: MinQuery = 0.0,
) -> list[DowntimeOut]:
    """Stop events of every machine under ``asset`` overlapping ``[from, to)``, oldest
    first, with the reason an operator coded (if any)."""
    events, codings, catalogue = _coded_events(
        factory, settings, reader, reasons, asset, from_, to, min_s
    )
    return [_out(ev, codings.get(ev.id), catalogue) for ev in events]


@router.get("/pareto", response_model=list[ParetoOut])
def downtime_pareto(
    factory: FactoryDep,
    settings: SettingsDep,
    reader: ReaderDep,
    reasons: ReasonsDep,
    asset: AssetQuery,
    from_: FromQuery,
    to: ToQuery = None,
    min_s: MinQuery = 0.0,
) -> list[ParetoOut]:
    """Downtime seconds and event counts per reason over the events ``GET /downtime``
    returns for the same parameters, biggest first; events not coded are one bucket."""
    events, codings, catalogue = _coded_events(
        factory, settings, reader, reasons, asset, from_, to, min_s
    )
    return [
        ParetoOut(
            reason=b.reason,
            name=b.name,
            category=b.category,
            seconds=b.seconds,
            planned_s=b.planned_s,
            count=b.count,
        )
        for b in pareto(events, codings, catalogue)
    ]


@router.get("/reasons", response_model=list[ReasonOut])
def reason_catalogue(
    factory: FactoryDep,
    site: Annotated[str, Query(description="site id, e.g. 'lahore'")],
) -> list[ReasonOut]:
    """The reasons operators of ``site`` may code (factory.yaml ``reasons``)."""
    found = next((s for s in factory.sites if s.id == site), None)
    if found is None:
        raise not_found(f"no site {site!r} in the factory")
    return [
        ReasonOut(code=code, name=r.name, category=r.category.value)
        for code, r in factory.reasons_for(found).items()
    ]


@router.put("/{event_id}", response_model=DowntimeOut)
def code_downtime(
    factory: FactoryDep,
    reader: ReaderDep,
    reasons: ReasonsDep,
    key: OperatorDep,
    event_id: str,
    body: CodingIn,
) -> DowntimeOut:
    """Code the stop event ``event_id`` with a reason of the catalogue and a comment
    (replacing an earlier coding). Needs the operator role."""
    try:
        asset, start_ns = parse_event_id(event_id)
    except BadEventId as exc:
        raise not_found(str(exc)) from exc
    try:
        ref = factory.machine(asset)
    except (KeyError, ValueError) as exc:
        raise not_found(f"no machine {asset!r} in the factory (event {event_id!r})") from exc
    now_ns = to_ns(utc_now())
    event = find_event(reader, ref, start_ns, now_ns)
    if event is None:
        raise not_found(
            f"no stop event of {asset} starts at {iso_utc(from_ns(start_ns))} (id {event_id!r})"
        )
    catalogue = factory.reasons_for(ref.site)
    if body.reason not in catalogue:
        known = ", ".join(sorted(catalogue)) or "none: add 'reasons' to factory.yaml"
        raise unprocessable(
            f"reason {body.reason!r} is not in the reason catalogue of site {ref.site.id!r} "
            f"(known: {known})"
        )
    coding = Coding(
        event_id=event.id,
        asset=event.asset,
        start_ns=event.start_ns,
        reason=body.reason,
        comment=body.comment,
        coded_by=key.name,
        coded_ns=now_ns,
    )
    reasons.put(coding)
    return _out(event, coding, catalogue)
