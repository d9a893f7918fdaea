"""``karkhana config check``: validate a factory.yaml without starting anything."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Validate configuration files."""


@app.command("check")
def check(
    factory: Path = typer.Option(..., "-c", "--config", help="factory.yaml to validate."),
) -> None:
    """Validate a factory.yaml; prints a summary, exit code 2 on any problem."""
    from karkhana.config.factory import load_factory

    cfg = load_factory(factory)
    machines = cfg.machines()
    typer.echo(f"{factory}: ok ({len(cfg.sites)} site(s), {len(machines)} machine(s))")
