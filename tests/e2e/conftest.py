from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def factory_on_free_ports(tmp_path: Path) -> Path:
    """The example factory with every simulated PLC (OPC UA and Modbus) moved to a free port."""
    text = (REPO_ROOT / "examples" / "factory.yaml").read_text()
    text, moved = re.subn(r"port: \d+", lambda _m: f"port: {free_port()}", text)
    assert moved == 4, f"expected the ports of 3 OPC UA looms and 1 Modbus loom, found {moved}"
    path = tmp_path / "factory.yaml"
    path.write_text(text)
    return path
