"""`karkhana demo` with its embedded broker: answers for every machine while it runs, and
ends by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from karkhana.config import load_factory
from tests.helpers.servers import free_port

pytestmark = pytest.mark.e2e


def test_demo_runs_answers_and_ends_by_itself(tmp_path: Path, factory_on_free_ports: Path) -> None:
    api_port = free_port()
    truth_path = tmp_path / "t.json"
    cmd = [
        sys.executable, "-m", "karkhana", "demo",
        "--duration", "60", "--speed", "60",
        "--truth-out", str(truth_path),
        "--port", str(api_port),
        "--mqtt-port", str(free_port()),
        "--factory", str(factory_on_free_ports),
        "--data-dir", str(tmp_path / "data"),
        "--no-live",
    ]  # fmt: skip
    machines = {m.path for m in load_factory(factory_on_free_ports).machines()}
    log_path = tmp_path / "demo.log"
    answered: set[str] = set()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            deadline = time.monotonic() + 150
            key_file = tmp_path / "data" / "api-key.txt"  # the demo's admin key
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
                while proc.poll() is None and time.monotonic() < deadline:
                    if key_file.exists():
                        key = key_file.read_text().strip()
                        client.headers["Authorization"] = f"Bearer {key}"
                    try:
                        tree = client.get("/api/v1/assets").json()
                        site = tree["sites"][0]["id"]
                        # The simulated clock runs ahead of the wall clock: look both ways.
                        now = datetime.now(UTC)
                        window = {
                            "asset": site,
                            "from": (now - timedelta(days=2)).isoformat(),
                            "to": (now + timedelta(days=2)).isoformat(),
                        }
                        response = client.get("/api/v1/kpi/oee", params=window)
                        if response.status_code == 200:
                            answered |= {
                                item["asset"]
                                for item in response.json()
                                if item["components"]["total"] > 0
                            }
                    except httpx.HTTPError:
                        pass  # not listening yet
                    time.sleep(0.5)
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text()
    assert rc == 0, output[-5000:]
    assert answered == machines, (
        f"API answered with production for {sorted(answered)}\n{output[-3000:]}"
    )
    truth = json.loads(truth_path.read_text())
    assert set(truth["machines"]) == machines
