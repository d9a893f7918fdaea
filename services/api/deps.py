"""Request dependencies: settings, the factory config and a store reader per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from karkhana.config.factory import FactoryConfig
from services.api.settings import ApiSettings
from services.store import SqliteReader, open_reader


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_factory(request: Request) -> FactoryConfig:
    factory: FactoryConfig = request.app.state.factory
    return factory


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
FactoryDep = Annotated[FactoryConfig, Depends(get_factory)]


def get_reader(settings: SettingsDep) -> Iterator[SqliteReader]:
    # A plain generator: FastAPI runs it (and the sqlite work) in its thread pool.
    with open_reader(settings.db) as reader:
        yield reader


ReaderDep = Annotated[SqliteReader, Depends(get_reader)]
