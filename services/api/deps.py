"""Request dependencies: settings, the factory config and a store reader per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Protocol

from fastapi import Depends, Request

from karkhana.config.factory import FactoryConfig
from services.api.settings import ApiSettings
from services.influx_reader import InfluxSource
from services.kpi.source import SampleSource
from services.store import StoredDeadLetter, open_reader


class StoreReader(SampleSource, Protocol):
    """What the routes need from a store reader (SQLite or InfluxDB)."""

    @property
    def exists(self) -> bool: ...

    def sample_count(self) -> int: ...

    def dead_letters(self, limit: int, before_id: int | None = None) -> list[StoredDeadLetter]: ...

    def dead_letter_count(self) -> int: ...


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_factory(request: Request) -> FactoryConfig:
    factory: FactoryConfig = request.app.state.factory
    return factory


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
FactoryDep = Annotated[FactoryConfig, Depends(get_factory)]


def get_reader(request: Request, settings: SettingsDep) -> Iterator[StoreReader]:
    # A plain generator: FastAPI runs it (and the store I/O) in its thread pool.
    if settings.store == "influxdb":
        source: InfluxSource = request.app.state.influx
        yield source.reader()
        return
    with open_reader(settings.db) as reader:
        yield reader


ReaderDep = Annotated[StoreReader, Depends(get_reader)]
