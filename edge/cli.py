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


@app.command("check")
def check(
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="edge.yaml to check (default: KARKHANA_EDGE_CONFIG)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds allowed per connection.")
    ] = 10.0,
) -> None:
    """Validate the config and try every connection once (exit 1 if any fails)."""
    from rich.console import Console
    from rich.table import Table

    from edge.check import check_connections
    from edge.config import load_edge_config
    from edge.settings import EdgeSettings

    path = config or EdgeSettings().config
    if path is None:
        raise typer.BadParameter("give -c/--config PATH or set KARKHANA_EDGE_CONFIG")
    edge_config = load_edge_config(path)
    results = asyncio.run(check_connections(edge_config, timeout))
    table = Table(title=f"edge agent {edge_config.agent_id}: {path}")
    for column in ("name", "type", "target", "status", "detail"):
        table.add_column(column)
    for r in results:
        status = "[green]ok[/green]" if r.ok else "[red]error[/red]"
        table.add_row(r.name, r.kind, r.target, status, r.detail)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured: do not wrap at 80 columns
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command("browse")
def browse(
    endpoint: Annotated[str, typer.Argument(help="opc.tcp://host:port[/path] of the server.")],
    depth: Annotated[int, typer.Option("--depth", min=1, help="Levels below Objects.")] = 3,
    text_filter: Annotated[
        str | None, typer.Option("--filter", help="Only variables whose name or id contains this.")
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", help="None, Basic256Sha256 or Aes128_Sha256_RsaOaep.")
    ] = "None",
    mode: Annotated[str, typer.Option("--mode", help="None, Sign or SignAndEncrypt.")] = "None",
    certificate: Annotated[
        Path | None, typer.Option("--certificate", help="Client certificate (DER/PEM).")
    ] = None,
    private_key: Annotated[
        Path | None, typer.Option("--private-key", help="Client private key (PEM/DER).")
    ] = None,
    trust_dir: Annotated[
        Path | None, typer.Option("--trust-dir", help="Directory of trusted server certificates.")
    ] = None,
    trust_on_first_use: Annotated[
        bool, typer.Option("--trust-on-first-use", help="Save an unknown server certificate.")
    ] = False,
    username: Annotated[str | None, typer.Option("--username", help="User name.")] = None,
    password_file: Annotated[
        Path | None, typer.Option("--password-file", help="File holding the password.")
    ] = None,
    write_config: Annotated[
        Path | None,
        typer.Option("--write-config", help="Add a source for the variables shown to this file."),
    ] = None,
    asset: Annotated[
        str | None, typer.Option("--asset", help="site/area/line/machine of those variables.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Name of the written source.")] = "plc",
    agent_id: Annotated[
        str, typer.Option("--agent-id", help="agent_id of a newly created edge.yaml.")
    ] = "edge-1",
    broker: Annotated[
        str, typer.Option("--broker", help="Uplink broker of a newly created edge.yaml.")
    ] = "mqtt://127.0.0.1:1883",
) -> None:
    """Print a server's address space as a tree; optionally write an edge.yaml source."""
    from rich.console import Console

    from edge.browse import browse_server, render_tree, source_entry
    from edge.browse import write_config as add_source
    from edge.config import OpcUaAuth, OpcUaSecurity
    from karkhana.config.loading import parse_model

    if write_config is not None and asset is None:
        raise typer.BadParameter("--write-config needs --asset site/area/line/machine")

    def absolute(path: Path | None) -> str | None:
        return None if path is None else str(path.absolute())

    security = parse_model(
        OpcUaSecurity,
        {
            "policy": policy,
            "mode": mode,
            "certificate": absolute(certificate),
            "private_key": absolute(private_key),
            "trust_dir": absolute(trust_dir),
            "trust_on_first_use": trust_on_first_use,
        },
        "command line",
    )
    auth = None
    if username is not None:
        auth = parse_model(
            OpcUaAuth,
            {"username": username, "password_file": absolute(password_file)},
            "command line",
        )
    root = asyncio.run(
        browse_server(endpoint, security, auth, depth=depth, text_filter=text_filter)
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or captured: do not wrap long node ids
    console.print(render_tree(root, endpoint))
    if write_config is not None:
        assert asset is not None
        entry = source_entry(
            root, name=name, endpoint=endpoint, asset=asset, security=security, auth=auth
        )
        add_source(write_config, entry, agent_id=agent_id, broker=broker)
        console.print(f"wrote source {name!r} ({len(entry['nodes'])} nodes) to {write_config}")


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
