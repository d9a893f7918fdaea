"""``karkhana api``: serve the KPI HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from karkhana.config.factory import load_factory
from karkhana.errors import KarkhanaError
from services.api.main import create_app
from services.api.settings import ApiSettings, load_settings

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)


class _Server(uvicorn.Server):
    """uvicorn in the caller's event loop: leaves signal handling to the caller, reports
    when it is listening, and turns uvicorn's startup exits into exceptions."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event | None) -> None:
        super().__init__(config)
        self._started_event = started

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit as exc:
            raise KarkhanaError(
                f"the HTTP API could not start on {self.config.host}:{self.config.port} "
                "(see the log above)"
            ) from exc
        if self.started and self._started_event is not None:
            self._started_event.set()


async def serve(settings: ApiSettings, started: asyncio.Event | None = None) -> None:
    """Run the API in the current event loop until cancelled; ``started`` is set once it
    listens. A bad factory.yaml raises ConfigError before anything starts."""
    load_factory(settings.factory)  # fail early with a one-line ConfigError
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, started)
    task = asyncio.create_task(server.serve(), name="karkhana-api")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise


@app.callback()
def _group() -> None:
    """KPI services and the HTTP API."""


@app.command("run")
def run(
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="factory.yaml (env KARKHANA_API_FACTORY)."),
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="SQLite store (env KARKHANA_API_DB).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (default 8000).")] = None,
) -> None:
    """Serve the HTTP API (OEE per machine and line, asset tree, health)."""
    overrides = {
        k: v
        for k, v in {"factory": config, "db": db, "host": host, "port": port}.items()
        if v is not None
    }
    settings = load_settings(**overrides)
    try:
        asyncio.run(_serve_until_signalled(settings))
    except KeyboardInterrupt:
        logger.info("API stopped")


async def _serve_until_signalled(settings: ApiSettings) -> None:
    """``serve`` until SIGTERM (a service manager stopping us) or Ctrl-C; both are a clean
    stop with exit code 0."""
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await serve(settings)
    except asyncio.CancelledError:
        logger.info("API stopped")
