"""The MQTT connection to the uplink broker, kept up with reconnects and backoff.

On every connection the agent's retained status becomes ``online``; a retained Last Will
turns it ``offline`` if the agent vanishes, and a clean shutdown publishes ``offline``
itself. While connected, a *session* coroutine (the forwarder) runs with the client; it is
cancelled when the connection drops and started again on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import aiomqtt

from edge.config import EdgeConfig, broker_host_port
from edge.sources.base import Backoff
from karkhana.models import iso_utc, utc_now
from karkhana.tasks import cancel_and_wait
from karkhana.topics import edge_status

log = logging.getLogger(__name__)

Session = Callable[[aiomqtt.Client], Coroutine[Any, Any, None]]

OFFLINE_PUBLISH_TIMEOUT_S = 2.0


def status_payload(state: str, agent_id: str, details: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"state": state, "agent": agent_id, "ts": iso_utc(utc_now())}
    if details:
        body.update(details)
    return json.dumps(body).encode()


class Uplink:
    """Owns the uplink connection task; ``connected`` tells whether a session is running."""

    def __init__(
        self,
        config: EdgeConfig,
        session: Session,
        *,
        backoff_cap_s: float = 10.0,
        publish_timeout_s: float = 30.0,
        status_details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._backoff = Backoff(cap=backoff_cap_s)
        self._publish_timeout_s = publish_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()
        self._closing = asyncio.Event()
        self.connected = False
        self.connections = 0
        self.connect_failures = 0
        self.status_topic = edge_status(config.agent_id)
        self._status_details = status_details
        self._status_dirty = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"uplink:{self._config.agent_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._closing.set()
        if self.connected:
            # The session notices ``_closing``, publishes the offline status, disconnects.
            await asyncio.wait({task}, timeout=OFFLINE_PUBLISH_TIMEOUT_S + 1)
        await cancel_and_wait(task, retry_s=OFFLINE_PUBLISH_TIMEOUT_S + 1)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The connection task; it only ends by cancellation or an unexpected error."""
        return self._task

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    def _client(self) -> aiomqtt.Client:
        host, port = broker_host_port(self._config.uplink.broker)
        agent = self._config.agent_id
        return aiomqtt.Client(
            host,
            port,
            identifier=self._config.client_id,
            username=self._config.uplink.username,
            password=self._config.uplink.password,
            keepalive=self._config.uplink.keepalive_s,
            will=aiomqtt.Will(
                self.status_topic, status_payload("offline", agent), qos=1, retain=True
            ),
            clean_session=True,
            timeout=self._publish_timeout_s,
        )

    async def _run(self) -> None:
        broker = self._config.uplink.broker
        while not self._closing.is_set():
            client = self._client()
            try:
                async with client:
                    await self._publish_online(client)
                    self.connections += 1
                    self._backoff.reset()
                    log.info("uplink connected to %s", broker)
                    self.connected = True
                    self._connected_event.set()
                    try:
                        await self._serve(client)
                    except asyncio.CancelledError:
                        self.connected = False
                        self._connected_event.clear()
                        await self._publish_offline(client)
                        raise
                    self.connected = False
                    self._connected_event.clear()
                    await self._publish_offline(client)
                    return  # closing
            except aiomqtt.MqttError as exc:
                if self.connected:
                    log.warning("uplink to %s lost: %s", broker, exc)
                else:
                    self.connect_failures += 1
                    log.warning("uplink to %s unavailable: %s", broker, exc)
            finally:
                self.connected = False
                self._connected_event.clear()
            delay = self._backoff.next_delay()
            log.info("uplink: reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run the session until the uplink closes (returns), the session fails or the
        connection drops (raises)."""
        watch = asyncio.create_task(self._watch(client))
        session = asyncio.create_task(self._session(client))
        closing = asyncio.create_task(self._closing.wait())
        status = asyncio.create_task(self._status_loop(client))
        try:
            done, _ = await asyncio.wait(
                {watch, session, closing, status}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            tasks: tuple[asyncio.Task[Any], ...] = (closing, status, watch, session)
            for task in tasks:
                await cancel_and_wait(task)
        if closing in done:
            return
        for task in done:
            task.result()  # re-raises the MqttError that ended the connection
        raise aiomqtt.MqttError("uplink session ended")

    def status_changed(self) -> None:
        """Republish the online status (with fresh details) on the current connection."""
        self._status_dirty.set()

    async def _publish_online(self, client: aiomqtt.Client) -> None:
        self._status_dirty.clear()
        details = self._status_details() if self._status_details else None
        await client.publish(
            self.status_topic,
            status_payload("online", self._config.agent_id, details),
            qos=1,
            retain=True,
        )

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        """Republish on every change, and every ``status_interval_s`` for the buffer depth."""
        interval = self._config.uplink.status_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), interval)
            await self._publish_online(client)

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # No subscriptions: the iterator only ever ends by raising MqttError on disconnect.
        async for message in client.messages:
            log.debug("uplink: unexpected message on %s", message.topic)

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(
                self.status_topic,
                status_payload("offline", self._config.agent_id),
                qos=1,
                retain=True,
                timeout=OFFLINE_PUBLISH_TIMEOUT_S,
            )
        except aiomqtt.MqttError as exc:
            log.warning("uplink: could not publish the offline status: %s", exc)
