"""Gateway ingest benchmark: edge envelopes from a real mosquitto into SQLite.

Three measurements against a private mosquitto (started here on a free port, own config):

(a) batched: envelopes of 100 samples; (b) single: envelopes of one sample. For each, a
publisher process fills the broker's queue for two persistent sessions, then two consumers
drain the same messages one after the other, each in its own process: a bare paho client
that only receives, decodes (msgspec, the wire structs) and acknowledges, and the gateway
(decode, validate, dedup, commit to SQLite, acknowledge after commit). The figure is the
gateway's samples/s into SQLite and its ratio to the bare client's samples/s.

(c) latency: a publisher process sends 10,000 samples/s (envelopes of 10 samples, the
publish time as each sample's ``ts``) to a running gateway; a reader process polls the
store with its own SQLite connection every ``POLL_S`` and takes, for every new row, the
time it became visible minus its ``ts``. Peak RSS is the gateway process's high-water mark
over all runs. Prints figures and a final JSON line; asserts nothing.

    python benchmarks/ingest.py [--quick] [--batched-messages N] [--single-messages N]
                                [--latency-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import sqlite3
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
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from karkhana.envelope import WireEnvelope, WireSample, encode_envelope
from karkhana.storage.sqlite_chunks import decode_ts
from karkhana.topics import EDGE_SAMPLES_FILTER, edge_samples

AGENTS = 4
SIGNALS_PER_ASSET = 20
ASSETS_PER_AGENT = 5
LATENCY_RATE = 10_000
"""Samples per second of the latency run."""
LATENCY_SAMPLES_PER_MESSAGE = 10
POLL_S = 0.005
"""The reader's polling period: a row's measured latency is late by at most this much."""
BASE_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
PUBLISH_WINDOW = 10_000
STALL_S = 30.0
"""A consumer that makes no progress for this long is reported as stalled."""
GATEWAY_CLIENT = "bench-gateway"
BASELINE_CLIENT = "bench-baseline"
# The broker settings the gateway needs at this rate: a wide in-flight window (the gateway
# acknowledges a whole batch after its commit) and a queue that holds the backlog.
MOSQUITTO_CONF = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 0
max_queued_bytes 0
"""


