"""The andon page in headless Chromium against a running `karkhana demo`: a tile for every
machine of the factory, a fault forced on the simulator shows on its tile within 2 s (the
page's acceptance bound, a functional requirement of an andon rather than a benchmark), and
a screenshot is kept in ``test-artifacts/andon.png``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.config import load_simulation
from devices.control import CONTROL_TOPIC, RESULT_TOPIC
from karkhana.config import load_factory
from tests.helpers.servers import free_port, wait_until

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("KARKHANA_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
SHOWN_WITHIN_S = 2.0
URL_LINE = re.compile(r"Andon page: (http://127\.0\.0\.1:\d+/andon#key=\S+)")


def _chromium() -> str:
    """Debian's chromium (the Makefile installs it for the tests when run as root)."""
    for candidate in ("chromium", "/usr/bin/chromium"):
        found = shutil.which(candidate)
        if found:
            return found
    if os.geteuid() != 0:
        pytest.skip(
            "chromium is not installed and cannot be without root: apt-get install chromium"
        )
    pytest.fail("chromium is missing: `make test` installs it (apt-get install chromium)")


@pytest.fixture
def demo(tmp_path: Path, factory_on_free_ports: Path) -> Iterator[tuple[str, int]]:
    """`karkhana demo` on free ports; yields the andon URL it prints and its MQTT port."""
    mqtt_port = free_port()
    cmd = [
        sys.executable, "-m", "karkhana", "demo",
        "--speed", "60",
        "--port", str(free_port()),
        "--mqtt-port", str(mqtt_port),
        "--factory", str(factory_on_free_ports),
        "--data-dir", str(tmp_path / "data"),
        "--no-live",
    ]  # fmt: skip
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        found: list[str] = []

        def url_printed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the demo stopped:\n{log_path.read_text()[-4000:]}")
            found[:] = URL_LINE.findall(log_path.read_text())
            return bool(found)

        wait_until(url_printed, 90, "the demo to print the andon URL")
        yield found[0], mqtt_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops cleanly
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class Control:
    """The simulator's control topic, through the demo's broker."""

    def __init__(self, port: int) -> None:
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="andon-e2e")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(RESULT_TOPIC, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.results.append(json.loads(message.payload))

    def force(self, request_id: str, machine: str, state: str, duration_s: float) -> None:
        payload = {
            "id": request_id,
            "command": "force_state",
            "machine": machine,
            "state": state,
            "duration_s": duration_s,
        }
        self.client.publish(CONTROL_TOPIC, json.dumps(payload), qos=1).wait_for_publish(5)

    def answer(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((r for r in self.results if r.get("id") == request_id), None)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_andon_page_shows_every_machine_and_a_forced_fault(
    demo: tuple[str, int], factory_on_free_ports: Path
) -> None:
    from playwright.sync_api import sync_playwright  # a dev dependency (pyproject)

    chromium = _chromium()
    url, mqtt_port = demo
    factory = load_factory(factory_on_free_ports)
    machines = [m.path for m in factory.machines()]
    # A machine whose device reports each change at once (OPC UA or MQTT, not polled).
    devices = load_simulation(factory, factory_on_free_ports).machines
    target = next(path for path in machines if devices[path].device != "modbus")
    control = Control(mqtt_port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium)
            try:
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                page.goto(url)
                # Functions, not expressions: the page's CSP forbids evaluating strings.
                page.wait_for_function(
                    "n => document.body.dataset.connection === 'live'"
                    " && document.querySelectorAll('.tile[data-asset]').length === n",
                    arg=len(machines),
                    timeout=30_000,
                )
                assert "key=" not in page.url  # traded for the session cookie, then dropped
                shown = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.asset)")
                assert sorted(shown) == sorted(machines)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.tile')]"
                    ".every(t => t.dataset.state !== 'nodata')",
                    timeout=30_000,
                )

                tile = f'.tile[data-asset="{target}"]'
                before = page.get_attribute(tile, "data-state")
                forced = "fault" if before != "fault" else "setup"
                sent = time.monotonic()
                control.force("andon-e2e", target, forced, duration_s=1800)
                remaining_ms = max(1.0, (SHOWN_WITHIN_S - (time.monotonic() - sent)) * 1000)
                page.wait_for_function(
                    "([sel, state]) => document.querySelector(sel).dataset.state === state",
                    arg=[tile, forced],
                    timeout=remaining_ms,
                )
                latency = time.monotonic() - sent
                print(f"forced {forced} on {target} shown after {latency:.2f} s")
                label = {"fault": "FAULT", "setup": "SETUP"}[forced]
                assert page.inner_text(f"{tile} .state") == label  # words, not only colour

                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "andon.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            finally:
                browser.close()
        answer = control.answer("andon-e2e")
        assert answer is not None and answer["ok"] is True, control.results
        assert (answer["machine"], answer["state"]) == (target, forced)
    finally:
        control.close()
