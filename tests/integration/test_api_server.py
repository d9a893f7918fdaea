"""The API served by uvicorn on a real port: in the caller's event loop and from the CLI."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from karkhana.errors import KarkhanaError
from services.api import ApiSettings
from services.cli import serve
from tests.helpers.api import auth_headers, create_key
from tests.helpers.servers import free_port, wait_for_port
from tests.helpers.store_builders import write_factory, write_samples

pytestmark = pytest.mark.integration

MACHINE = "site/area/line/m1"


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    return write_factory(
        tmp_path / "factory.yaml",
        machines={MACHINE: {"ideal_cycle_s": 2.0}},
        shifts=[{"name": "day", "start": "08:00", "end": "16:00"}],
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    t = datetime(2024, 5, 6, 8, tzinfo=UTC)
    write_samples(
        path,
        [
            (MACHINE, "state", t, "running"),
            (MACHINE, "state", t.replace(hour=12), "fault"),
            (MACHINE, "state", t.replace(hour=16), "off"),
            (MACHINE, "count_total", t, 0),
            (MACHINE, "count_total", t.replace(hour=11, minute=59), 5400),
        ],
    )
    return path


async def test_serve_in_current_loop_until_cancelled(factory: Path, db: Path) -> None:
    port = free_port()
    settings = ApiSettings(factory=factory, db=db, port=port)
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, started))
    await asyncio.wait_for(started.wait(), timeout=10)
    headers = auth_headers(create_key(settings.keys_path, "viewer"))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        health = await client.get("/health")
        kpi = await client.get(
            "/api/v1/kpi/oee",
            params={"asset": MACHINE, "from": "2024-05-06T08:00Z", "to": "2024-05-06T16:00Z"},
        )
    assert health.json()["store"]["exists"] is True
    (item,) = kpi.json()
    # 4 h running then a 4 h fault: A = 0.5; 5400 units x 2 s = 3 h ideal in 4 h run
    assert item["availability"] == 0.5
    assert item["performance"] == 0.75
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/health")


async def test_serve_reports_a_busy_port(factory: Path, db: Path) -> None:
    port = free_port()
    first = asyncio.create_task(serve(ApiSettings(factory=factory, db=db, port=port)))
    started = asyncio.Event()
    second = asyncio.create_task(serve(ApiSettings(factory=factory, db=db, port=port), started))
    try:
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        (failed,) = done
        with pytest.raises(KarkhanaError, match="could not start"):
            failed.result()
    finally:
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from karkhana.cli import main; main()", "api", *args]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_runs_and_stops_cleanly_on_a_signal(
    factory: Path, db: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        _cli("run", "-c", str(factory), "--db", str(db), "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=20)
        headers = auth_headers(create_key(db.parent / "keys.sqlite", "viewer"))
        body = httpx.get(f"http://127.0.0.1:{port}/api/v1/assets", headers=headers).json()
        assert body["sites"][0]["areas"][0]["lines"][0]["machines"][0]["state"] == "off"
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_factory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "factory.yaml"
    bad.write_text("version: 1\nsites:\n  - id: x\n    bogus: 1\n", encoding="utf-8")
    result = subprocess.run(
        _cli("run", "-c", str(bad), "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(bad) in lines[0]


def test_cli_missing_factory_setting_is_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        _cli("run", "--db", str(tmp_path / "x.sqlite")),
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "factory" in result.stderr
