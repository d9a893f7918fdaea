"""``karkhana demo``: the whole platform on the simulated factory, in one process."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from karkhana.errors import ConfigError

app = typer.Typer()

DEFAULT_FACTORY = Path(__file__).resolve().parent.parent / "defaults" / "factory.yaml"


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError("--start", "", f"not an ISO 8601 timestamp: {value!r}") from exc
    if ts.tzinfo is None:
        raise ConfigError("--start", "", "the timestamp needs a timezone (e.g. 'Z' or '+05:00')")
    return ts


@app.command()
def demo(
    duration: float | None = typer.Option(
        None, "--duration", min=1, help="Stop after this many real seconds (default: Ctrl-C)."
    ),
    speed: float = typer.Option(
        60.0, "--speed", min=0.1, max=10_000, help="Simulated seconds per real second."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP API port."),
    broker: str | None = typer.Option(
        None,
        "--broker",
        help="Use this MQTT broker (mqtt://host:port) instead of the embedded one.",
    ),
    mqtt_port: int = typer.Option(
        1883, "--mqtt-port", min=1, max=65535, help="Port of the embedded MQTT broker."
    ),
    truth_out: Path | None = typer.Option(
        None, "--truth-out", help="Write the simulator's ground truth (JSON) here at the end."
    ),
    factory: Path = typer.Option(
        DEFAULT_FACTORY, "--factory", "-c", help="factory.yaml with a simulation section."
    ),
    data_dir: Path = typer.Option(
        Path("karkhana-data"), "--data-dir", help="Where the store and edge buffer live."
    ),
    start: str | None = typer.Option(
        None, "--start", help="Simulated start time, ISO 8601 (default: latest shift start)."
    ),
    live: bool = typer.Option(
        True, "--live/--no-live", help="Live terminal table (off: a status line every 5 s)."
    ),
) -> None:
    """Run broker, simulator, edge agent, gateway (SQLite) and API on the example factory."""
    import asyncio

    from karkhana.demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        factory_path=factory,
        duration_s=duration,
        speed=speed,
        api_port=port,
        broker_url=broker,
        mqtt_port=mqtt_port,
        truth_out=truth_out,
        data_dir=data_dir,
        start=_parse_start(start),
        live=live,
    )
    try:
        code = asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        typer.echo(f"demo stopped; the store and edge buffer stay in {data_dir}", err=True)
        code = 130  # the conventional exit status after Ctrl-C
    raise typer.Exit(code)
