"""The gateway: MQTT consumer -> bounded inbox -> single writer thread -> store."""

from __future__ import annotations

import asyncio
import logging
import queue
from types import TracebackType

from gateway.consumer import MqttConsumer
from gateway.decode import DecodeLimits, EnvelopeDecoder
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats
from gateway.stores.base import Store
from gateway.stores.sqlite import SqliteStore
from gateway.writer import BatchWriter, Inbound

log = logging.getLogger(__name__)


class Gateway:
    """Ingest edge envelopes into the store.

    ``async with Gateway(settings) as gw: await gw.run()`` runs until cancelled; leaving the
    block stops consuming, commits and acknowledges what is queued, and disconnects.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._stats = GatewayStats()
        self._inbox: queue.Queue[object] = queue.Queue(maxsize=settings.queue_max_messages)
        self._decoder = EnvelopeDecoder(
            DecodeLimits(
                max_payload_bytes=settings.max_payload_bytes,
                min_ts=settings.min_ts,
                max_future_s=settings.max_future_s,
            )
        )
        self._consumer: MqttConsumer | None = None
        self._writer: BatchWriter | None = None

    @property
    def stats(self) -> GatewayStats:
        """A consistent snapshot of the counters."""
        return self._stats.snapshot()

    async def __aenter__(self) -> Gateway:
        store: Store = await asyncio.to_thread(SqliteStore.open, self.settings.db)
        consumer = MqttConsumer(self.settings, self._decoder, self._inbox)
        writer = BatchWriter(
            store,
            self._inbox,
            stats=self._stats,
            on_commit=consumer.acknowledge,
            max_samples=self.settings.batch_max_samples,
            max_delay_s=self.settings.batch_max_delay_s,
            deadletter_payload_max=self.settings.deadletter_payload_max,
        )
        try:
            writer.start()
        except BaseException:
            store.close()
            raise
        self._writer = writer
        try:
            await consumer.start()
        except BaseException:
            await self._stop_writer()
            raise
        self._consumer = consumer
        log.info("gateway writing to %s", self.settings.db)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer.stop_intake()
        await self._stop_writer()
        self._discard_unqueued()
        if consumer is not None:
            await consumer.close()
            self._consumer = None
        s = self._stats
        log.info(
            "gateway stopped: %d message(s), %d sample(s) written, %d duplicate sample(s), "
            "%d duplicate envelope(s), %d dead letter(s)",
            s.messages,
            s.samples_written,
            s.samples_duplicate,
            s.envelopes_duplicate,
            s.dead_letters,
        )

    async def run(self) -> None:
        """Until cancelled; raises if the writer fails for good."""
        if self._writer is None:
            raise RuntimeError("use 'async with Gateway(settings)' before run()")
        await asyncio.shield(self._writer.done)

    async def wait_subscribed(self) -> None:
        """Until the broker has confirmed the subscription (tests and health checks)."""
        if self._consumer is None:
            raise RuntimeError("gateway not started")
        await self._consumer.wait_subscribed()

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is None:
            return
        writer.request_stop()
        try:
            await asyncio.shield(writer.done)
        except Exception:
            log.exception("the gateway writer had failed")
        self._writer = None

    def _discard_unqueued(self) -> None:
        """Messages still in the inbox after the writer exited are left unacknowledged.

        Emptying the inbox also releases the network thread if it is blocked on a full one.
        """
        left = 0
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Inbound):
                left += 1
        if left:
            log.info("%d message(s) left unacknowledged; the broker redelivers them", left)
