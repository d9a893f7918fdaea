"""Edge agent OPC UA benchmark: how many monitored items one agent sustains at 1 Hz.

An asyncua server (a subprocess) holds N Double variables and writes all of them once a
second with the wall-clock SourceTimestamp. One edge agent subscribes to all N and forwards
to a private mosquitto; a subscriber there (another subprocess, so that measuring does not
compete with the agent for its interpreter) measures the end-to-end lag of every sample (its
arrival minus its source timestamp). The CPU time of the agent's process and of the server
is reported for every step. N steps up (1k, 2k, 5k, 10k, 20k, ...) until the p99
lag exceeds 2 s or the lag grows during the step. Prints figures and a final JSON line with
``max_items_1hz`` and ``lag_p99_s`` (of the largest N that held); asserts nothing.

    python benchmarks/edge_opcua.py [--seconds 20] [--max-items 50000] [--quick]
    python benchmarks/edge_opcua.py --items 10000     # one step only
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import logging
import os
import shutil
import signal
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
FOLDER_SIZE = 500  # variables per folder: adding a node checks its parent's references


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
    root = await server.nodes.objects.add_object(
        ua.NodeId.from_string(f"ns={idx};s=bench"), "bench"
    )
    ids = []
    for i in range(n):
        if i % FOLDER_SIZE == 0:
            folder = await root.add_object(
                ua.NodeId.from_string(f"ns={idx};s=f{i // FOLDER_SIZE}"), f"f{i // FOLDER_SIZE}"
            )
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
    """Subscribes to the edge samples topic (paho, its own thread); records (arrival, lag).

    Runs in its own process (``--meter PORT FILE``): prints ``ready`` once subscribed and
    ``first`` when the first envelope arrives; on SIGTERM writes the records to FILE as
    doubles (arrival, lag, arrival, lag, ...) and exits.
    """

    def __init__(self, port: int) -> None:
        self.records = array.array("d")
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
        with self._lock:
            for s in envelope.samples:
                self.records.append(arrival)
                self.records.append(arrival - datetime.fromisoformat(s.ts).timestamp())
        self.first.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def meter_main(port: int, out: Path) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    meter = LagMeter(port)
    print("ready", flush=True)
    meter.first.wait()
    print("first", flush=True)
    stop.wait()
    meter.close()
    out.write_bytes(meter.records.tobytes())


def read_records(path: Path) -> list[tuple[float, float]]:
    values = array.array("d")
    values.frombytes(path.read_bytes())
    return list(zip(values[0::2], values[1::2], strict=True))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _expect(stream: asyncio.StreamReader, word: bytes, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        line = await stream.readline()
    if line.strip() != word:
        raise RuntimeError(f"expected {word!r} from a benchmark subprocess, got {line!r}")


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
    agent_cpu: float = 0.0  # share of one core during the measured window
    server_cpu: float = 0.0

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
    records = workdir / f"lags-{n}.bin"
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(n), str(opcua_port), stdout=subprocess.PIPE
    )
    meter = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--meter", str(mqtt_port), str(records), stdout=subprocess.PIPE
    )
    relay: asyncio.Task[None] | None = None
    try:
        assert server.stdout is not None and meter.stdout is not None
        await _expect(meter.stdout, b"ready", 30)
        await _expect(server.stdout, b"ready", 300)
        relay = asyncio.create_task(_relay(server.stdout))  # the server's own warnings
        async with EdgeAgent(edge_config(n, opcua_port, mqtt_port, workdir)):
            # Subscribing N items takes a while for large N; measure once samples flow.
            await _expect(meter.stdout, b"first", 300)
            start = time.time() + WARMUP_S
            end = start + seconds
            await asyncio.sleep(start - time.time())
            cpu_before = (time.process_time(), cpu_seconds(server.pid))
            await asyncio.sleep(end - time.time())
            cpu_after = (time.process_time(), cpu_seconds(server.pid))
            await asyncio.sleep(1.5)  # delivery of what the window read
    finally:
        for process in (meter, server):
            if process.returncode is None:
                process.terminate()
            await process.wait()
        if relay is not None:
            await relay
    window = [r for r in read_records(records) if start <= r[0] < end]
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
        agent_cpu=(cpu_after[0] - cpu_before[0]) / seconds,
        server_cpu=(cpu_after[1] - cpu_before[1]) / seconds,
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
                f"growth {result.growth:+.3f} s, CPU agent {result.agent_cpu:.0%} "
                f"server {result.server_cpu:.0%} -> {verdict}",
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
        "agent_cpu": round(best.agent_cpu, 3) if best else None,
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--meter":
        meter_main(int(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--max-items", type=int, default=100_000, help="largest step to try")
    parser.add_argument("--quick", action="store_true", help="1k and 2k items, 8 s each")
    parser.add_argument("--items", type=int, help="measure this many items only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.items is not None:
        steps, seconds = [args.items], 8.0 if args.quick else args.seconds
    elif args.quick:
        steps, seconds = [1_000, 2_000], 8.0
    else:
        steps, seconds = [n for n in STEPS if n <= args.max_items], args.seconds
    print(f"steps {steps}, {seconds:g} s measured per step (after {WARMUP_S:g} s warm-up)")
    result = asyncio.run(bench(steps, seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
