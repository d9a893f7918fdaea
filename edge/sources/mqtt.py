"""MQTT sensor source: subscribe to topic patterns, map each message onto a sample.

Messages that cannot be parsed are never dropped silently: they are logged, counted and
handed to the sink as dead letters (forwarded on ``karkhana/v1/deadletter``).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

import aiomqtt

from edge.config import MqttSourceConfig, broker_host_port
from edge.mapping import PayloadError, TopicMapping, first_match
from edge.sources.base import Backoff, DeadLetter, Sink, SourceStats
from edge.tasks import cancel_and_wait
from karkhana.models import utc_now

log = logging.getLogger(__name__)

INCOMING_QUEUE_SIZE = 10_000


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
        self.stats = SourceStats()
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
        async with client:
            for topic_filter in self._filters:
                await client.subscribe(topic_filter, qos=1)
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.stats.connected = True
            self._sink.source_state_changed()
            self._backoff.reset()
            log.info("mqtt %s: subscribed to %s on %s", self.name, self._filters, self._broker)
            async for message in client.messages:
                await self.handle(message.topic.value, message.payload)

    async def handle(self, topic: str, payload: object) -> None:
        """Map one message onto a sample, or report it as a dead letter."""
        raw = _as_bytes(payload)
        found = first_match(self._mappings, topic)
        if found is None:
            await self._reject(topic, "topic matches no configured pattern", raw)
            return
        mapping, groups = found
        try:
            sample = mapping.to_sample(groups, raw, utc_now())
        except PayloadError as exc:
            await self._reject(topic, str(exc), raw)
            return
        await self._sink.put(sample)
        self.stats.samples_read += 1

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
