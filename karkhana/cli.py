"""``karkhana`` command line. Sub-commands live in their components and load lazily, so
``karkhana edge ...`` never imports the gateway or the API."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.metadata import version
from typing import Any

import typer
from typer.core import TyperGroup

from karkhana.errors import ConfigError, KarkhanaError

# name -> ("module:attribute" of a typer.Typer, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("karkhana.demo.cli:app", "Run the whole platform on the simulated factory."),
    "sim": ("devices.cli:app", "Run the simulated factory (OPC UA PLCs, MQTT sensors)."),
    "edge": ("edge.cli:app", "Edge agent: read PLCs and sensors, forward to the broker."),
    "gateway": ("gateway.cli:app", "Gateway: ingest edge messages into the store."),
    "api": ("services.cli:app", "KPI services and the HTTP API."),
    "config": ("karkhana.config.cli:app", "Validate configuration files."),
    "dashboards": ("services.dashboards_cli:app", "Push the Grafana dashboards to a Grafana."),
}


class LazyGroup(TyperGroup):
    """Resolves a sub-command only when it is invoked (or its own help is asked for)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(SUBCOMMANDS)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Listing sub-commands must not import them.
        rows = [(name, help_) for name, (_, help_) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        typer_app = getattr(importlib.import_module(module_name), attr)
        command = typer.main.get_command(typer_app)
        command.help = command.help or target[1]
        command.short_help = target[1]
        return command


app = typer.Typer(
    cls=LazyGroup,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: bool) -> None:
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("KARKHANA_LOG_LEVEL", "INFO").upper(), logging.INFO)
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    # Library chatter stays at WARNING unless asked for.
    for noisy in ("asyncua", "amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"karkhana {version('karkhana')}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging."),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """karkhana: factory data from PLC to OEE."""
    _setup_logging(verbose)


def main() -> None:
    try:
        app(prog_name="karkhana")
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KarkhanaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
