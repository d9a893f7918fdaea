"""MQTT consumption with paho-mqtt in its own network thread.

- QoS 1 subscription in a persistent session, so the broker keeps messages for the gateway
  while it is down.
- Manual acknowledgement: a message is acknowledged only after the batch containing it is
  committed (``acknowledge`` is called by the writer thread).
- Backpressure: decoded messages go into the bounded inbox; when it is full, the paho
  thread blocks in ``put`` and stops reading the socket. With MQTT v5 the CONNECT also
  announces ``receive_maximum``, the most unacknowledged messages the broker may send.
- Decoding runs here, in the network thread, so the writer thread only batches and writes:
  the two overlap where either is inside C code (msgspec, socket reads, SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.deadletters import dead_letter_json
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats
from gateway.stores.base import Batch
from gateway.writer import Inbound
from karkhana import topics

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
OUTGOING_QUEUE_MAX = 1000
"""Dead letters waiting to be published while disconnected (they are stored anyway)."""
DEADLETTER_ROOM_WAIT_S = 10.0
"""How long the writer waits, while connected, for room in the outgoing queue before a
dead letter is only stored (a burst of bad messages then slows ingestion instead of
skipping the topic)."""


def connect_as_configured(client: mqtt.Client, settings: GatewaySettings) -> None:
    """Credentials, TLS and reconnect backoff of every MQTT connection the gateway opens."""
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.broker_tls:
        client.tls_set()
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)


@dataclass(frozen=True, slots=True)
class AckToken:
    mid: int
    qos: int
    generation: int
    """Connection the message arrived on; acks never cross a reconnect."""


class MqttConsumer:
    """Subscribes to the edge sample topics and feeds the writer's inbox.

    Use as ``async with MqttConsumer(...)``; :meth:`stop_intake` stops queueing new
    messages (they stay unacknowledged, so the broker redelivers them to the next session).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        inbox: queue.Queue[object],
        stats: GatewayStats | None = None,
    ) -> None:
        self._settings = settings
        self._inbox = inbox
        self._stats = stats if stats is not None else GatewayStats()
        self._stopping = False
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._room = threading.Condition()  # a PUBACK freed room in the outgoing queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = asyncio.Event()
        self.topic_filter = (
            topics.shared(topics.EDGE_SAMPLES_FILTER, settings.share_group)
            if settings.share_group
            else topics.EDGE_SAMPLES_FILTER
        )
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self._settings
        if s.mqtt_v5:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=True,
            )
        else:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                clean_session=False,
                protocol=MQTTProtocolVersion.MQTTv311,
                manual_ack=True,
            )
        client.manual_ack_set(True)
        connect_as_configured(client, s)
        client.max_queued_messages_set(OUTGOING_QUEUE_MAX)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> MqttConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect in the background (paho retries with backoff until the broker answers)."""
        self._loop = asyncio.get_running_loop()
        s = self._settings
        properties = None
        if s.mqtt_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = s.session_expiry_s
            properties.ReceiveMaximum = s.receive_maximum
        self._client.connect_async(
            s.broker_host,
            s.broker_port,
            keepalive=s.keepalive_s,
            clean_start=False if s.mqtt_v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        log.info(
            "gateway consuming %s from %s as %r (MQTT %s)",
            self.topic_filter,
            s.broker,
            s.client_id,
            "5" if s.mqtt_v5 else "3.1.1",
        )

    async def wait_subscribed(self) -> None:
        """Until the subscription is confirmed by the broker."""
        await self._subscribed.wait()

    def stop_intake(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        """Disconnect (after the acks already queued) and stop the network thread."""
        self._stopping = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    # -- called by the writer thread -------------------------------------------------------

    def acknowledge(self, items: list[Inbound], batch: Batch) -> None:
        client = self._client
        skipped = 0
        with self._ack_lock:
            generation = self._generation
            for item in items:
                token = item.token
                if not isinstance(token, AckToken) or token.qos == 0:
                    continue
                if token.generation != generation:
                    skipped += 1
                    continue
                client.ack(token.mid, token.qos)
        if skipped:
            log.info(
                "%d committed message(s) arrived on an earlier connection; the broker "
                "redelivers them and de-duplication skips them",
                skipped,
            )
        for letter in batch.dead_letters:
            info = self._publish_dead_letter(dead_letter_json(letter))
            if (
                info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
                and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN
            ):
                log.warning(
                    "dead letter from %s not published (%s); it is in the store",
                    letter.topic,
                    mqtt.error_string(info.rc),
                )

    def _publish_dead_letter(self, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish QoS 1; while connected and the outgoing queue is full, wait for PUBACKs
        to make room (bounded by DEADLETTER_ROOM_WAIT_S)."""
        client = self._client
        deadline = time.monotonic() + DEADLETTER_ROOM_WAIT_S
        while True:
            info = client.publish(topics.DEADLETTER, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or not client.is_connected():
                return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return info
            with self._room:  # notified on every PUBACK; re-checked at least twice a second
                self._room.wait(min(remaining, 0.5))

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._room:
            self._room.notify_all()

    def _notify(self, subscribed: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        action = self._subscribed.set if subscribed else self._subscribed.clear
        try:
            loop.call_soon_threadsafe(action)
        except RuntimeError:
            log.debug("event loop closed; subscription state not reported")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self._settings.broker, reason_code)
            return
        with self._ack_lock:
            self._generation += 1
        log.info(
            "connected to %s (session present: %s)", self._settings.broker, flags.session_present
        )
        client.subscribe(self.topic_filter, qos=1)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("cannot connect to %s; retrying", self._settings.broker)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._notify(False)
        if self._stopping:
            log.info("disconnected from %s", self._settings.broker)
        else:
            log.warning(
                "lost the connection to %s (%s); reconnecting", self._settings.broker, reason_code
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused the subscription to %s: %s", self.topic_filter, failed[0])
            return
        self._notify(True)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._stopping:
            return  # unacknowledged: redelivered to the next session
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = "<topic is not valid UTF-8>"
            token = AckToken(msg.mid, msg.qos, self._generation)
            # Only this thread writes this counter; readers may see it a message late.
            self._stats.messages_received += 1
            # Queued raw: the writer thread parses it, where its objects are used.
            inbound = Inbound(None, token, topic, bytes(msg.payload), time.time_ns())
            self._inbox.put(inbound)  # blocks when full: backpressure
        except Exception:
            # Never let a message kill the network thread; it stays unacknowledged.
            log.exception("could not queue a message (mid %s); the broker redelivers it", msg.mid)
