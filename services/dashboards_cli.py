"""``karkhana dashboards push``: karkhana's folder, data source and dashboards into Grafana."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Grafana dashboards: push them to a Grafana through its HTTP API."""


@app.command("push")
def push(
    url: Annotated[
        str, typer.Option("--url", envvar="GRAFANA_URL", help="Grafana, e.g. http://grafana:3000")
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="GRAFANA_TOKEN",
            help="Grafana service-account token (role Admin); prefer the environment variable.",
        ),
    ],
    folder: Annotated[
        str, typer.Option("--folder", help="Folder title; its uid is the title in lower case.")
    ] = "karkhana",
    datasource_url: Annotated[
        str,
        typer.Option("--datasource-url", help="InfluxDB URL as Grafana's server reaches it."),
    ] = "http://influxdb:8086",
    influx_db: Annotated[
        str, typer.Option("--influx-db", help="InfluxQL database (the bucket's DBRP mapping).")
    ] = "karkhana",
    influx_token: Annotated[
        str | None,
        typer.Option(
            "--influx-token",
            envvar="INFLUXDB_TOKEN",
            help="InfluxDB token for the data source; needed to create it, or to replace it.",
        ),
    ] = None,
    dashboards_dir: Annotated[
        Path, typer.Option("--dashboards", help="Directory of dashboard JSON files.")
    ] = Path("dashboards"),
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds allowed per request.")
    ] = 10.0,
) -> None:
    """Create or update the folder, the InfluxDB (InfluxQL) data source and every dashboard.

    Objects that already match are left unchanged; exit code 1 when Grafana cannot be
    reached or refuses the token, 2 for a bad option or dashboard file."""
    from services.dashboards_push import DatasourceSpec, GrafanaPusher, load_dashboards

    dashboards = load_dashboards(dashboards_dir)
    pusher = GrafanaPusher(url, token, timeout_s=timeout)
    spec = DatasourceSpec(url=datasource_url, database=influx_db, influx_token=influx_token)
    changed = 0
    for result in pusher.push(folder, spec, dashboards):
        typer.echo(str(result))
        changed += result.action != "unchanged"
    typer.echo(f"{len(dashboards)} dashboards; {changed} objects created or updated")
