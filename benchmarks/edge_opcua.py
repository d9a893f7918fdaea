"""Edge agent OPC UA benchmark: how many monitored items one agent sustains at 1 Hz.

N Double variables change once a second. They live in several asyncua servers (subprocesses,
``--items-per-server`` variables each, one agent source per server, as one agent reading
several PLCs would); each server writes its variables in ``SLICES_PER_S`` slices spread over
the second, a slice sharing one DataValue stamped with the time it is written. Every server
records when each slice was due, started and finished, so the benchmark can tell whether the
*generator* delivered all N changes per second on time: if it did not, the step is reported
as a generator failure (exit status 1), never as the agent's limit.

One edge agent (this process) subscribes to all N and forwards to a private mosquitto; a
lag meter (another subprocess, decoding only the sample timestamps) records the end-to-end
lag of every sample: its arrival minus its source timestamp; a step is measured once the
lag has settled after the subscriptions were created. N steps up (1k, 2k, 5k, 10k, 20k,
...) until the p99 lag exceeds 2 s, the lag grows during the step, or fewer than 99 % of
the samples written in the window arrive. For every step the CPU share of the agent, the
servers, the meter, mosquitto and everything else on the machine (other load) is printed;
a step that fails while other processes saturate the machine is reported as such (exit
status 1), not as the agent's limit. The last line is JSON with ``max_items_1hz`` and
``lag_p99_s`` (of the largest N that held). Asserts nothing.

    python benchmarks/edge_opcua.py [--seconds 20] [--max-items 50000] [--quick]
    python benchmarks/edge_opcua.py --items 10000     # one step only
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import json
import logging
import math
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import msgspec
import paho.mqtt.client as mqtt

from edge import EdgeAgent, EdgeConfig
from karkhana.topics import EDGE_SAMPLES_FILTER

STEPS = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
P99_LIMIT_S = 2.0
GROWTH_LIMIT_S = 0.5  # median lag of the second half above the first half by this much
RECEIVED_MIN_SHARE = 0.99
# Creating thousands of monitored items loads the servers and the agent, and the first
# reports carry every node's current value: measuring starts WARMUP_S after the lag has
# settled (the median lag of the last second below STEADY_LAG_S for STEADY_FOR_S), or
# after SETTLE_TIMEOUT_S if it never does (the window then shows it).
WARMUP_S = 3.0
STEADY_LAG_S = 1.0
STEADY_FOR_S = 3.0
SETTLE_TIMEOUT_S = 60.0


FOLDER_SIZE = 500  # variables per folder: adding a node checks its parent's references
ITEMS_PER_SERVER = 2_500
SLICES_PER_S = 10
# The generator held if it wrote this share of N per second and 99 % of its slices started
# at most this late. (A late slice does not inflate the measured lag, which starts from the
# slice's own timestamp; a generator falling behind for good shows as a lower share.)
GENERATOR_MIN_SHARE = 0.98
GENERATOR_LATE_LIMIT_S = 0.5
SLICE_FIELDS = 4  # due, started, finished, count
# A step that does not hold is not blamed on the agent when all cores were this busy and
# other processes used at least this share of a core.
CORES = os.cpu_count() or 1
SATURATED_SHARE = 0.9
OTHER_LOAD_NOTICEABLE = 0.25


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
def mosquitto(workdir: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of a private mosquitto."""
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
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


# --- the generator: an OPC UA server (subprocess ``--serve FIRST COUNT PORT OUT``) -------


