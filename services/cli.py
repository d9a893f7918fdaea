"""``karkhana api``: serve the KPI HTTP API and manage its keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Generator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from karkhana.config.factory import load_factory
from karkhana.errors import KarkhanaError
from services.api.main import create_app
from services.api.settings import ApiSettings, load_settings
from services.keys import InvalidKeyRequest, KeyStore, Role

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
app.add_typer(keys_app, name="keys")


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


KeysDbOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-db",
        help="API keys file (env KARKHANA_API_KEYS_DB; default keys.sqlite next to the store).",
    ),
]
StoreDbOption = Annotated[
    Path | None, typer.Option("--db", help="SQLite store the keys file sits next to.")
]


def _keys_path(keys_db: Path | None, db: Path | None) -> Path:
    """The same file the API uses for the same options and environment."""
    if keys_db is not None:
        return keys_db
    if env := os.environ.get("KARKHANA_API_KEYS_DB"):
        return Path(env)
    default_db: Path = ApiSettings.model_fields["db"].default
    store = db or Path(os.environ.get("KARKHANA_API_DB", str(default_db)))
    return store.parent / "keys.sqlite"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("create")
def keys_create(
    role: Annotated[
        Role, typer.Option("--role", case_sensitive=False, help="What the key may do.")
    ],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")],
    keys_db: KeysDbOption = None,
    db: StoreDbOption = None,
) -> None:
    """Create a key; prints its secret once on stdout (it is stored only hashed)."""
    path = _keys_path(keys_db, db)
    try:
        with KeyStore(path) as store:
            key, secret = store.create(name, role)
    except InvalidKeyRequest as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"created key {key.id} '{key.name}' ({key.role.value}) in {path}; "
        "copy the secret now, it is not shown again:",
        err=True,
    )
    typer.echo(secret)


@keys_app.command("list")
def keys_list(keys_db: KeysDbOption = None, db: StoreDbOption = None) -> None:
    """List keys (never their secrets)."""
    with KeyStore(_keys_path(keys_db, db)) as store:
        keys = store.list()
    typer.echo(
        f"{'id':<12}  {'role':<10}  {'created':<20}  {'last used':<20}  {'revoked':<20}  name"
    )
    for key in keys:
        typer.echo(
            f"{key.id:<12}  {key.role.value:<10}  {_when(key.created):<20}  "
            f"{_when(key.last_used):<20}  {_when(key.revoked):<20}  {key.name}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see 'keys list').")],
    keys_db: KeysDbOption = None,
    db: StoreDbOption = None,
) -> None:
    """Revoke a key: the API refuses it from its next request on."""
    try:
        with KeyStore(_keys_path(keys_db, db)) as store:
            key = store.revoke(key_id)
    except InvalidKeyRequest as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"revoked key {key.id} '{key.name}' ({key.role.value})")
