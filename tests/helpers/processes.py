"""karkhana commands run as separate processes, the way the platform is deployed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


@contextmanager
def karkhana_process(
    args: list[str], cwd: Path, log_name: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A karkhana command in the background; stopped with SIGTERM (it must exit 0)."""
    with (cwd / log_name).open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "karkhana", *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert proc.returncode == 0, (cwd / log_name).read_text()[-3000:]


def edge_config_written(path: Path) -> bool:
    """True once the simulator has written an edge.yaml with its sources."""
    try:
        return bool(yaml.safe_load(path.read_text()).get("sources"))
    except (OSError, AttributeError, yaml.YAMLError):
        return False
