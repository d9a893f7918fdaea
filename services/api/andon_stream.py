"""The andon's live feed: one polling task per API process serves every open stream.

While at least one stream is open, the task reads the machines' latest states every
``poll_s`` (0.5 s) and the current shift's KPIs every ``kpi_every_s`` (20 s, and at once
when a shift begins). Streams get server-sent events: a full ``snapshot`` first (and after
each KPI pass), then one ``state`` event per machine whose state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

from starlette.datastructures import State

from karkhana.config.factory import FactoryConfig
from karkhana.errors import KarkhanaError
from karkhana.models import iso_utc, utc_now
from services.andon import (
    MachineLive,
    ShiftKpis,
    current_shift,
    data_now,
    live_changes,
    read_live,
    shift_kpis,
)
from services.andon import snapshot as build_snapshot
from services.api.deps import StoreReader
from services.api.settings import ApiSettings
from services.store import open_reader

log = logging.getLogger(__name__)

POLL_S = 0.5
KPI_EVERY_S = 20.0
KEEPALIVE_S = 15.0
_QUEUE_MAX = 256
_RESYNC = None  # queued when a slow stream fell behind: it gets a fresh snapshot


def frame(event: str, data: dict[str, Any]) -> str:
    """One server-sent event (compact JSON has no newlines, so one ``data:`` line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@contextmanager
def open_store(state: State) -> Iterator[StoreReader]:
    """A reader of the app's store, as ``deps.get_reader`` gives one to a request."""
    settings: ApiSettings = state.settings
    if settings.store == "influxdb":
        yield state.influx.reader()
        return
    with open_reader(settings.db) as reader:
        yield reader


def current_snapshot(state: State) -> dict[str, Any]:
    """The andon snapshot computed now (for ``GET /api/v1/andon``)."""
    settings: ApiSettings = state.settings
    factory: FactoryConfig = state.factory
    with open_store(state) as reader:
        live = read_live(reader, factory.machines())
        now = data_now(live, utc_now(), settings.andon_clock)
        kpis = shift_kpis(reader, factory, now, settings.max_gap_s)
    return build_snapshot(factory, live, kpis, now, settings.max_gap_s)


class AndonHub:
    """Shares one polling task between all open streams of an app."""

    def __init__(self, state: State, poll_s: float = POLL_S, kpi_every_s: float = KPI_EVERY_S):
        self.state = state
        self.poll_s = poll_s
        self.kpi_every_s = kpi_every_s
        self._queues: set[asyncio.Queue[str | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._live: dict[str, MachineLive] = {}
        self._kpis: ShiftKpis | None = None
        self._now = utc_now()
        self._ready = False

    @property
    def _factory(self) -> FactoryConfig:
        factory: FactoryConfig = self.state.factory
        return factory

    @property
    def _clock(self) -> str:
        settings: ApiSettings = self.state.settings
        return settings.andon_clock

    @property
    def _max_gap_s(self) -> float:
        settings: ApiSettings = self.state.settings
        return settings.max_gap_s

    def snapshot_frame(self) -> str:
        body = build_snapshot(self._factory, self._live, self._kpis, self._now, self._max_gap_s)
        return frame("snapshot", body)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str | None]]:
        """A queue of event frames; the first is a full snapshot."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=_QUEUE_MAX)
        if self._ready:
            queue.put_nowait(self.snapshot_frame())
        self._queues.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="andon-poll")
        try:
            yield queue
        finally:
            self._queues.discard(queue)
            if not self._queues and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _broadcast(self, text: str) -> None:
        for queue in self._queues:
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(_RESYNC)

    def _read(self, with_kpis: bool) -> tuple[dict[str, MachineLive], ShiftKpis | None]:
        with open_store(self.state) as reader:
            live = read_live(reader, self._factory.machines())
            if not with_kpis:
                return live, None
            now = data_now(live, utc_now(), self._clock)
            return live, shift_kpis(reader, self._factory, now, self._max_gap_s)

    def _shift_changed(self, now: datetime) -> bool:
        """Whether a site's current shift is another than the one the KPIs are of."""
        if self._kpis is None:
            return True
        for site in self._factory.sites:
            shift = current_shift(site, now)
            known = self._kpis.shifts.get(site.id)
            if (shift and shift.start) != (known and known.start):
                return True
        return False

    async def _run(self) -> None:
        next_kpis = 0.0
        while True:
            try:
                wall = utc_now()
                live, _ = await asyncio.to_thread(self._read, False)
                now = data_now(live, wall, self._clock)
                if time.monotonic() >= next_kpis or self._shift_changed(now):
                    live, kpis = await asyncio.to_thread(self._read, True)
                    self._live, self._kpis = live, kpis
                    self._now = kpis.now if kpis else now
                    self._ready = True
                    self._broadcast(self.snapshot_frame())
                    next_kpis = time.monotonic() + self.kpi_every_s
                else:
                    changes = live_changes(self._live, live, self._now, now, self._max_gap_s)
                    self._live, self._now = live, now
                    for change in changes:
                        self._broadcast(frame("state", {**change, "now": iso_utc(now)}))
            except KarkhanaError as exc:  # the store is unreachable: say so, keep trying
                log.warning("andon: reading the store failed: %s", exc)
                self._broadcast(frame("problem", {"detail": str(exc)}))
            await asyncio.sleep(self.poll_s)


def hub_of(state: State) -> AndonHub:
    """The app's hub (created on first use)."""
    hub: AndonHub | None = getattr(state, "andon_hub", None)
    if hub is None:
        hub = AndonHub(state)
        state.andon_hub = hub
    return hub


async def event_stream(
    hub: AndonHub, still_allowed: Callable[[], bool], keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[str]:
    """Server-sent events for one client until it goes away (or its key is revoked)."""
    async with hub.subscribe() as queue:
        yield "retry: 2000\n\n"  # how long a browser waits before reconnecting
        next_check = time.monotonic() + keepalive_s
        while True:
            item: str | None = ": keep-alive\n\n"
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, next_check - time.monotonic())
                item = await asyncio.wait_for(queue.get(), timeout=wait)
            if time.monotonic() >= next_check:
                # An open stream must not outlive its key.
                if not await asyncio.to_thread(still_allowed):
                    yield frame("end", {"detail": "the key was revoked"})
                    return
                next_check = time.monotonic() + keepalive_s
            yield hub.snapshot_frame() if item is _RESYNC else item
