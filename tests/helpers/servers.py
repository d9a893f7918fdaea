"""Real servers for tests, started on free ports and stopped afterwards."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], within_s: float, what: str
) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within_s}s waiting for {what}")


def mosquitto_binary() -> str:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(
        "mosquitto is required by the integration tests; `make test` installs it "
        "(apt-get install mosquitto)"
    )


@dataclass
class Mosquitto:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start_again(self) -> None:
        """Restart on the same port (for outage tests)."""
        self.stop()
        self.process = _spawn(self.config_path, self.log_path)
        wait_for_port(self.port)


def _spawn(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [mosquitto_binary(), "-c", str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )


@contextmanager
def run_mosquitto(workdir: Path, extra_config: str = "") -> Iterator[Mosquitto]:
    """A private mosquitto on a free loopback port, anonymous access (test only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = workdir / "mosquitto.conf"
    config_path.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n"
        f"{extra_config}\n"
    )
    log_path = workdir / "mosquitto.log"
    broker = Mosquitto("127.0.0.1", port, _spawn(config_path, log_path), config_path, log_path)
    try:
        wait_for_port(port)
        yield broker
    finally:
        broker.stop()
