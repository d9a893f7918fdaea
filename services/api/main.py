"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from karkhana.config.factory import load_factory
from karkhana.errors import StoreError
from services.api.routes import assets, deadletters, health, kpi
from services.api.settings import ApiSettings
from services.influx_reader import InfluxSource

__all__ = ["ApiSettings", "create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for ``settings``; the factory config is loaded once at startup (a bad file
    raises ``karkhana.errors.ConfigError`` from the lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factory = load_factory(settings.factory)
        app.state.factory = factory
        logger.info(
            "API serving %d machine(s) of %s from %s",
            len(factory.machines()),
            settings.factory,
            settings.store_location,
        )
        if settings.store != "influxdb":
            yield
            return
        # One pooled connection for the process; each request takes a reader from it.
        app.state.influx = InfluxSource(settings.influx_target())
        try:
            yield
        finally:
            app.state.influx.close()

    app = FastAPI(
        title="karkhana",
        summary="OEE and machine data of the factory",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(assets.router, prefix="/api/v1")
    app.include_router(kpi.router, prefix="/api/v1")
    app.include_router(deadletters.router, prefix="/api/v1")

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store error on %s: %s", request.url.path, exc)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": str(exc)}
        )

    return app
