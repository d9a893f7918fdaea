"""The gateway's own health as InfluxDB series, for the platform health dashboard.

Every ``platform_stats_s`` seconds (gateway setting; 0 disables; InfluxDB store only) one
point of ``platform`` (tag ``gateway``: the MQTT client id) with the gateway's counters since
start, the rates over the last interval, the mean store write time, the consumer lag and the
depth of its inbox; and one point of ``edge_agent`` (tag ``agent``) per edge agent whose
retained status (``karkhana/v1/edge/{agent}/status``) the gateway has seen. Schemas:
``docs/storage.md``.

A write that fails is logged and the next interval tries again: health series must never
stop ingestion.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from gateway.metrics import InboxGauges
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats
from karkhana.errors import StoreError
from karkhana.storage.influx_schema import InfluxHttp, escape_tag
from karkhana.tasks import cancel_and_wait
from karkhana.topics import PREFIX

log = logging.getLogger(__name__)

PLATFORM = "platform"
EDGE_AGENT = "edge_agent"
STATUS_FILTER = f"{PREFIX}/edge/+/status"
RECONNECT_S = 5.0

_COUNTERS = (
    "messages_received",
    "samples_received",
    "messages",
    "samples_written",
    "samples_duplicate",
    "envelopes_duplicate",
    "dead_letters",
    "batches",
    "write_errors",
)


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What an edge agent's retained status message says."""

    agent: str
    online: bool
    ready: bool
    sources: int
    sources_connected: int
    samples_pending: int | None = None
    """Samples in the agent's store-and-forward buffer (None: its status does not say)."""
    buffer_bytes: int | None = None


def parse_status(topic: str, payload: bytes) -> AgentStatus | str:
    """The status of ``karkhana/v1/edge/{agent}/status``, or why it cannot be read."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[4] != "status" or not parts[3]:
        return f"not an agent status topic: {topic!r}"
    try:
        body = json.loads(payload)
    except ValueError as exc:
        return f"status on {topic} is not JSON: {exc}"
    if not isinstance(body, dict) or body.get("state") not in ("online", "offline"):
        return f"status on {topic} has no 'state' online/offline"
    sources = body.get("sources")
    states = list(sources.values()) if isinstance(sources, dict) else []
    online = body["state"] == "online"
    return AgentStatus(
        agent=parts[3],
        online=online,
        ready=online and body.get("ready") is True,
        sources=len(states),
        sources_connected=sum(1 for s in states if s == "connected") if online else 0,
        samples_pending=_count(body.get("samples_pending")),
        buffer_bytes=_count(body.get("buffer_bytes")),
    )


def _count(value: object) -> int | None:
    """A non-negative integer of a status message, else None (older agents omit it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _rate(now: int, before: int, seconds: float) -> float:
    return max(0, now - before) / seconds if seconds > 0 else 0.0


def platform_line(
    gateway: str,
    now: GatewayStats,
    before: GatewayStats | None,
    seconds: float,
    inbox: InboxGauges,
    agents: dict[str, AgentStatus],
    ts_ns: int,
) -> str:
    """One ``platform`` point: totals since start, rates over the last ``seconds``."""
    fields = [f"{name}={getattr(now, name)}i" for name in _COUNTERS]
    prev = before or GatewayStats()
    fields += [
        f"messages_per_s={_rate(now.messages, prev.messages, seconds)!r}",
        f"samples_per_s={_rate(now.samples_written, prev.samples_written, seconds)!r}",
        f"dead_letters_new={max(0, now.dead_letters - prev.dead_letters)}i",
        f"commit_lag_s={float(now.commit_lag_s)!r}",
        f"inbox_messages={inbox.messages()}i",
        f"inbox_bytes={inbox.bytes()}i",
        f"agents_online={sum(1 for a in agents.values() if a.online)}i",
        f"agents_known={len(agents)}i",
    ]
    writes = sum(now.write_seconds.counts) - sum(prev.write_seconds.counts)
    if writes > 0:
        mean = (now.write_seconds.total - prev.write_seconds.total) / writes
        fields.append(f"write_s_mean={mean!r}")
    return f"{PLATFORM},gateway={escape_tag(gateway)} {','.join(fields)} {ts_ns}"


def agent_line(status: AgentStatus, ts_ns: int) -> str:
    fields = (
        f"online={int(status.online)}i,ready={int(status.ready)}i,sources={status.sources}i,"
        f"sources_connected={status.sources_connected}i"
    )
    if status.samples_pending is not None:
        fields += f",samples_pending={status.samples_pending}i"
    if status.buffer_bytes is not None:
        fields += f",buffer_bytes={status.buffer_bytes}i"
    return f"{EDGE_AGENT},agent={escape_tag(status.agent)} {fields} {ts_ns}"


class PlatformStats:
    """``async with PlatformStats(...)``: writes the health series until the block ends."""

    def __init__(
        self,
        settings: GatewaySettings,
        stats: Callable[[], GatewayStats],
        inbox: InboxGauges,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._inbox = inbox
        self._http = InfluxHttp(settings.influx_target())
        self._agents: dict[str, AgentStatus] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def agents(self) -> dict[str, AgentStatus]:
        return dict(self._agents)

    async def __aenter__(self) -> PlatformStats:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="platform-stats"),
            asyncio.create_task(self._watch_agents(), name="agent-status"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        await asyncio.to_thread(self._http.close)

    async def _write_loop(self) -> None:
        interval = self._settings.platform_stats_s
        before: GatewayStats | None = None
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now, elapsed = self._stats(), time.monotonic() - last
            last += elapsed
            ts_ns = time.time_ns()
            lines = [
                platform_line(
                    self._settings.client_id, now, before, elapsed, self._inbox, self._agents, ts_ns
                )
            ]
            lines += [agent_line(a, ts_ns) for a in self._agents.values()]
            before = now
            try:
                await asyncio.to_thread(self._http.write_v1, "\n".join(lines).encode())
            except StoreError as exc:
                log.warning("could not write the platform health series: %s", exc)

    async def _watch_agents(self) -> None:
        """Follow the agents' retained status messages; reconnect when the broker goes."""
        s = self._settings
        while True:
            try:
                async with aiomqtt.Client(
                    s.broker_host,
                    s.broker_port,
                    username=s.username,
                    password=s.password.get_secret_value() if s.password else None,
                    identifier=f"{s.client_id}-status",
                    tls_context=ssl.create_default_context() if s.broker_tls else None,
                ) as client:
                    await client.subscribe(STATUS_FILTER, qos=1)
                    async for message in client.messages:
                        self._on_status(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("agent status watch lost (%s); reconnecting in %gs", exc, RECONNECT_S)
            await asyncio.sleep(RECONNECT_S)

    def _on_status(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            log.warning("agent status on %s has no payload; ignored", topic)
            return
        if not payload:
            # An emptied retained message: the agent was removed.
            self._agents.pop(topic.split("/")[3] if topic.count("/") == 4 else topic, None)
            return
        parsed = parse_status(topic, bytes(payload))
        if isinstance(parsed, str):
            log.warning("agent status ignored: %s", parsed)
            return
        self._agents[parsed.agent] = parsed


def platform_stats(
    settings: GatewaySettings, stats: Callable[[], GatewayStats], inbox: InboxGauges
) -> PlatformStats | None:
    """The health writer ``settings`` ask for, or None (SQLite store, or disabled)."""
    if settings.store != "influxdb" or settings.platform_stats_s <= 0:
        return None
    return PlatformStats(settings, stats, inbox)
