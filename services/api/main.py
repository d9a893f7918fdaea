"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse

from karkhana.config.factory import load_factory
from karkhana.errors import StoreError
from services.api.auth import Role, TokenBuckets, require_role, unprotected_routes
from services.api.routes import andon, assets, deadletters, downtime, health, keys, kpi, reports
from services.api.settings import ApiSettings
from services.influx_reader import InfluxSource
from services.keys import KeyStore
from services.kpi_publisher import publishing

__all__ = ["ApiSettings", "create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for ``settings``; the factory config is loaded once at startup (a bad file
    raises ``karkhana.errors.ConfigError`` from the lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factory = load_factory(settings.factory)
        app.state.factory = factory
        app.state.keys = KeyStore(settings.keys_path)
        logger.info(
            "API serving %d machine(s) of %s from %s",
            len(factory.machines()),
            settings.factory,
            settings.store_location,
        )
        try:
            if settings.store != "influxdb":
                yield
                return
            # One pooled connection for the process; each request takes a reader from it.
            app.state.influx = InfluxSource(settings.influx_target())
            try:
                async with publishing(settings, factory):
                    yield
            finally:
                app.state.influx.close()
        finally:
            app.state.keys.close()

    app = FastAPI(
        title="karkhana",
        summary="OEE and machine data of the factory",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.rate_limits = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.include_router(health.router)  # open: liveness probes send no key

    # Every /api/ router names the lowest role that may use it; routes can ask for more
    # with their own require_role (e.g. operator for coding downtime reasons).
    def role(needed: Role) -> list[Any]:
        return [Depends(require_role(needed))]

    app.include_router(assets.router, prefix="/api/v1", dependencies=role(Role.VIEWER))
    app.include_router(kpi.router, prefix="/api/v1", dependencies=role(Role.VIEWER))
    # Reading downtime needs a viewer; coding a reason (PUT) asks for an operator itself.
    app.include_router(downtime.router, prefix="/api/v1", dependencies=role(Role.VIEWER))
    app.include_router(reports.router, prefix="/api/v1", dependencies=role(Role.MANAGER))
    app.include_router(deadletters.router, prefix="/api/v1", dependencies=role(Role.INTEGRATOR))
    app.include_router(keys.router, prefix="/api/v1", dependencies=role(Role.ADMIN))
    app.include_router(andon.router, prefix="/api/v1", dependencies=role(Role.VIEWER))
    # The andon page; its event stream takes the page's session cookie (docs/andon.md).
    app.include_router(andon.page_router)
    if open_routes := unprotected_routes(app):
        raise RuntimeError(
            f"API routes without a role: {', '.join(open_routes)}; include their router "
            "with dependencies=role(Role....)"
        )

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store error on %s: %s", request.url.path, exc)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": str(exc)}
        )

    return app
