"""``karkhana`` command line. Sub-commands live in their components and load lazily, so
``karkhana edge ...`` never imports the gateway or the API."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click
import typer

from karkhana.errors import ConfigError, KarkhanaError

# name -> ("module:attribute" of a typer.Typer, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("karkhana.demo.cli:app", "Run the whole platform on the simulated factory."),
    "sim": ("devices.cli:app", "Run the simulated factory (OPC UA PLCs, MQTT sensors)."),
    "edge": ("edge.cli:app", "Edge agent: read PLCs and sensors, forward to the broker."),
    "gateway": ("gateway.cli:app", "Gateway: ingest edge messages into the store."),
    "api": ("services.cli:app", "KPI services and the HTTP API."),
    "config": ("karkhana.config.cli:app", "Validate configuration files."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing sub-commands must not import them.
        rows = [(name, help_) for name, (_, help_) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        typer_app = getattr(importlib.import_module(module_name), attr)
        command = typer.main.get_command(typer_app)
        command.help = command.help or target[1]
        command.short_help = target[1]
        return command


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(
        logging, os.environ.get("KARKHANA_LOG_LEVEL", "INFO").upper(), logging.INFO
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    # Library chatter stays at WARNING unless asked for.
    for noisy in ("asyncua", "amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="karkhana")
def root(verbose: bool) -> None:
    """karkhana: factory data from PLC to OEE."""
    _setup_logging(verbose)


def main() -> None:
    try:
        root.main(prog_name="karkhana")
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KarkhanaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
