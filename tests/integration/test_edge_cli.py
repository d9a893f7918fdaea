"""``karkhana edge run`` as a process: config errors exit 2, signals stop it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from karkhana.topics import edge_status
from tests.helpers.servers import Mosquitto, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KARKHANA = Path(sys.executable).parent / "karkhana"


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "agent_id: edge-1\n"
        "uplink: {broker: 'mqtt://127.0.0.1:1883'}\n"
        "sources:\n"
        "  - {type: opcua, name: plc, nodes: []}\n"
    )
    result = subprocess.run(
        [str(KARKHANA), "edge", "run", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and "sources[0].endpoint" in lines[0]


class StatusWatcher:
    """Keeps the latest retained status of an agent (paho, its own network thread)."""

    def __init__(self, broker: Mosquitto, agent: str) -> None:
        self.states: list[str] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe(edge_status(agent), qos=1)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.states.append(json.loads(msg.payload)["state"])

    def last(self) -> str | None:
        with self._lock:
            return self.states[-1] if self.states else None

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_agent_cleanly(
    mosquitto: Mosquitto, tmp_path: Path, signum: signal.Signals
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent_id": "cli-edge",
                "uplink": {"broker": mosquitto.url},
                "buffer": {"path": str(tmp_path / "buffer.sqlite")},
                "sources": [
                    {
                        "type": "mqtt",
                        "name": "sensors",
                        "topics": [
                            {"topic": "s/{m}/{sig}", "asset": "a/b/c/{m}", "signal": "{sig}"}
                        ],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [str(KARKHANA), "edge", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    watcher = StatusWatcher(mosquitto, "cli-edge")
    try:
        wait_until(lambda: watcher.last() == "online", 20, "the agent to come online")
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        wait_until(lambda: watcher.last() == "offline", 10, "the offline status")
    finally:
        watcher.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "buffer.sqlite").exists()