async def serve(first: int, count: int, port: int, out: Path) -> None:
    """Variables ``v{first}`` .. ``v{first+count-1}`` (ns=2), each written once a second.

    The variables are written in SLICES_PER_S slices, one every 1/SLICES_PER_S s; a slice
    shares one DataValue stamped when its writing starts. A slice that is due while the
    previous one is still being written starts late (none is skipped). On SIGTERM the
    (due, started, finished, count) of every slice is written to ``out`` as doubles.
    """
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
    for offset in range(count):
        i = first + offset
        if offset % FOLDER_SIZE == 0:
            folder = await root.add_object(
                ua.NodeId.from_string(f"ns={idx};s=f{i // FOLDER_SIZE}"), f"f{i // FOLDER_SIZE}"
            )
        node = await folder.add_variable(ua.NodeId.from_string(f"ns={idx};s=v{i}"), f"v{i}", 0.0)
        ids.append(node.nodeid)
    slices = [ids[k::SLICES_PER_S] for k in range(SLICES_PER_S)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    # The address space is a few hundred thousand long-lived objects: keep the collector
    # from walking them again and again (full collections would stall writes and publishes).
    gc.freeze()
    print("ready", flush=True)
    records = array.array("d")
    period = 1.0 / SLICES_PER_S
    due = float(math.ceil(time.time()))
    tick = 0
    try:
        while not stop.is_set():
            for chunk in slices:
                if stop.is_set():
                    break
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = time.time()
                stamp = cast(ua.DateTime, datetime.fromtimestamp(started, UTC))
                dv = ua.DataValue(
                    ua.Variant(float(tick), ua.VariantType.Double),
                    SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )
                for node_id in chunk:
                    await server.write_attribute_value(node_id, dv)
                records.extend((due, started, time.time(), float(len(chunk))))
                due += period
            tick += 1
    finally:
        await asyncio.to_thread(out.write_bytes, records.tobytes())
        await server.stop()


@dataclass
class GeneratorFigures:
    """What the servers achieved in the measured window, from their own records."""

    written: int  # values written by slices that started in the window
    writes_per_s: float
    target_per_s: int
    start_delay_p99_s: float
    start_delay_max_s: float

    @property
    def share(self) -> float:
        return self.writes_per_s / self.target_per_s if self.target_per_s else 0.0

    @property
    def held(self) -> bool:
        return (
            self.share >= GENERATOR_MIN_SHARE and self.start_delay_p99_s <= GENERATOR_LATE_LIMIT_S
        )


def generator_figures(
    files: Sequence[Path], target_per_s: int, start: float, end: float
) -> GeneratorFigures:
    written = 0
    delays: list[float] = []
    for path in files:
        values = array.array("d")
        if path.exists():  # a server that died wrote nothing: no writes, the step fails
            values.frombytes(path.read_bytes())
        for k in range(0, len(values), SLICE_FIELDS):
            due, started, _finished, count = values[k : k + SLICE_FIELDS]
            if start <= due < end:
                delays.append(started - due)
            if start <= started < end:
                written += int(count)
    delays.sort()
    if not delays:
        return GeneratorFigures(0, 0.0, target_per_s, math.inf, math.inf)
    return GeneratorFigures(
        written=written,
        writes_per_s=written / (end - start),
        target_per_s=target_per_s,
        start_delay_p99_s=delays[min(len(delays) - 1, int(0.99 * len(delays)))],
        start_delay_max_s=delays[-1],
    )


# --- the lag meter (subprocess ``--meter PORT FILE``) ------------------------------------


class _TsOnly(msgspec.Struct):
    ts: str


class _SamplesOnly(msgspec.Struct):
    samples: list[_TsOnly]


class LagMeter:
    """Subscribes to the edge samples topic (paho, its own thread); records (arrival, lag).

    Decodes only the samples' timestamps, and parses each distinct timestamp once (a slice
    of a server shares one), so measuring stays cheap next to the agent.
    """

    def __init__(self, port: int) -> None:
        self.records = array.array("d")
        self._decoder = msgspec.json.Decoder(_SamplesOnly)
        self._stamps: dict[str, float] = {}
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
        stamps = self._stamps
        if len(stamps) > 10_000:
            stamps.clear()
        for s in self._decoder.decode(msg.payload).samples:
            at = stamps.get(s.ts)
            if at is None:
                at = stamps[s.ts] = datetime.fromisoformat(s.ts).timestamp()
            self.records.append(arrival)
            self.records.append(arrival - at)
        self.first.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def recent_median_lag(self, now: float, span_s: float = 1.0) -> float | None:
        """Median lag of the samples that arrived in the last ``span_s`` seconds."""
        records = self.records  # appended to by the paho thread; read from the end only
        lags = []
        k = len(records) - 2
        while k >= 0 and records[k] >= now - span_s:
            lags.append(records[k + 1])
            k -= 2
        return statistics.median(lags) if lags else None


def meter_main(port: int, out: Path) -> None:
    """Prints ``ready`` once subscribed, ``first`` when the first envelope arrives and
    ``steady`` once the lag has settled; on SIGTERM writes the records to ``out`` as doubles
    (arrival, lag, ...) and exits."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    meter = LagMeter(port)
    print("ready", flush=True)
    meter.first.wait()
    print("first", flush=True)
    steady_since: float | None = None
    while not stop.wait(0.5):
        now = time.time()
        lag = meter.recent_median_lag(now)
        if lag is None or lag >= STEADY_LAG_S:
            steady_since = None
        elif steady_since is None:
            steady_since = now
        elif now - steady_since >= STEADY_FOR_S:
            print("steady", flush=True)
            break
    stop.wait()
    meter.close()  # the paho thread stops before the records are read
    out.write_bytes(meter.records.tobytes())


def read_records(path: Path) -> list[tuple[float, float]]:
    values = array.array("d")
    values.frombytes(path.read_bytes())
    return list(zip(values[0::2], values[1::2], strict=True))


# --- CPU accounting ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    agent: float
    servers: list[float]
    meter: float
    broker: float
    machine: float

    @classmethod
    def take(cls, servers: Sequence[int], meter: int, broker: int) -> CpuSnapshot:
        return cls(
            agent=time.process_time(),
            servers=[cpu_seconds(pid) for pid in servers],
            meter=cpu_seconds(meter),
            broker=cpu_seconds(broker),
            machine=machine_busy_seconds(),
        )


@dataclass
class CpuShares:
    """Share of one core per process during the window; ``other`` is the rest of the
    machine (other users' processes), in cores."""

    agent: float = 0.0
    servers: list[float] = field(default_factory=list)
    meter: float = 0.0
    broker: float = 0.0
    other: float = 0.0

    @property
    def saturated_by_others(self) -> bool:
        """Every core was busy and a noticeable part of that was other processes."""
        busy = self.agent + sum(self.servers) + self.meter + self.broker + self.other
        return busy >= SATURATED_SHARE * CORES and self.other >= OTHER_LOAD_NOTICEABLE

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot, seconds: float) -> CpuShares:
        servers = [(y - x) / seconds for x, y in zip(a.servers, b.servers, strict=True)]
        ours = (
            (b.agent - a.agent)
            + (sum(b.servers) - sum(a.servers))
            + (b.meter - a.meter)
            + (b.broker - a.broker)
        )
        return cls(
            agent=(b.agent - a.agent) / seconds,
            servers=servers,
            meter=(b.meter - a.meter) / seconds,
            broker=(b.broker - a.broker) / seconds,
            other=max(0.0, (b.machine - a.machine) - ours) / seconds,
        )


# --- one step ---------------------------------------------------------------------------


async def _expect(stream: asyncio.StreamReader, word: bytes, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        line = await stream.readline()
    if line.strip() != word:
        raise RuntimeError(f"expected {word!r} from a benchmark subprocess, got {line!r}")


async def _relay(name: str, stream: asyncio.StreamReader) -> None:
    """Print what a server subprocess says until it exits."""
    async for line in stream:
        print(f"  {name}: {line.decode().rstrip()}", flush=True)


@dataclass
class StepResult:
    items: int
    servers: int
    received: int
    expected: int
    p50: float
    p99: float
    growth: float
    generator: GeneratorFigures
    cpu: CpuShares
    settle_s: float  # from the first sample until the lag settled

    @property
    def held(self) -> bool:
        return (
            self.p99 <= P99_LIMIT_S
            and self.growth <= GROWTH_LIMIT_S
            and self.received >= RECEIVED_MIN_SHARE * self.expected
        )


def split(n: int, per_server: int) -> list[tuple[int, int]]:
    """(first, count) of each server's variables: as even as possible, at most
    ``per_server`` each."""
    servers = max(1, math.ceil(n / per_server))
    base, extra = divmod(n, servers)
    parts, first = [], 0
    for k in range(servers):
        count = base + (1 if k < extra else 0)
        parts.append((first, count))
        first += count
    return parts


def edge_config(
    parts: Sequence[tuple[int, int]], ports: Sequence[int], mqtt_port: int, workdir: Path
) -> EdgeConfig:
    sources = []
    for k, ((first, count), port) in enumerate(zip(parts, ports, strict=True)):
        nodes = [
            {"node_id": f"ns=2;s=v{i}", "asset": f"bench/a/l{k}/m{i // 1000}", "signal": f"v{i}"}
            for i in range(first, first + count)
        ]
        sources.append(
            {
                "type": "opcua",
                "name": f"plc-{k}",
                "endpoint": f"opc.tcp://127.0.0.1:{port}/bench/",
                "publishing_interval_ms": 200,
                "nodes": nodes,
            }
        )
    n = sum(count for _, count in parts)
    return EdgeConfig.model_validate(
        {
            "agent_id": "bench-edge",
            "uplink": {"broker": f"mqtt://127.0.0.1:{mqtt_port}"},
            "buffer": {"path": str(workdir / f"buffer-{n}.sqlite"), "max_batch_samples": 5000},
            "sources": sources,
        }
    )


async def run_step(
    n: int, per_server: int, seconds: float, broker: tuple[int, int], workdir: Path
) -> StepResult:
    mqtt_port, broker_pid = broker
    parts = split(n, per_server)
    ports = [free_port() for _ in parts]
    slice_files = [workdir / f"slices-{n}-{k}.bin" for k in range(len(parts))]
    records = workdir / f"lags-{n}.bin"
    servers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            str(first),
            str(count),
            str(port),
            str(out),
            stdout=subprocess.PIPE,
        )
        for (first, count), port, out in zip(parts, ports, slice_files, strict=True)
    ]
    meter = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--meter", str(mqtt_port), str(records), stdout=subprocess.PIPE
    )
    relays: list[asyncio.Task[None]] = []
    try:
        assert meter.stdout is not None
        await _expect(meter.stdout, b"ready", 30)
        for k, server in enumerate(servers):
            assert server.stdout is not None
            await _expect(server.stdout, b"ready", 300)
            relays.append(asyncio.create_task(_relay(f"plc-{k}", server.stdout)))
        async with EdgeAgent(edge_config(parts, ports, mqtt_port, workdir)):
            # Subscribing N items takes a while for large N; measure once samples flow
            # and the lag has settled.
            await _expect(meter.stdout, b"first", 300)
            settle_started = time.time()
            try:
                await _expect(meter.stdout, b"steady", SETTLE_TIMEOUT_S)
            except TimeoutError:
                print(f"  the lag did not settle within {SETTLE_TIMEOUT_S:g} s", flush=True)
            settled_after = time.time() - settle_started
            start = time.time() + WARMUP_S
            end = start + seconds
            await asyncio.sleep(start - time.time())
            pids = [s.pid for s in servers]
            before = CpuSnapshot.take(pids, meter.pid, broker_pid)
            await asyncio.sleep(end - time.time())
            after = CpuSnapshot.take(pids, meter.pid, broker_pid)
            await asyncio.sleep(P99_LIMIT_S + 1)  # delivery of what the window read
    finally:
        for process in (meter, *servers):
            if process.returncode is None:
                process.terminate()
            await process.wait()
        for relay in relays:
            await relay
    # The samples written in the window (by source timestamp) against what the servers say
    # they wrote in it; one arriving after the meter stopped counts as missing.
    window = [(at - lag, lag) for at, lag in read_records(records) if start <= at - lag < end]
    generator = generator_figures(slice_files, n, start, end)
    cpu = CpuShares.between(before, after, seconds)
    lags = sorted(lag for _, lag in window)
    if not lags:
        inf = math.inf
        return StepResult(
            n, len(parts), 0, generator.written, inf, inf, inf, generator, cpu, settled_after
        )
    middle = (start + end) / 2
    first = [lag for ts, lag in window if ts < middle] or [0.0]
    second = [lag for ts, lag in window if ts >= middle] or [0.0]
    return StepResult(
        items=n,
        servers=len(parts),
        received=len(lags),
        expected=generator.written,
        p50=statistics.median(lags),
        p99=lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        growth=statistics.median(second) - statistics.median(first),
        generator=generator,
        cpu=cpu,
        settle_s=settled_after,
    )


