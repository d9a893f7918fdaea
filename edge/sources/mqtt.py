"""MQTT sensor source: subscribe to topic patterns, map each message onto a sample.

Messages that cannot be parsed are never dropped silently: they are logged, counted and
handed to the sink as dead letters (forwarded on ``karkhana/v1/deadletter``). Topics with
``format: sparkplug_b`` go through an :class:`edge.sparkplug.SparkplugHost`, whose rebirth
requests are published on the same connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt

from edge.config import MqttSourceConfig, broker_host_port
from edge.mapping import PayloadError, TopicMapping, first_match
from edge.sources.base import Backoff, DeadLetter, Sink, SourceStats
from edge.sparkplug import SparkplugError, SparkplugHost
from karkhana.models import utc_now
from karkhana.tasks import cancel_and_wait

log = logging.getLogger(__name__)

INCOMING_QUEUE_SIZE = 10_000


@dataclass
class MqttSourceStats(SourceStats):
    """SourceStats plus the Sparkplug B rebirth requests this source published."""

    rebirth_requests: int = 0


class MqttSource:
    """Reads sensor messages from one broker (async context manager)."""

    def __init__(
        self,
        config: MqttSourceConfig,
        sink: Sink,
        *,
        broker: str,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        backoff_cap_s: float = 10.0,
    ) -> None:
        self.name = config.name
        self._stats = MqttSourceStats()
        self.stats: SourceStats = self._stats
        self._config = config
        self._sink = sink
        self._broker = broker
        self._client_id = client_id
        self._username = username
        self._password = password
        self._keepalive_s = keepalive_s
        self._backoff = Backoff(cap=backoff_cap_s)
        self._mappings = [TopicMapping.compile(t) for t in config.topics]
        self._filters = list(dict.fromkeys(m.filter for m in self._mappings))
        self._sparkplug = {
            id(m): SparkplugHost(m.spec) for m in self._mappings if m.spec.format == "sparkplug_b"
        }
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                if self.stats.connected:
                    log.warning("mqtt %s: connection to %s lost: %s", self.name, self._broker, exc)
                else:
                    self.stats.connect_failures += 1
                    log.warning("mqtt %s: cannot connect to %s: %s", self.name, self._broker, exc)
            finally:
                if self.stats.connected:
                    self.stats.connected = False
                    self._sink.source_state_changed()
            delay = self._backoff.next_delay()
            log.info("mqtt %s: reconnecting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        host, port = broker_host_port(self._broker)
        client = aiomqtt.Client(
            host,
            port,
            identifier=self._client_id,
            username=self._username,
            password=self._password,
            keepalive=self._keepalive_s,
            # A persistent session lets the broker keep QoS 1 messages during short drops.
            clean_session=False,
            max_queued_incoming_messages=INCOMING_QUEUE_SIZE,
        )
        # Acknowledge a message to the broker only once its samples are in the disk buffer:
        # a crash before that makes the broker redeliver it (persistent session), and a
        # repeat is harmless downstream (the store is keyed by series and timestamp).
        # aiomqtt does not expose paho's manual acknowledgement, so reach its client.
        paho = client._client
        paho.manual_ack_set(True)
        async with client:
            # One SUBSCRIBE for every filter: a broker may deliver a filter's retained
            # messages before it answers the next SUBSCRIBE (amqtt does, then waits for
            # their PUBACKs), while this session acknowledges only once subscribed.
            await client.subscribe([(topic_filter, 1) for topic_filter in self._filters])
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.stats.connected = True
            self._sink.source_state_changed()
            self._backoff.reset()
            log.info("mqtt %s: subscribed to %s on %s", self.name, self._filters, self._broker)
            self._client = client
            acks: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
            acker = asyncio.create_task(self._ack_when_stored(paho, acks), name=f"ack:{self.name}")
            try:
                async for message in client.messages:
                    await self.handle(message.topic.value, message.payload)
                    if message.qos > 0:
                        acks.put_nowait((self._sink.ticket(), message.mid, message.qos))
            finally:
                self._client = None
                await cancel_and_wait(acker)

    async def _ack_when_stored(self, paho: Any, acks: asyncio.Queue[tuple[int, int, int]]) -> None:
        """Send each PUBACK, in arrival order, once that message's samples are stored.
        (Dead letters are stored before ``handle`` returns.) The broker's in-flight limit
        bounds this queue."""
        while True:
            ticket, mid, qos = await acks.get()
            await self._sink.wait_stored(ticket)
            paho.ack(mid, qos)

    async def handle(self, topic: str, payload: object) -> None:
        """Map one message onto a sample, or report it as a dead letter."""
        raw = _as_bytes(payload)
        found = first_match(self._mappings, topic)
        if found is None:
            await self._reject(topic, "topic matches no configured pattern", raw)
            return
        mapping, groups = found
        host = self._sparkplug.get(id(mapping))
        if host is not None:
            await self._handle_sparkplug(host, topic, raw)
            return
        try:
            sample = mapping.to_sample(groups, raw, utc_now())
        except PayloadError as exc:
            await self._reject(topic, str(exc), raw)
            return
        await self._sink.put(sample)
        self.stats.samples_read += 1

    async def _handle_sparkplug(self, host: SparkplugHost, topic: str, raw: bytes) -> None:
        try:
            result = host.handle(topic, raw, utc_now())
        except SparkplugError as exc:
            await self._reject(topic, str(exc), raw)
            return
        if result.rebirth is not None:
            await self._publish_rebirth(result.rebirth.topic, result.rebirth.payload, topic)
            log.warning(
                "mqtt %s: %s on %s; rebirth requested on %s",
                self.name,
                result.rebirth.reason,
                topic,
                result.rebirth.topic,
            )
        for sample in result.samples:
            await self._sink.put(sample)
        self.stats.samples_read += len(result.samples)
        if result.errors:
            shown = "; ".join(result.errors[:5])
            more = len(result.errors) - 5
            reason = shown + (f"; and {more} more" if more > 0 else "")
            await self._reject(topic, reason, raw)

    async def _publish_rebirth(self, ncmd_topic: str, payload: bytes, cause: str) -> None:
        self._stats.rebirth_requests += 1
        client = self._client
        if client is None:
            log.warning("mqtt %s: not connected, rebirth request for %s not sent", self.name, cause)
            return
        try:
            await client.publish(ncmd_topic, payload, qos=0)
        except aiomqtt.MqttError as exc:
            log.warning(
                "mqtt %s: cannot publish rebirth request %s: %s", self.name, ncmd_topic, exc
            )

    async def _reject(self, topic: str, reason: str, payload: bytes) -> None:
        self.stats.parse_errors += 1
        log.warning("mqtt %s: message on %s rejected: %s", self.name, topic, reason)
        await self._sink.dead_letter(DeadLetter.from_bytes(self.name, topic, reason, payload))


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
