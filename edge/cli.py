"""``karkhana edge run -c edge.yaml``: run the edge agent until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edge.config import EdgeConfig
    from edge.settings import EdgeSettings

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Edge agent: read PLCs and sensors, forward to the broker."""


@app.command("run")
def run(
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="edge.yaml to run (default: KARKHANA_EDGE_CONFIG)."),
    ] = None,
) -> None:
    """Read the configured sources and forward their samples until stopped (Ctrl-C)."""
    from edge.config import load_edge_config
    from edge.settings import EdgeSettings

    settings = EdgeSettings()
    path = config or settings.config
    if path is None:
        raise typer.BadParameter("give -c/--config PATH or set KARKHANA_EDGE_CONFIG")
    edge_config = load_edge_config(path)
    asyncio.run(_run(edge_config, settings))


async def _run(config: EdgeConfig, settings: EdgeSettings) -> None:
    from edge.agent import EdgeAgent

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with EdgeAgent(config, shutdown_timeout_s=settings.shutdown_timeout_s) as agent:
            runner = asyncio.create_task(agent.run())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (runner, stopper):
                task.cancel()
            await asyncio.gather(runner, stopper, return_exceptions=True)
            if runner in done:
                runner.result()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
