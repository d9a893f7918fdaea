"""Orchestrates the demo: every component of the platform in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from karkhana.calendar import shift_instances
from karkhana.config.factory import FactoryConfig, load_factory
from karkhana.config.loading import parse_model
from karkhana.demo.broker import EmbeddedBroker
from karkhana.errors import ConnectionFailed
from karkhana.models import iso_utc

if TYPE_CHECKING:  # the kernel imports components only when the demo runs
    from services.keys import KeyStore, Role

log = logging.getLogger(__name__)

AGENT_ID = "demo-edge"
READY_TIMEOUT_S = 30.0
DEMO_MAX_FUTURE_S = 400 * 86_400.0
DRAIN_TIMEOUT_S = 60.0
API_KEY_FILE = "api-key.txt"  # in the data dir: the demo's admin key, for curl
ANDON_KEY_FILE = "andon-key.txt"  # a viewer key for the andon page


@dataclass(frozen=True)
class DemoOptions:
    factory_path: Path
    duration_s: float | None
    speed: float
    api_port: int
    broker_url: str | None
    mqtt_port: int
    truth_out: Path | None
    data_dir: Path
    start: datetime | None
    live: bool


def _ensure_port_free(port: int, what: str, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConnectionFailed(
                f"port {port} for the {what} is in use ({exc.strerror}); "
                f"choose another with {option}"
            ) from exc


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:5.1f} %"


STATE_STYLE = {
    "running": "green",
    "idle": "yellow",
    "stopped": "yellow",
    "fault": "bold red",
    "setup": "cyan",
    "planned_stop": "blue",
    "off": "dim",
}


class Dashboard:
    """Polls the platform's own API and renders the machine table."""

    def __init__(self, api_url: str, factory: FactoryConfig, api_key: str) -> None:
        self.api_url = api_url
        self.factory = factory
        self.client = httpx.AsyncClient(
            base_url=api_url, timeout=10.0, headers={"Authorization": f"Bearer {api_key}"}
        )
        self.rows: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str | None] = {}
        self.answered: set[str] = set()

    async def close(self) -> None:
        await self.client.aclose()

    async def refresh(self, start: datetime, now: datetime) -> None:
        if now <= start:
            return
        try:
            tree = (await self.client.get("/api/v1/assets")).json()
            for site in tree.get("sites", []):
                for area in site.get("areas", []):
                    for line in area.get("lines", []):
                        for machine in line.get("machines", []):
                            self.states[machine["path"]] = machine.get("state")
            for site in self.factory.sites:
                response = await self.client.get(
                    "/api/v1/kpi/oee",
                    params={"asset": site.id, "from": iso_utc(start), "to": iso_utc(now)},
                )
                if response.status_code == 200:
                    for item in response.json():
                        self.rows[item["asset"]] = item
                        self.answered.add(item["asset"])
                else:
                    log.warning("API answered %s: %s", response.status_code, response.text[:200])
        except httpx.HTTPError as exc:
            log.warning("API not reachable yet: %s", exc)

    async def refresh_shift(self, run_start: datetime, now: datetime) -> str:
        """Refresh with the current shift so far (bounded work however long the demo runs);
        returns the table title."""
        start = run_start
        title = f"since start - simulated {iso_utc(now)}"
        for site in self.factory.sites:
            current = shift_instances(site, now, now + timedelta(microseconds=1))
            if current:
                start = max(run_start, current[-1].start)
                local = now.astimezone(site.tz).strftime("%a %H:%M")
                title = f"shift {current[-1].name} so far - simulated {local} ({site.timezone})"
                break
        await self.refresh(start, now)
        return title

    def table(self, title: str, truth: dict[str, Any] | None = None) -> Table:
        table = Table(title=title, expand=False)
        table.add_column("machine", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for name in ("avail.", "perf.", "quality", "OEE"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("total", justify="right", no_wrap=True)
        table.add_column("good", justify="right", no_wrap=True)
        table.add_column("data", justify="right", no_wrap=True)
        if truth is not None:
            table.add_column("OEE truth", justify="right", no_wrap=True)
        for ref in self.factory.machines():
            row = self.rows.get(ref.path, {})
            comps = row.get("components", {})
            state = self.states.get(ref.path) or "-"
            cells = [
                f"{ref.line.id}/{ref.machine.id}",
                f"[{STATE_STYLE.get(state, '')}]{state}[/]" if state != "-" else "-",
                _fmt_pct(row.get("availability")),
                _fmt_pct(row.get("performance")),
                _fmt_pct(row.get("quality")),
                _fmt_pct(row.get("oee")),
                str(comps.get("total", "-")),
                str(comps.get("good", "-")),
                _fmt_pct(row.get("coverage")),
            ]
            if truth is not None:
                cells.append(_fmt_pct(truth.get("machines", {}).get(ref.path, {}).get("oee")))
            table.add_row(*cells)
        return table

    def status_line(self, now: datetime) -> str:
        parts = [f"sim {iso_utc(now)}"]
        for ref in self.factory.machines():
            row = self.rows.get(ref.path, {})
            state = self.states.get(ref.path) or "-"
            parts.append(f"{ref.machine.id}={state}:{_fmt_pct(row.get('oee')).strip()}")
        return " ".join(parts)


async def run_demo(opts: DemoOptions) -> int:
    # Components load lazily: the kernel never imports them at module level.
    from devices import FactorySimulator, SimSettings, edge_config_for
    from edge import EdgeAgent, EdgeConfig
    from gateway import Gateway, GatewaySettings
    from services.api.main import ApiSettings
    from services.cli import serve
    from services.keys import KeyStore, Role

    # Piped output (logs, CI) gets a fixed width so the final table stays readable.
    console = Console() if Console().is_terminal else Console(width=120)
    factory = load_factory(opts.factory_path)
    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _route_logs(data_dir / "demo.log", quiet_console=opts.live and console.is_terminal)
    _ensure_port_free(opts.api_port, "HTTP API", "--port")
    if opts.broker_url is None:
        _ensure_port_free(opts.mqtt_port, "embedded MQTT broker", "--mqtt-port")
    db_path = data_dir / "karkhana.sqlite"

    tasks: list[asyncio.Task[Any]] = []
    async with AsyncExitStack() as stack:
        if opts.broker_url is None:
            broker = await stack.enter_async_context(EmbeddedBroker(port=opts.mqtt_port))
            broker_url = broker.url
        else:
            broker_url = opts.broker_url

        gateway = await stack.enter_async_context(
            Gateway(
                GatewaySettings(
                    broker=broker_url,
                    db=db_path,
                    client_id="karkhana-demo-gateway",
                    # The simulated clock runs ahead of the wall clock on purpose; a long
                    # fast demo must not turn its own future timestamps into dead letters.
                    max_future_s=DEMO_MAX_FUTURE_S,
                )
            )
        )
        tasks.append(asyncio.create_task(gateway.run(), name="gateway"))

        api_started = asyncio.Event()
        api_settings = ApiSettings(
            factory=opts.factory_path,
            db=db_path,
            host="127.0.0.1",
            port=opts.api_port,
            andon_clock="data",  # the andon follows the simulated clock
        )
        with KeyStore(api_settings.keys_path) as keys:
            api_key = _demo_key(keys, data_dir / API_KEY_FILE, Role.ADMIN)
            andon_key = _demo_key(keys, data_dir / ANDON_KEY_FILE, Role.VIEWER)
        tasks.append(asyncio.create_task(serve(api_settings, api_started), name="api"))

        sim = await stack.enter_async_context(
            FactorySimulator(
                factory,
                SimSettings(
                    broker=broker_url,
                    speed=opts.speed,
                    duration_s=opts.duration_s,
                    start=opts.start,
                    truth_out=opts.truth_out,
                ),
                source=opts.factory_path,
            )
        )
        edge_dict = edge_config_for(
            factory,
            agent_id=AGENT_ID,
            broker=broker_url,
            buffer_path=str(data_dir / "edge" / f"{AGENT_ID}.sqlite"),
            source=opts.factory_path,
        )
        edge_config = parse_model(EdgeConfig, edge_dict, "demo edge config")
        edge = await stack.enter_async_context(EdgeAgent(edge_config))
        tasks.append(asyncio.create_task(edge.run(), name="edge"))

        await _wait_ready(api_started, edge, tasks)
        api_url = f"http://127.0.0.1:{opts.api_port}"
        console.print(
            f"karkhana demo: broker {broker_url}, API {api_url}, store {db_path}, "
            f"log {data_dir / 'demo.log'}, "
            f"speed x{opts.speed:g}"
            + (f", {opts.duration_s:g} s" if opts.duration_s else ", Ctrl-C stops")
        )
        console.print(
            f"API key (admin, also in {data_dir / API_KEY_FILE}): {api_key}", soft_wrap=True
        )
        # The key rides in the fragment: the page trades it for a session cookie, and a
        # fragment is never sent to the server.
        console.print(
            f"Andon page: {api_url}/andon#key={andon_key} (viewer key, also in "
            f"{data_dir / ANDON_KEY_FILE})",
            soft_wrap=True,
        )
        sim_task = asyncio.create_task(sim.run(), name="simulator")
        tasks.append(sim_task)
        dashboard = Dashboard(api_url, factory, api_key)
        stack.push_async_callback(dashboard.close)
        try:
            await _show_until_done(console, dashboard, sim, sim_task, tasks, opts.live)
            await _drain(edge, gateway)
            end = sim.end or sim.now()
            await dashboard.refresh(sim.start, end)
            truth = sim.truth().to_json()
            title = f"Whole run {iso_utc(sim.start)} .. {iso_utc(end)}: platform vs ground truth"
            console.print(dashboard.table(title, truth))
            missing = [m.path for m in factory.machines() if m.path not in dashboard.answered]
            if missing:
                console.print(f"[red]no KPI answer for: {', '.join(missing)}[/]")
                return 1
            return 0
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return 0


def _demo_key(keys: KeyStore, key_file: Path, role: Role) -> str:
    """The demo's API key: the one in ``key_file`` while it is still valid, else a new one
    (written there, readable by the owner only) so each run does not add a key."""
    with contextlib.suppress(OSError):
        kept = key_file.read_text(encoding="utf-8").strip()
        found = keys.authenticate(kept)
        if found is not None and found.role == role:
            return kept
    _, secret = keys.create("demo", role)
    key_file.write_text(secret + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    return secret


def _route_logs(log_file: Path, *, quiet_console: bool) -> None:
    """Everything at INFO goes to ``log_file``; the console keeps warnings only while the
    live table owns the terminal. Library chatter (HTTP polling, broker internals, OPC UA
    security notices for the unsecured simulator) stays out of both."""
    root = logging.getLogger()
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    if quiet_console:
        for existing in root.handlers:
            if existing is not handler:
                existing.setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.ERROR)


def _check_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.get_name() != "simulator":
            exc = task.exception()
            raise ConnectionFailed(
                f"the {task.get_name()} stopped unexpectedly: {exc!r}"
                if exc
                else f"the {task.get_name()} stopped unexpectedly"
            )


async def _wait_ready(
    api_started: asyncio.Event, edge: Any, tasks: list[asyncio.Task[Any]]
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (api_started.is_set() and edge.ready):
        _check_tasks(tasks)
        if time.monotonic() > deadline:
            raise ConnectionFailed(
                f"components not ready after {READY_TIMEOUT_S:.0f} s "
                f"(api started: {api_started.is_set()}, edge sources ready: {edge.ready})"
            )
        await asyncio.sleep(0.1)


async def _show_until_done(
    console: Console,
    dashboard: Dashboard,
    sim: Any,
    sim_task: asyncio.Task[Any],
    tasks: list[asyncio.Task[Any]],
    live: bool,
) -> None:
    if live and console.is_terminal:
        with Live(dashboard.table("starting"), console=console, refresh_per_second=2) as view:
            while not sim_task.done():
                _check_tasks(tasks)
                title = await dashboard.refresh_shift(sim.start, sim.now())
                view.update(dashboard.table(title))
                await asyncio.wait({sim_task}, timeout=1.0)
    else:
        last_line = 0.0
        while not sim_task.done():
            _check_tasks(tasks)
            await dashboard.refresh_shift(sim.start, sim.now())
            if time.monotonic() - last_line >= 5.0:
                console.print(dashboard.status_line(sim.now()), soft_wrap=True)
                last_line = time.monotonic()
            await asyncio.wait({sim_task}, timeout=1.0)
    sim_task.result()


async def _drain(edge: Any, gateway: Any) -> None:
    """Wait until everything the simulator produced is in the store (bounded)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last_written = -1
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        written = gateway.stats.samples_written + gateway.stats.samples_duplicate
        if written != last_written:
            last_written = written
            stable_since = time.monotonic()
        if edge.pending == 0 and time.monotonic() - stable_since > 1.0:
            return
        await asyncio.sleep(0.1)
    log.warning("pipeline did not drain within %.0f s", DRAIN_TIMEOUT_S)
