"""``karkhana gateway ...`` commands."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gateway.settings import GatewaySettings, load_settings
from gateway.stats import GatewayStats

log = logging.getLogger(__name__)

REPORT_EVERY_S = 10.0

StatsSource = Callable[[], GatewayStats]

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Gateway: ingest edge messages into the store."""


@app.command("run")
def run(
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", help="Broker URL, e.g. mqtt://127.0.0.1:1883 [env KARKHANA_GATEWAY_BROKER]"
        ),
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="SQLite store file [env KARKHANA_GATEWAY_DB]")
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            help="MQTT client id; keep it stable to keep the broker session "
            "[env KARKHANA_GATEWAY_CLIENT_ID]",
        ),
    ] = None,
    share_group: Annotated[
        str | None,
        typer.Option(
            "--share-group",
            help="MQTT v5 shared-subscription group, for several gateways "
            "[env KARKHANA_GATEWAY_SHARE_GROUP]",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="sqlite (default) or influxdb [env KARKHANA_GATEWAY_STORE]"),
    ] = None,
    influx_url: Annotated[
        str | None,
        typer.Option(
            "--influx-url",
            help="InfluxDB URL, e.g. http://127.0.0.1:8086 [env KARKHANA_GATEWAY_INFLUX_URL]",
        ),
    ] = None,
    influx_api: Annotated[
        str | None,
        typer.Option(
            "--influx-api",
            help="v2 (InfluxDB 2.x/3.x, default) or v1 (InfluxDB 1.x) "
            "[env KARKHANA_GATEWAY_INFLUX_API]",
        ),
    ] = None,
    influx_db: Annotated[
        str | None,
        typer.Option(
            "--influx-db",
            help="database (1.x) or bucket (2.x/3.x), default karkhana "
            "[env KARKHANA_GATEWAY_INFLUX_DB]; credentials only from the environment: "
            "KARKHANA_GATEWAY_INFLUX_TOKEN, or _INFLUX_USERNAME and _INFLUX_PASSWORD",
        ),
    ] = None,
    influx_org: Annotated[
        str | None,
        typer.Option("--influx-org", help="InfluxDB 2.x org [env KARKHANA_GATEWAY_INFLUX_ORG]"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="serve Prometheus /metrics on this port (off by default) "
            "[env KARKHANA_GATEWAY_METRICS_PORT]",
        ),
    ] = None,
) -> None:
    """Consume edge envelopes and write them to the store until SIGINT/SIGTERM."""
    settings = load_settings(
        broker=broker,
        db=db,
        client_id=client_id,
        share_group=share_group,
        store=store,
        influx_url=influx_url,
        influx_api=influx_api,
        influx_db=influx_db,
        influx_org=influx_org,
        metrics_port=metrics_port,
    )
    asyncio.run(serve(settings))


async def serve(settings: GatewaySettings, report_every_s: float = REPORT_EVERY_S) -> GatewayStats:
    """Run a gateway until SIGINT/SIGTERM (or until it fails); returns the final counters."""
    from gateway.service import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Gateway(settings) as gateway:
            run_task = asyncio.create_task(gateway.run(), name="gateway-run")
            stop_task = asyncio.create_task(stop.wait(), name="gateway-stop")
            report_task = asyncio.create_task(
                report_rates(lambda: gateway.stats, report_every_s), name="gateway-report"
            )
            tasks = (run_task, stop_task, report_task)
            try:
                await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if stop.is_set():
                log.info("stopping the gateway")
            elif not run_task.cancelled() and (error := run_task.exception()) is not None:
                raise error
        return gateway.stats
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def report_rates(stats: StatsSource, every_s: float) -> None:
    """Log one line every ``every_s`` seconds while there is traffic."""
    previous = stats()
    since = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        current = stats()
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        if current.messages != previous.messages:
            log.info(
                "%.1f msg/s, %.1f samples/s written, %.1f duplicate samples/s, "
                "%d duplicate envelope(s), %d dead letter(s) in the last %.0f s",
                (current.messages - previous.messages) / elapsed,
                (current.samples_written - previous.samples_written) / elapsed,
                (current.samples_duplicate - previous.samples_duplicate) / elapsed,
                current.envelopes_duplicate - previous.envelopes_duplicate,
                current.dead_letters - previous.dead_letters,
                elapsed,
            )
        previous, since = current, now