# -- broker ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if binary is None:
        sys.exit("mosquitto is required (apt-get install mosquitto)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port))
    with (workdir / "mosquitto.log").open("ab") as log:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def open_session(port: int, client_id: str) -> None:
    """Create a persistent QoS 1 session, so the broker queues messages for ``client_id``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(EDGE_SAMPLES_FILTER, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"{client_id}: subscription not confirmed")
    finally:
        client.disconnect()
        client.loop_stop()


# -- payloads -------------------------------------------------------------------------------


def iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{rest // 1000:06d}Z"


def envelope(agent: int, seq: int, per_message: int, ts_ns: int) -> bytes:
    """``per_message`` samples of agent ``agent``'s series; ``ts_ns`` keeps them unique."""
    samples = []
    total = ASSETS_PER_AGENT * SIGNALS_PER_ASSET
    for i in range(per_message):
        k = (seq * per_message + i) % total
        asset = f"bench/area/line-{agent}/m{k // SIGNALS_PER_ASSET:02d}"
        value: float | int | bool = (
            seq if k % 7 == 0 else (seq % 2 == 0 if k % 11 == 0 else 20.0 + (seq % 1000) / 8)
        )
        # A series recurs every ``total / per_message`` messages: distinct ts per message.
        samples.append(WireSample(asset, f"s{k % SIGNALS_PER_ASSET:02d}", iso(ts_ns), value))
    return encode_envelope(f"agent-{agent}", seq, datetime.now(UTC), samples)


def publish_backlog(port: int, messages: int, per_message: int) -> None:
    """(process) Publish ``messages`` envelopes at QoS 1 as fast as the broker takes them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    # Message ids are 16-bit: keep fewer than that waiting for their PUBACK.
    window = threading.BoundedSemaphore(PUBLISH_WINDOW)
    client.on_publish = lambda *args: window.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    for n in range(messages):
        agent, seq = n % AGENTS, n // AGENTS + 1
        payload = envelope(agent, seq, per_message, BASE_NS + seq * 1000)
        if not window.acquire(timeout=STALL_S):
            raise RuntimeError("the broker stopped acknowledging")
        client.publish(edge_samples(f"agent-{agent}"), payload, qos=1)
    for _ in range(PUBLISH_WINDOW):  # every PUBACK received: all are queued
        if not window.acquire(timeout=STALL_S):
            raise RuntimeError("the broker stopped acknowledging")
    client.disconnect()
    client.loop_stop()


# -- consumers (each in its own process) ----------------------------------------------------


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_baseline(port: int, expected_samples: int, out: Connection) -> None:
    """(process) Bare paho: receive, decode with msgspec, auto-acknowledge. Samples/s."""
    decode = msgspec.json.Decoder(WireEnvelope).decode
    counted = [0]
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        counted[0] += len(decode(msg.payload).samples)
        if counted[0] >= expected_samples:
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=BASELINE_CLIENT, clean_session=False
    )
    client.on_message = on_message
    start = time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    seen = -1
    while not done.wait(STALL_S) and counted[0] != seen:
        seen = counted[0]
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    out.send({"samples": counted[0], "seconds": elapsed, "rss_mb": max_rss_mb()})


def run_gateway_drain(port: int, db: str, expected_samples: int, out: Connection) -> None:
    """(process) The gateway with default settings until ``expected_samples`` are committed."""
    from gateway import Gateway, GatewaySettings

    async def main() -> dict[str, float]:
        settings = GatewaySettings(
            broker=f"mqtt://127.0.0.1:{port}", db=Path(db), client_id=GATEWAY_CLIENT
        )
        start = time.perf_counter()
        async with Gateway(settings) as gateway:
            runner = asyncio.create_task(gateway.run())
            # Polls the counters every 5 ms (the run takes seconds): the finish is that late.
            progress = (0, time.monotonic())
            while (written := gateway.stats.samples_written) < expected_samples:
                if written != progress[0]:
                    progress = (written, time.monotonic())
                elif time.monotonic() - progress[1] > STALL_S or runner.done():
                    break  # stalled: reported as fewer samples than expected
                await asyncio.wait({runner}, timeout=0.005)
            elapsed = time.perf_counter() - start
            runner.cancel()
            stats = gateway.stats
        return {
            "samples": stats.samples_written,
            "seconds": elapsed,
            "batches": stats.batches,
            "messages": stats.messages,
        }

    result = asyncio.run(main())
    result["rss_mb"] = max_rss_mb()
    out.send(result)


def run_gateway_live(port: int, db: str, ready: Any, stop: Any, out: Connection) -> None:
    """(process) The gateway with default settings until ``stop`` is set."""
    from gateway import Gateway, GatewaySettings

    async def main() -> dict[str, float]:
        settings = GatewaySettings(
            broker=f"mqtt://127.0.0.1:{port}", db=Path(db), client_id=GATEWAY_CLIENT + "-live"
        )
        async with Gateway(settings) as gateway:
            runner = asyncio.create_task(gateway.run())
            await gateway.wait_subscribed()
            ready.set()
            stopped = asyncio.ensure_future(asyncio.to_thread(stop.wait))
            await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
            runner.cancel()
        return {"samples": gateway.stats.samples_written, "batches": gateway.stats.batches}

    result = asyncio.run(main())
    result["rss_mb"] = max_rss_mb()
    out.send(result)


def publish_paced(port: int, seconds: float) -> None:
    """(process) ``LATENCY_RATE`` samples/s; each sample's ts is its publish time."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paced")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    per_s = LATENCY_RATE // LATENCY_SAMPLES_PER_MESSAGE
    start = time.monotonic()
    info = None
    for n in range(int(seconds * per_s)):
        delay = start + n / per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        agent, seq = n % AGENTS, n // AGENTS + 1
        payload = envelope(agent, seq, LATENCY_SAMPLES_PER_MESSAGE, time.time_ns())
        info = client.publish(edge_samples(f"agent-{agent}"), payload, qos=1)
    if info is not None:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def read_latencies(db: str, expected_rows: int, timeout_s: float, out: Connection) -> None:
    """(process) Poll the store; for each new row of the watched series: now - ts (ms).

    The watched series (signals s00 and s10) receive exactly the first sample of every
    envelope of the latency run, so there is one figure per message.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    last: dict[int, int] = {}  # series id -> newest ts_ns seen
    latencies: list[float] = []
    deadline = time.monotonic() + timeout_s
    while len(latencies) < expected_rows and time.monotonic() < deadline:
        time.sleep(POLL_S)
        try:
            if len(last) < AGENTS * ASSETS_PER_AGENT * 2:
                for (sid,) in conn.execute("SELECT id FROM series WHERE signal IN ('s00', 's10')"):
                    last.setdefault(sid, 0)
            if not last:
                continue
            marks = ",".join("?" * len(last))
            chunks = conn.execute(
                f"SELECT series_id, ts FROM sample_chunks WHERE series_id IN ({marks}) "
                "AND ts_last > ?",
                (*last, min(last.values())),
            ).fetchall()
            rows = [(sid, ts) for sid, blob in chunks for ts in decode_ts(blob)]
        except sqlite3.OperationalError:
            continue  # the store is still being created
        now_ns = time.time_ns()
        for sid, ts in rows:
            if ts > last[sid]:
                latencies.append((now_ns - ts) / 1e6)
        for sid, ts in rows:
            last[sid] = max(last[sid], ts)
    conn.close()
    out.send(latencies)


# -- orchestration --------------------------------------------------------------------------


@dataclass
class Drain:
    samples_per_s: float
    seconds: float
    rss_mb: float
    extra: dict[str, float]


def in_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, sender))
    process.start()
    result: dict[str, Any] = receiver.recv()
    process.join(60)
    return result


def drain_scenario(
    workdir: Path, port: int, name: str, messages: int, per_message: int
) -> tuple[Drain, Drain]:
    expected = messages * per_message
    db = workdir / f"{name}.sqlite"
    open_session(port, BASELINE_CLIENT)
    open_session(port, GATEWAY_CLIENT)
    t0 = time.perf_counter()
    publisher = mp.get_context("spawn").Process(
        target=publish_backlog, args=(port, messages, per_message)
    )
    publisher.start()
    publisher.join()
    print(
        f"{name}: {messages} messages x {per_message} samples queued in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    results = []
    for label, target, args in (
        ("bare paho", run_baseline, (port, expected)),
        ("gateway", run_gateway_drain, (port, str(db), expected)),
    ):
        r = in_process(target, *args)
        rate = r["samples"] / r["seconds"]
        print(
            f"  {label:9}: {r['samples']} samples in {r['seconds']:.2f} s = {rate:,.0f} samples/s"
            f" ({rate / per_message:,.0f} msg/s), peak RSS {r['rss_mb']:.0f} MB",
            flush=True,
        )
        extra = {k: v for k, v in r.items() if k not in ("samples", "seconds", "rss_mb")}
        results.append(Drain(rate, r["seconds"], r["rss_mb"], extra))
        if r["samples"] < expected:
            print(f"  {label}: only {r['samples']} of {expected} samples", flush=True)
    # Remove the sessions so the next scenario starts with empty queues.
    for client_id in (BASELINE_CLIENT, GATEWAY_CLIENT):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        c.connect("127.0.0.1", port)
        c.disconnect()
    return results[0], results[1]


def latency_run(workdir: Path, port: int, seconds: float) -> tuple[list[float], float]:
    ctx = mp.get_context("spawn")
    db = str(workdir / "latency.sqlite")
    ready, stop = ctx.Event(), ctx.Event()
    gw_recv, gw_send = ctx.Pipe(duplex=False)
    gateway = ctx.Process(target=run_gateway_live, args=(port, db, ready, stop, gw_send))
    gateway.start()
    ready.wait(30)
    expected_rows = int(seconds * LATENCY_RATE / LATENCY_SAMPLES_PER_MESSAGE)
    rd_recv, rd_send = ctx.Pipe(duplex=False)
    reader = ctx.Process(target=read_latencies, args=(db, expected_rows, seconds + 30, rd_send))
    reader.start()
    publisher = ctx.Process(target=publish_paced, args=(port, seconds))
    publisher.start()
    publisher.join()
    latencies: list[float] = rd_recv.recv()
    reader.join()
    stop.set()
    result = gw_recv.recv()
    gateway.join(30)
    print(
        f"latency: {len(latencies)} of {expected_rows} messages at {LATENCY_RATE} samples/s "
        f"(reader polls every {POLL_S * 1000:.0f} ms), gateway peak RSS {result['rss_mb']:.0f} MB",
        flush=True,
    )
    return latencies, float(result["rss_mb"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under 60 s)")
    parser.add_argument("--batched-messages", type=int, default=None)
    parser.add_argument("--single-messages", type=int, default=None)
    parser.add_argument("--latency-seconds", type=float, default=None)
    args = parser.parse_args()
    batched = args.batched_messages or (5_000 if args.quick else 10_000)
    single = args.single_messages or (20_000 if args.quick else 100_000)
    latency_s = args.latency_seconds or (5.0 if args.quick else 20.0)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with mosquitto(workdir) as port:
            base_a, gw_a = drain_scenario(workdir, port, "batched", batched, 100)
            base_b, gw_b = drain_scenario(workdir, port, "single", single, 1)
            latencies, latency_rss = latency_run(workdir, port, latency_s)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"latency publish -> queryable: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", flush=True)
    result = {
        "batched_samples_per_s": round(gw_a.samples_per_s),
        "batched_ratio": round(gw_a.samples_per_s / base_a.samples_per_s, 3),
        "single_samples_per_s": round(gw_b.samples_per_s),
        "single_ratio": round(gw_b.samples_per_s / base_b.samples_per_s, 3),
        "latency_p50_ms": round(p50, 1),
        "latency_p99_ms": round(p99, 1),
        "peak_rss_mb": round(max(gw_a.rss_mb, gw_b.rss_mb, latency_rss), 1),
        "baseline_batched_samples_per_s": round(base_a.samples_per_s),
        "baseline_single_samples_per_s": round(base_b.samples_per_s),
        "latency_samples": len(latencies),
        "latency_median_of_all_ms": round(statistics.median(latencies), 1) if latencies else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
