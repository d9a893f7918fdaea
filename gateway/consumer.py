"""MQTT consumption with paho-mqtt, driven by the writer thread itself.

- QoS 1 subscription in a persistent session, so the broker keeps messages for the gateway
  while it is down.
- Manual acknowledgement: a message is acknowledged only after the batch containing it is
  committed.
- One thread: the writer calls :meth:`MqttConsumer.take`, which runs paho's network I/O
  (select, read, write, keepalive, reconnect with backoff) until messages arrive, and
  returns them raw. Reading and committing alternate on that thread: no queue between two
  threads, no hand-off of every message across the GIL (which cost a third of the
  throughput when paho had its own thread).
- Backpressure: nothing is read from the socket while the writer commits, and never more
  than ``queue_max_messages`` / ``queue_max_bytes`` are held unacknowledged (read and not
  yet committed). With MQTT v5 the CONNECT also announces ``receive_maximum``, the most
  unacknowledged messages the broker may send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
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
"""How long the writer waits per batch, while connected, for room in the outgoing queue
before the batch's remaining dead letters are only stored (a burst of bad messages then
slows ingestion instead of skipping the topic)."""
READ_BURST = 1000
"""Packets read per readable socket before the writer gets the messages: bounds a batch's
overshoot of its limits and keeps keepalive and writes serviced under a flood."""


READ_AHEAD_BYTES = 64 * 1024


class _ReadAheadClient(mqtt.Client):
    """paho reads each packet in several receive calls (the type byte, each length byte,
    the body): one system call each. This client receives up to READ_AHEAD_BYTES per call
    and serves paho's reads from that buffer, which saves most of them under load."""

    _ahead_sock: object = None
    _ahead: bytes = b""
    _ahead_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._ahead_sock is not self._sock:  # a new connection: nothing read from it yet
            self._ahead_sock, self._ahead, self._ahead_pos = self._sock, b"", 0
        buf, pos = self._ahead, self._ahead_pos
        if pos >= len(buf):
            buf = super()._sock_recv(max(bufsize, READ_AHEAD_BYTES))
            if not buf:
                return buf  # the broker closed the connection
            self._ahead, pos = buf, 0
        end = pos + bufsize
        self._ahead_pos = end
        if pos == 0 and end >= len(buf):
            return buf
        return buf[pos:end]

    def buffered(self) -> int:
        """Bytes received from the socket that paho has not read yet."""
        if self._ahead_sock is not self._sock:
            return 0
        return max(0, len(self._ahead) - self._ahead_pos)


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
    """Subscribes to the edge sample topics; the writer thread takes messages from it.

    The event loop calls :meth:`start`, :meth:`wait_subscribed`, :meth:`stop_intake` and
    :meth:`close`; everything else (:meth:`take`, :meth:`wait`, :meth:`acknowledge`,
    :meth:`finish`) runs on the writer thread, which alone touches the paho client while it
    runs. After :meth:`stop_intake`, messages read are left unacknowledged: the broker
    redelivers them to the next session.
    """

    def __init__(self, settings: GatewaySettings, stats: GatewayStats | None = None) -> None:
        self._settings = settings
        self._stats = stats if stats is not None else GatewayStats()
        self._stopping = False
        self._generation = 0
        self._received: list[Inbound] = []
        """Read from the socket, not yet taken by the writer."""
        self._received_bytes = 0
        self._reads = 0
        self._held_messages = 0
        """Taken by the writer and not yet released (committed)."""
        self._held_bytes = 0
        self._reconnect_at = 0.0
        self._reconnect_delay = float(RECONNECT_MIN_S)
        self._connecting = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = asyncio.Event()
        self.topic_filter = (
            topics.shared(topics.EDGE_SAMPLES_FILTER, settings.share_group)
            if settings.share_group
            else topics.EDGE_SAMPLES_FILTER
        )
        self._client = self._make_client()

    def _make_client(self) -> _ReadAheadClient:
        s = self._settings
        client: _ReadAheadClient
        if s.mqtt_v5:
            client = _ReadAheadClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=True,
            )
        else:
            client = _ReadAheadClient(
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
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- event loop side -------------------------------------------------------------------

    async def __aenter__(self) -> MqttConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Set the connection up; the writer thread connects (and reconnects with backoff
        until the broker answers) in :meth:`take`."""
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
        self._connecting = True
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

    def wake(self) -> None:
        """Make a waiting :meth:`take` return now (any thread)."""
        # Fails only when a wake-up is already pending or the consumer is closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    async def close(self) -> None:
        """After the writer thread has ended: disconnect if it did not, free the sockets."""
        self._stopping = True
        if self._client.socket() is not None:
            self._client.disconnect()
        self._wake_r.close()
        self._wake_w.close()

    def queued(self) -> tuple[int, int]:
        """(messages, payload bytes) read and not yet committed (for metrics, any thread)."""
        return (
            len(self._received) + self._held_messages,
            self._received_bytes + self._held_bytes,
        )

    # -- writer thread ---------------------------------------------------------------------

    def take(self, timeout: float) -> list[Inbound]:
        """The messages read so far, waiting up to ``timeout`` s for the first of them."""
        if not self._received:
            deadline = time.monotonic() + timeout
            while True:
                self._service(max(0.0, deadline - time.monotonic()))
                if self._received or time.monotonic() >= deadline or self._drain_wake():
                    break
        taken, self._received = self._received, []
        self._held_messages += len(taken)
        self._held_bytes += self._received_bytes
        self._received_bytes = 0
        return taken

    def release(self, items: list[Inbound]) -> None:
        """Committed messages no longer count against the bounds (acknowledging may need to
        read: the PUBACKs that make room for dead letters come between messages)."""
        self._held_messages -= len(items)
        self._held_bytes -= sum(item.size for item in items)

    def wait(self, seconds: float) -> None:
        """Keep the connection serviced (keepalive, acks, reading up to the bounds) while the
        writer cannot commit; returns early on :meth:`wake`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._service(remaining)
            if self._drain_wake():
                return

    def finish(self) -> None:
        """After the last commit: send the queued acknowledgements and disconnect."""
        self._stopping = True
        client = self._client
        if client.socket() is None:
            return
        deadline = time.monotonic() + 5
        while client.want_write() and time.monotonic() < deadline:
            self._service(0.05, read=False)
        client.disconnect()

    def acknowledge(self, items: list[Inbound], batch: Batch) -> None:
        client = self._client
        generation = self._generation
        skipped = 0
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
        deadline = time.monotonic() + DEADLETTER_ROOM_WAIT_S  # for the whole batch
        for letter in batch.dead_letters:
            info = self._publish_dead_letter(dead_letter_json(letter), deadline)
            if (
                info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
                and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN
            ):
                log.warning(
                    "dead letter from %s not published (%s); it is in the store",
                    letter.topic,
                    mqtt.error_string(info.rc),
                )

    def _publish_dead_letter(self, payload: bytes, deadline: float) -> mqtt.MQTTMessageInfo:
        """Publish QoS 1; while connected and the outgoing queue is full, service the
        connection until PUBACKs make room (until ``deadline``)."""
        client = self._client
        while True:
            info = client.publish(topics.DEADLETTER, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or not client.is_connected():
                return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return info
            # The PUBACKs that make room come between messages: read them even at the
            # bounds (up to twice the bounds; the broker's in-flight window limits QoS 1).
            self._service(min(remaining, 0.1), slack=2)

    def _service(self, timeout: float, read: bool = True, slack: int = 1) -> None:
        """One round of network I/O: connect when due, wait up to ``timeout`` for the socket,
        read a burst of packets (within ``slack`` times the bounds), write, keepalive."""
        client = self._client
        sock = client.socket()
        if sock is None:
            self._connect_when_due(timeout)
            return
        read = read and not self._full(slack)
        pending = self._pending() if read else 0
        rlist: list[Any] = [sock, self._wake_r] if read else [self._wake_r]
        wlist: list[Any] = [sock] if client.want_write() else []
        try:
            readable, _, _ = select.select(rlist, wlist, [], 0.0 if pending else timeout)
        except (OSError, ValueError):
            readable = []  # the socket was closed under us: the misc step notices
        if read and (pending or sock in readable):
            self._read_burst(slack)
        if client.socket() is not None and client.want_write():
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()
        if client.socket() is None:
            self._schedule_reconnect()

    def _read_burst(self, slack: int) -> None:
        client = self._client
        for _ in range(READ_BURST):
            before = self._reads
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                return
            if self._reads == before and not self._pending():
                return  # nothing more to read now (or a packet other than a message)
            if self._full(slack):
                return

    def _pending(self) -> int:
        """Bytes received but not yet read by paho (its read-ahead and the TLS buffer)."""
        client = self._client
        sock = client.socket()
        tls = sock.pending() if sock is not None and hasattr(sock, "pending") else 0
        return client.buffered() + tls

    def _full(self, slack: int = 1) -> bool:
        s = self._settings
        messages, size = self.queued()
        return messages >= slack * s.queue_max_messages or size >= slack * s.queue_max_bytes

    def _connect_when_due(self, timeout: float) -> None:
        if self._stopping:
            self._sleep(timeout)
            return
        now = time.monotonic()
        if now < self._reconnect_at:
            self._sleep(min(timeout, self._reconnect_at - now))
            return
        try:
            self._client.reconnect()  # blocking TCP (and TLS) connect; CONNACK comes later
        except (OSError, ValueError) as exc:
            log.warning("cannot connect to %s (%s); retrying", self._settings.broker, exc)
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        now = time.monotonic()
        if self._reconnect_at > now:
            return
        self._reconnect_at = now + self._reconnect_delay
        self._reconnect_delay = min(self._reconnect_delay * 2, float(RECONNECT_MAX_S))

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            select.select([self._wake_r], [], [], seconds)

    def _drain_wake(self) -> bool:
        """Consume pending wake-ups; True if there was one."""
        woken = False
        while True:
            try:
                if not self._wake_r.recv(64):
                    return woken
                woken = True
            except (BlockingIOError, OSError):
                return woken

    # -- paho callbacks (writer thread, inside the I/O calls above) ------------------------

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
        self._generation += 1
        self._reconnect_delay = float(RECONNECT_MIN_S)
        log.info(
            "connected to %s (session present: %s)", self._settings.broker, flags.session_present
        )
        client.subscribe(self.topic_filter, qos=1)

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
        self._reads += 1  # tells a read burst that a message came
        if self._stopping:
            return  # unacknowledged: redelivered to the next session
        # Only this thread writes this counter; readers may see it a message late.
        self._stats.messages_received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<topic is not valid UTF-8>"
        payload = bytes(msg.payload)  # no copy when it is bytes already
        self._received.append(
            Inbound(
                None, AckToken(msg.mid, msg.qos, self._generation), topic, payload, time.time_ns()
            )
        )
        self._received_bytes += len(payload)
