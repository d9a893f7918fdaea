"""UNS mirror: the last value of each series, retained on ``karkhana/v1/uns/{asset}/{signal}``.

A Unified Namespace view of the plant for MQTT clients (HMIs, other systems): subscribing to
``karkhana/v1/uns/#`` gives every series' latest value at once (retained messages), then
each change. The payload is ``{"ts": ..., "value": ..., "quality": ..., "unit": ...}``.

The gateway's writer thread calls :meth:`UnsMirror.committed` after each committed batch;
that call only updates a per-series table under a lock and never blocks on the network.
A dedicated thread publishes (QoS 1, retained) on the mirror's own MQTT connection with at
most ``max_in_flight`` unacknowledged messages; while the broker is slow, a newer value of a
series replaces the one still waiting (drop-to-latest, counted as ``superseded``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.consumer import connect_as_configured
from gateway.decode import NormalizedSample
from gateway.settings import GatewaySettings
from gateway.stores.base import Batch
from gateway.writer import Inbound, OnCommit
from karkhana import topics
from karkhana.models import SampleValue, from_ns, iso_utc

log = logging.getLogger(__name__)

UNS_PREFIX = f"{topics.PREFIX}/uns"
MAX_IN_FLIGHT = 100
MAX_PENDING_SERIES = 100_000


def uns_topic(asset: str, signal: str) -> str:
    """``karkhana/v1/uns/{site}/{area}/{line}/{machine}/{signal}``."""
    return f"{UNS_PREFIX}/{asset}/{signal}"


class UnsValue(msgspec.Struct):
    ts: str
    value: SampleValue
    quality: str
    unit: str | None


_encode = msgspec.json.Encoder().encode


def uns_payload(sample: NormalizedSample) -> bytes:
    return _encode(
        UnsValue(
            ts=iso_utc(from_ns(sample.ts_ns)),
            value=sample.value,
            quality=sample.quality,
            unit=sample.unit,
        )
    )


@dataclass(frozen=True, slots=True)
class UnsStats:
    published: int = 0
    """Handed to the MQTT client."""
    acknowledged: int = 0
    """Acknowledged by the broker (PUBACK)."""
    superseded: int = 0
    """Waiting values replaced by a newer one of the same series before being published."""
    stale: int = 0
    """Values not newer than the series' last mirrored or waiting value (not published)."""
    overflow: int = 0
    """Values dropped because ``max_pending_series`` series were already waiting."""
    failed: int = 0
    """Publishes the MQTT client refused."""


Key = tuple[str, str]


class UnsMirror:
    """Publishes the latest committed value of every series, retained, on its own connection.

    ``start()`` connects in the background; ``stop()`` (blocking, short) disconnects.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_pending_series: int = MAX_PENDING_SERIES,
    ) -> None:
        self._settings = settings
        self._max_in_flight = max_in_flight
        self._max_pending = max_pending_series
        self._cv = threading.Condition()
        self._pending: dict[Key, NormalizedSample] = {}
        self._mirrored: dict[Key, int] = {}
        self._in_flight = 0
        self._stopping = False
        self._counts = dict.fromkeys(UnsStats.__slots__, 0)
        self._thread = threading.Thread(target=self._main, name="karkhana-gateway-uns")
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self._settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{s.client_id}-uns"
        )
        connect_as_configured(client, s)
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        return client

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self._settings
        self._client.connect_async(s.broker_host, s.broker_port, keepalive=s.keepalive_s)
        self._client.loop_start()
        self._thread.start()
        log.info("mirroring the last value of each series on %s/# at %s", UNS_PREFIX, s.broker)

    def stop(self) -> None:
        """Stop publishing and disconnect; values still waiting are not published."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> UnsStats:
        with self._cv:
            return UnsStats(**self._counts)

    # -- called by the writer thread -------------------------------------------------------

    def committed(self, samples: Iterable[NormalizedSample]) -> None:
        """Offer the samples of a committed batch; never blocks on the network."""
        counts = self._counts
        with self._cv:
            pending, mirrored = self._pending, self._mirrored
            for sample in samples:
                key = (sample.asset, sample.signal)
                waiting = pending.get(key)
                if waiting is not None:
                    if sample.ts_ns > waiting.ts_ns:
                        pending[key] = sample
                        counts["superseded"] += 1
                    else:
                        counts["stale"] += 1
                elif sample.ts_ns <= mirrored.get(key, -1):
                    counts["stale"] += 1
                elif len(pending) >= self._max_pending:
                    counts["overflow"] += 1
                else:
                    pending[key] = sample
            if pending:
                self._cv.notify()

    def after(self, acknowledge: OnCommit) -> OnCommit:
        """An ``on_commit`` for the writer: ``acknowledge``, then mirror the batch's samples."""

        def on_commit(items: list[Inbound], batch: Batch) -> None:
            acknowledge(items, batch)
            self.committed(run.newest() for run in batch.runs if run.ts)

        return on_commit

    # -- publisher thread ------------------------------------------------------------------

    def _main(self) -> None:
        client = self._client
        while True:
            with self._cv:
                while not self._stopping and (
                    not self._pending or self._in_flight >= self._max_in_flight
                ):
                    self._cv.wait()
                if self._stopping:
                    return
                key, sample = self._pending.popitem()
                self._mirrored[key] = sample.ts_ns
                self._in_flight += 1
            info = client.publish(uns_topic(*key), uns_payload(sample), qos=1, retain=True)
            # Not connected: paho keeps the message and sends it after reconnecting.
            refused = info.rc not in (
                MQTTErrorCode.MQTT_ERR_SUCCESS,
                MQTTErrorCode.MQTT_ERR_NO_CONN,
            )
            with self._cv:
                if refused:
                    self._in_flight -= 1
                    self._counts["failed"] += 1
                else:
                    self._counts["published"] += 1
            if refused:
                log.warning(
                    "UNS value of %s/%s not published: %s", *key, mqtt.error_string(info.rc)
                )

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cv:
            self._in_flight -= 1
            self._counts["acknowledged"] += 1
            self._cv.notify()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the UNS mirror's connection: %s", reason_code)
