"""Edge agent OPC UA benchmark: how many monitored items one agent sustains at 1 Hz.

An asyncua server (a subprocess) holds N Double variables and writes all of them once a
second with the wall-clock SourceTimestamp. One edge agent subscribes to all N and forwards
to a private mosquitto; a subscriber there measures the end-to-end lag of every sample (its
arrival minus its source timestamp). N steps up (1k, 2k, 5k, 10k, 20k, ...) until the p99
lag exceeds 2 s or the lag grows during the step. Prints figures and a final JSON line with
``max_items_1hz`` and ``lag_p99_s`` (of the largest N that held); asserts nothing.

    python benchmarks/edge_opcua.py [--seconds 20] [--max-items 50000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import msgspec
import paho.mqtt.client as mqtt

from edge import EdgeAgent, EdgeConfig
from karkhana.envelope import WireEnvelope
from karkhana.topics import EDGE_SAMPLES_FILTER

STEPS = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
P99_LIMIT_S = 2.0
GROWTH_LIMIT_S = 0.5  # median lag of the second half above the first half by this much
WARMUP_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


@contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_inflight_messages 100\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, 10)
        yield port
    finally:
        process.terminate()
        process.wait(10)


# --- the OPC UA server (runs in a subprocess: ``--serve N PORT``) -----------------------


async def serve(n: int, port: int) -> None:
    from asyncua import Server, ua

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    idx = await server.register_namespace("urn:karkhana:bench")
    folder = await server.nodes.objects.add_object(
        ua.NodeId.from_string(f"ns={idx};s=bench"), "bench"
    )
    ids = []
    for i in range(n):
        node = await folder.add_variable(ua.NodeId.from_string(f"ns={idx};s=v{i}"), f"v{i}", 0.0)
        ids.append(node.nodeid)
    await server.start()
    print("ready", flush=True)
    tick = 0
    slow = 0
    while True:
        await asyncio.sleep(1.0 - time.time() % 1.0)
        stamp = cast(ua.DateTime, datetime.now(UTC))  # ua.DateTime is a datetime
        started = time.monotonic()
        for node_id in ids:
            dv = ua.DataValue(
                ua.Variant(float(tick), ua.VariantType.Double),
                SourceTimestamp=stamp,
                ServerTimestamp=stamp,
            )
            await server.write_attribute_value(node_id, dv)
        if time.monotonic() - started > 1.0:
            slow += 1
            print(f"server: writing {n} values took more than 1 s ({slow} times)", flush=True)
        tick += 1


# --- the lag meter --------------------------------------------------------------------


class LagMeter:
    """Subscribes to the edge samples topic (paho, its own thread); records (arrival, lag)."""

    def __init__(self, port: int) -> None:
        self.records: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._decoder = msgspec.json.Decoder(WireEnvelope)
        self._subscribed = threading.Event()
        self.first = threading.Event()  # set when the first envelope arrives
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-meter")
        self._client.on_connect = lambda c, *_: c.subscribe(EDGE_SAMPLES_FILTER, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("lag meter not subscribed")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        arrival = time.time()
        envelope = self._decoder.decode(msg.payload)
        lags = [arrival - datetime.fromisoformat(s.ts).timestamp() for s in envelope.samples]
        with self._lock:
            self.records.extend((arrival, lag) for lag in lags)
        self.first.set()

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        with self._lock:
            return [r for r in self.records if start <= r[0] < end]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def _relay(stream: asyncio.StreamReader) -> None:
    """Print what the server subprocess says (e.g. that it cannot keep up) until it exits."""
    async for line in stream:
        print(f"  {line.decode().rstrip()}", flush=True)


@dataclass
class StepResult:
    items: int
    received: int
    expected: int
    p50: float
    p99: float
    growth: float

    @property
    def held(self) -> bool:
        return (
            self.p99 <= P99_LIMIT_S
            and self.growth <= GROWTH_LIMIT_S
            and self.received >= 0.95 * self.expected
        )


def edge_config(n: int, opcua_port: int, mqtt_port: int, workdir: Path) -> EdgeConfig:
    nodes = [
        {"node_id": f"ns=2;s=v{i}", "asset": f"bench/a/l/m{i // 1000}", "signal": f"v{i}"}
        for i in range(n)
    ]
    return EdgeConfig.model_validate(
        {
            "agent_id": "bench-edge",
            "uplink": {"broker": f"mqtt://127.0.0.1:{mqtt_port}"},
            "buffer": {"path": str(workdir / f"buffer-{n}.sqlite"), "max_batch_samples": 5000},
            "sources": [
                {
                    "type": "opcua",
                    "name": "bench",
                    "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/bench/",
                    "publishing_interval_ms": 200,
                    "nodes": nodes,
                }
            ],
        }
    )


async def run_step(n: int, seconds: float, mqtt_port: int, workdir: Path) -> StepResult:
    opcua_port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(n), str(opcua_port), stdout=subprocess.PIPE
    )
    meter = LagMeter(mqtt_port)
    relay: asyncio.Task[None] | None = None
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 300)
        if line.strip() != b"ready":
            raise RuntimeError(f"OPC UA server did not start: {line!r}")
        relay = asyncio.create_task(_relay(server.stdout))  # the server's own warnings
        async with EdgeAgent(edge_config(n, opcua_port, mqtt_port, workdir)):
            # Subscribing N items takes a while for large N; measure once samples flow.
            if not await asyncio.to_thread(meter.first.wait, 300):
                raise RuntimeError(f"no sample arrived with {n} items")
            start = time.time() + WARMUP_S
            end = start + seconds
            await asyncio.sleep(end - time.time() + 1.5)  # the measured window plus delivery
    finally:
        meter.close()
        if server.returncode is None:
            server.terminate()
        await server.wait()
        if relay is not None:
            await relay
    window = meter.between(start, end)
    lags = sorted(lag for _, lag in window)
    if not lags:
        return StepResult(n, 0, int(n * seconds), float("inf"), float("inf"), float("inf"))
    middle = (start + end) / 2
    first = [lag for at, lag in window if at < middle] or [0.0]
    second = [lag for at, lag in window if at >= middle] or [0.0]
    return StepResult(
        items=n,
        received=len(lags),
        expected=int(n * seconds),
        p50=statistics.median(lags),
        p99=lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        growth=statistics.median(second) - statistics.median(first),
    )


async def bench(steps: list[int], seconds: float) -> dict[str, object]:
    best: StepResult | None = None
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as mqtt_port:
        for n in steps:
            result = await run_step(n, seconds, mqtt_port, Path(tmp))
            verdict = "held" if result.held else "did not hold"
            print(
                f"{n:>7} items: {result.received:>9} of {result.expected} samples, "
                f"lag p50 {result.p50:.3f} s, p99 {result.p99:.3f} s, "
                f"growth {result.growth:+.3f} s -> {verdict}",
                flush=True,
            )
            if not result.held:
                break
            best = result
    return {
        "benchmark": "edge_opcua",
        "seconds_per_step": seconds,
        "max_items_1hz": best.items if best else 0,
        "lag_p99_s": round(best.p99, 4) if best else None,
        "lag_p50_s": round(best.p50, 4) if best else None,
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--max-items", type=int, default=100_000, help="largest step to try")
    parser.add_argument("--quick", action="store_true", help="1k and 2k items, 8 s each")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        steps, seconds = [1_000, 2_000], 8.0
    else:
        steps, seconds = [n for n in STEPS if n <= args.max_items], args.seconds
    print(f"steps {steps}, {seconds:g} s measured per step (after {WARMUP_S:g} s warm-up)")
    result = asyncio.run(bench(steps, seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
