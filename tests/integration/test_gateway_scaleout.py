"""Gateway processes killed with SIGKILL mid-stream, alone and as one of three on an MQTT v5
shared subscription: after the killed process is started again, the store holds every
published sample exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.servers import Mosquitto, wait_until
from tests.helpers.stored import stored_count, stored_samples

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ASSET = "lahore/weaving/line-1/loom-01"
AGENT = "edge-scale"
TOPIC = f"karkhana/v1/edge/{AGENT}/samples"
BASE_NS = 1_714_521_600 * 1_000_000_000  # 2024-05-01T00:00:00Z
ENVELOPES = 400
SAMPLES_PER_ENVELOPE = 50
SIGNALS = 5
PUBLISH_INTERVAL_S = 0.02  # ~2,500 samples/s
SETTLE_S = 120.0


def sample_ts(seq: int, index: int) -> str:
    ns = BASE_NS + (seq * SAMPLES_PER_ENVELOPE + index) * 1_000_000
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{frac // 1000:06d}Z"


def envelope(seq: int) -> tuple[bytes, dict[tuple[str, int], int]]:
    """The payload and what it must leave in the store: (signal, ts_ns) -> value."""
    samples = []
    expected: dict[tuple[str, int], int] = {}
    for index in range(SAMPLES_PER_ENVELOPE):
        signal_name = f"s{index % SIGNALS}"
        value = seq * 1000 + index
        samples.append(
            {"asset": ASSET, "signal": signal_name, "ts": sample_ts(seq, index), "value": value}
        )
        ns = BASE_NS + (seq * SAMPLES_PER_ENVELOPE + index) * 1_000_000
        expected[(signal_name, ns)] = value
    body = {"v": 1, "agent": AGENT, "seq": seq, "sent": sample_ts(seq, 0), "samples": samples}
    return json.dumps(body).encode(), expected


@dataclass
class Publisher:
    """Publishes the stream QoS 1 from its own thread and records what the broker accepted."""

    broker: Mosquitto
    expected: dict[tuple[str, int], int] = field(default_factory=dict)
    published: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scale-publisher")
        client.max_inflight_messages_set(50)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            infos = []
            for seq in range(1, ENVELOPES + 1):
                payload, expected = envelope(seq)
                infos.append(client.publish(TOPIC, payload, qos=1))
                self.expected.update(expected)
                self.published = seq
                time.sleep(PUBLISH_INTERVAL_S)
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published(), "the broker did not acknowledge a publish"
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            client.disconnect()
            client.loop_stop()
            self.done.set()


def karkhana_command() -> list[str]:
    script = Path(sys.executable).with_name("karkhana")
    assert script.exists(), f"console script missing at {script}"
    return [str(script)]


class GatewayProcess:
    """``karkhana gateway run`` as a separate process with its own client id."""

    def __init__(self, broker: Mosquitto, db: Path, client_id: str, log: Path, shared: bool):
        self._args = [*karkhana_command(), "gateway", "run", "--broker", broker.url]
        self._args += ["--db", str(db)]
        self._env = {**os.environ, "KARKHANA_GATEWAY_CLIENT_ID": client_id}
        if shared:
            self._env["KARKHANA_GATEWAY_SHARE_GROUP"] = "ingest"
        self.client_id = client_id
        self._log = log
        self._broker = broker
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as out:
            self.process = subprocess.Popen(
                self._args, env=self._env, stdout=out, stderr=subprocess.STDOUT
            )
        # Subscribed when the broker logs the client's connection.
        marker = f"as {self.client_id} ("
        wait_until(
            lambda: (
                self._broker.log_path.read_text(errors="replace").count(marker) > self._connects
            ),
            30,
            f"{self.client_id} to connect",
        )
        self._connects += 1

    _connects = 0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> str:
        return self._log.read_text(errors="replace")


@contextmanager
def gateways(
    broker: Mosquitto, db: Path, count: int, tmp_path: Path
) -> Iterator[list[GatewayProcess]]:
    procs = [
        GatewayProcess(broker, db, f"gw-{n}", tmp_path / f"gw-{n}.log", shared=count > 1)
        for n in range(1, count + 1)
    ]
    with ExitStack() as stack:
        for proc in procs:
            proc.start()
            stack.callback(proc.stop)
        yield procs


def stored(db: Path) -> dict[tuple[str, int], object]:
    return {(r.signal, r.ts_ns): r.value for r in stored_samples(db)}


@pytest.mark.parametrize("count", [1, 3], ids=["one-gateway", "three-shared"])
def test_sigkilled_gateway_loses_nothing(mosquitto: Mosquitto, tmp_path: Path, count: int) -> None:
    db = tmp_path / "store.sqlite"
    publisher = Publisher(mosquitto)
    with gateways(mosquitto, db, count, tmp_path) as procs:
        victim = procs[-1]
        thread = threading.Thread(target=publisher.run, daemon=True)
        thread.start()
        wait_until(lambda: publisher.published >= ENVELOPES // 3, 60, "a third of the stream")
        wait_until(lambda: stored_count(db) > 0, 30, "the first committed samples")
        victim.kill()
        time.sleep(1.0)  # messages keep arriving for the dead session meanwhile
        victim.start()  # same client id: the broker redelivers what was not acknowledged
        assert publisher.done.wait(60), "the publisher did not finish"
        thread.join()
        assert publisher.error is None, f"publisher failed: {publisher.error!r}"
        expected = publisher.expected
        assert len(expected) == ENVELOPES * SAMPLES_PER_ENVELOPE
        with contextlib.suppress(AssertionError):  # reported below with the missing samples
            wait_until(lambda: stored_count(db) >= len(expected), SETTLE_S, "every sample")
        got = stored(db)
        for proc in procs:
            assert proc.process is not None and proc.process.poll() is None, proc.output()
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [key for key in expected if key in got and got[key] != expected[key]]
    logs = "\n".join(f"--- {p.client_id}\n{p.output()[-3000:]}" for p in procs)
    assert not missing, f"{len(missing)} samples missing, first {missing[:5]}\n{logs}"
    assert not extra and not wrong, f"extra {extra[:5]} wrong {wrong[:5]}"
    # Sanity: the killed process did take part (it acknowledged or was redelivered messages).
    assert "gateway" in victim.output()
