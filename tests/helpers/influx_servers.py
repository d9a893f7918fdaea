"""Real InfluxDB 1.x (``influxd``) and VictoriaMetrics servers for tests.

Each runs on free loopback ports with its data in a temp dir and is stopped afterwards.
Neither system service is touched. A missing binary is an error, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.servers import free_port, wait_until

START_TIMEOUT_S = 30.0


def _binary(name: str, package: str) -> str:
    for candidate in (name, f"/usr/bin/{name}"):
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(
        f"{name} is required by the InfluxDB store tests; `make test` installs it "
        f"(apt-get install {package})"
    )


def _answers(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Influxd:
    """An ``influxd`` 1.x; ``stop``/``start`` keep the port and the data (outage tests)."""

    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [_binary("influxd", "influxdb"), "-config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: self._exited() or _answers(self.url, "/ping"),
            START_TIMEOUT_S,
            f"influxd on {self.url}",
        )
        if self._exited():
            raise RuntimeError(f"influxd exited at start; see {self.log_path}")

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def query(self, q: str, db: str) -> dict[str, object]:
        """An InfluxQL query answered by the server itself (independent of karkhana)."""
        response = httpx.get(
            self.url + "/query", params={"db": db, "q": q, "epoch": "ns"}, timeout=10
        )
        response.raise_for_status()
        body: dict[str, object] = response.json()
        return body


def influxd_config(workdir: Path, http_port: int, rpc_port: int) -> str:
    """A minimal config: loopback ports, data in ``workdir``, no reporting or self-monitoring."""
    return f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{workdir / "meta"}"

[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


@contextmanager
def run_influxd(workdir: Path) -> Iterator[Influxd]:
    """A private InfluxDB 1.x, without authentication (test only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = workdir / "influxdb.conf"
    config_path.write_text(influxd_config(workdir, port, free_port()), encoding="utf-8")
    server = Influxd(port, config_path, workdir / "influxd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class VictoriaMetrics:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def export(self, match: str) -> list[dict[str, object]]:
        """Every stored series matching ``match`` as VictoriaMetrics' own JSON lines."""
        import json

        httpx.get(self.url + "/internal/force_flush", timeout=10).raise_for_status()
        response = httpx.post(self.url + "/api/v1/export", data={"match[]": match}, timeout=10)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


@contextmanager
def run_victoria_metrics(workdir: Path) -> Iterator[VictoriaMetrics]:
    """A private VictoriaMetrics that accepts InfluxDB line protocol on ``/api/v2/write``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "victoria-metrics.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                _binary("victoria-metrics", "victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={workdir / 'data'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-loggerLevel=WARN",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = VictoriaMetrics(port, process, log_path)
    try:
        wait_until(
            lambda: process.poll() is not None or _answers(server.url, "/health"),
            START_TIMEOUT_S,
            f"victoria-metrics on {server.url}",
        )
        if process.poll() is not None:
            raise RuntimeError(f"victoria-metrics exited at start; see {log_path}")
        yield server
    finally:
        _stop(process)