def describe(r: StepResult) -> str:
    g, c = r.generator, r.cpu
    return (
        f"{r.items:>7} items on {r.servers} server(s): "
        f"{r.received} of {r.expected} written samples arrived, "
        f"lag p50 {r.p50:.3f} s, p99 {r.p99:.3f} s, growth {r.growth:+.3f} s "
        f"(settled {r.settle_s:.0f} s after the first sample)\n"
        f"          generator {g.writes_per_s:.0f}/s of {g.target_per_s}/s ({g.share:.1%}), "
        f"slice start delay p99 {g.start_delay_p99_s * 1000:.0f} ms "
        f"max {g.start_delay_max_s * 1000:.0f} ms\n"
        f"          CPU (share of one core): agent {c.agent:.0%}, servers "
        f"{sum(c.servers):.0%} (max {max(c.servers, default=0):.0%} per process), "
        f"meter {c.meter:.0%}, mosquitto {c.broker:.0%}, other load {c.other:.0%}"
    )


async def bench(
    steps: list[int], per_server: int, seconds: float
) -> tuple[dict[str, object], bool]:
    """The figures, and whether every step that ran was a clean measurement of the agent
    (the generator kept up and the machine was not saturated by other load)."""
    best: StepResult | None = None
    stopped_by = None
    clean = True
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as broker:
        for n in steps:
            result = await run_step(n, per_server, seconds, broker, Path(tmp))
            if not result.generator.held:
                print(describe(result) + "\n          -> GENERATOR FELL BEHIND", flush=True)
                print(
                    f"!! the OPC UA servers did not write {n} changes per second on time "
                    f"(need >= {GENERATOR_MIN_SHARE:.0%} and slice start delay p99 <= "
                    f"{GENERATOR_LATE_LIMIT_S * 1000:.0f} ms): this step measures the "
                    "generator, not the agent. Use more servers (--items-per-server) or a "
                    "less loaded machine.",
                    flush=True,
                )
                stopped_by, clean = "generator", False
                break
            if not result.held and result.cpu.saturated_by_others:
                print(describe(result) + "\n          -> MACHINE SATURATED", flush=True)
                print(
                    f"!! the step did not hold while other processes used "
                    f"{result.cpu.other:.0%} of a core and all {CORES} cores were busy: "
                    "this is not a clean measurement of the agent. Run again on a quieter "
                    "machine.",
                    flush=True,
                )
                stopped_by, clean = "saturated machine", False
                break
            verdict = "held" if result.held else "did not hold"
            print(describe(result) + f"\n          -> {verdict}", flush=True)
            if not result.held:
                stopped_by = "agent"
                break
            best = result
    figures: dict[str, object] = {
        "benchmark": "edge_opcua",
        "seconds_per_step": seconds,
        "items_per_server": per_server,
        "max_items_1hz": best.items if best else 0,
        "lag_p99_s": round(best.p99, 4) if best else None,
        "lag_p50_s": round(best.p50, 4) if best else None,
        "agent_cpu": round(best.cpu.agent, 3) if best else None,
        "servers_cpu": round(sum(best.cpu.servers), 3) if best else None,
        "generator_share": round(best.generator.share, 4) if best else None,
        "other_load_cpu": round(best.cpu.other, 3) if best else None,
        "stopped_by": stopped_by or "last step",
    }
    return figures, clean


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        first, count, port = (int(v) for v in sys.argv[2:5])
        asyncio.run(serve(first, count, port, Path(sys.argv[5])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--meter":
        meter_main(int(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--max-items", type=int, default=100_000, help="largest step to try")
    parser.add_argument("--quick", action="store_true", help="1k and 2k items, 8 s each")
    parser.add_argument("--items", type=int, help="measure this many items only")
    parser.add_argument(
        "--items-per-server",
        type=int,
        default=ITEMS_PER_SERVER,
        help="variables per generating OPC UA server (one agent source each)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.items is not None:
        steps, seconds = [args.items], 8.0 if args.quick else args.seconds
    elif args.quick:
        steps, seconds = [1_000, 2_000], 8.0
    else:
        steps, seconds = [n for n in STEPS if n <= args.max_items], args.seconds
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"steps {steps}, {seconds:g} s measured per step ({WARMUP_S:g} s after the lag "
        f"settles below {STEADY_LAG_S:g} s), "
        f"<= {args.items_per_server} items per server, {os.cpu_count()} CPUs, "
        f"load average {load}",
        flush=True,
    )
    figures, clean = asyncio.run(bench(steps, args.items_per_server, seconds))
    print(json.dumps(figures))
    if not clean:
        sys.exit(1)


if __name__ == "__main__":
    main()
