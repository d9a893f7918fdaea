"""The gateway: one writer thread takes messages from the MQTT consumer and commits them."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from gateway.consumer import MqttConsumer
from gateway.decode import DecodeLimits, EnvelopeDecoder
from gateway.metrics import GatewayCollector, InboxGauges
from gateway.platform_stats import PlatformStats, platform_stats
from gateway.retention import RetentionRunner, SqliteRetention
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats
from gateway.stores.base import Store
from gateway.stores.sqlite import SqliteStore
from gateway.uns import UnsMirror
from gateway.writer import BatchWriter, OnCommit
from karkhana.metrics_http import MetricsServer

log = logging.getLogger(__name__)


def open_store(settings: GatewaySettings) -> Store:
    """The store ``settings.store`` selects (blocking; raises StoreError)."""
    if settings.store == "influxdb":
        from gateway.stores.influx import InfluxStore  # influxdb-client loads only when used

        return InfluxStore.open(settings.influx_target())
    return SqliteStore.open(settings.db)


def store_location(settings: GatewaySettings) -> str:
    if settings.store == "influxdb":
        return f"InfluxDB {settings.influx_target().location}"
    return str(settings.db)


class Gateway:
    """Ingest edge envelopes into the store.

    ``async with Gateway(settings) as gw: await gw.run()`` runs until cancelled; leaving the
    block stops consuming, commits and acknowledges what is queued, and disconnects.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._stats = GatewayStats()
        self._decoder = EnvelopeDecoder(
            DecodeLimits(
                max_payload_bytes=settings.max_payload_bytes,
                min_ts=settings.min_ts,
                max_future_s=settings.max_future_s,
            )
        )
        self._consumer: MqttConsumer | None = None
        self._writer: BatchWriter | None = None
        self.metrics: MetricsServer | None = None
        """The ``/metrics`` endpoint while running, when ``settings.metrics_port`` is set."""
        self.uns: UnsMirror | None = None
        """The UNS mirror while running, when ``settings.uns_mirror`` is set."""
        self._retention: RetentionRunner | None = None
        self._platform: PlatformStats | None = None

    @property
    def stats(self) -> GatewayStats:
        """A consistent snapshot of the counters."""
        return self._stats.snapshot()

    async def __aenter__(self) -> Gateway:
        store = await asyncio.to_thread(open_store, self.settings)
        consumer = MqttConsumer(self.settings, self._stats)
        await consumer.start()
        on_commit: OnCommit = consumer.acknowledge
        if self.settings.uns_mirror:
            self.uns = UnsMirror(self.settings)
            on_commit = self.uns.after(consumer.acknowledge)
        writer = BatchWriter(
            store,
            consumer,
            stats=self._stats,
            on_commit=on_commit,
            max_samples=self.settings.batch_max_samples,
            max_delay_s=self.settings.batch_max_delay_s,
            deadletter_payload_max=self.settings.deadletter_payload_max,
            decoder=self._decoder,
        )
        if self.uns is not None:
            self.uns.start()
        try:
            writer.start()
        except BaseException:
            store.close()
            await self._stop_uns()
            await consumer.close()
            raise
        self._writer = writer
        self._consumer = consumer
        log.info("gateway writing to %s", store_location(self.settings))
        self._start_retention()
        self._platform = platform_stats(self.settings, self._stats.snapshot, self._inbox_gauges())
        if self._platform is not None:
            await self._platform.__aenter__()
        if self.settings.metrics_port is not None:
            try:
                self.metrics = await self._start_metrics(self.settings.metrics_port)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    def _start_retention(self) -> None:
        policy = self.settings.retention_policy()
        if not policy.enabled:
            return
        if self.settings.store != "sqlite":
            if not policy.removes_data:
                return  # compaction concerns the SQLite store only
            log.warning(
                "retention and downsampling settings apply to the SQLite store only; "
                "use the retention policies of %s",
                store_location(self.settings),
            )
            return
        retention = SqliteRetention(self.settings.db, policy)
        self._retention = RetentionRunner(retention, self.settings.retention_interval_s)
        self._retention.start()

    def _inbox_gauges(self) -> InboxGauges:
        """Messages read from the broker and not yet committed."""
        consumer = self._consumer
        assert consumer is not None
        return InboxGauges(lambda: consumer.queued()[0], lambda: consumer.queued()[1])

    async def _start_metrics(self, port: int) -> MetricsServer:
        collector = GatewayCollector(self._stats.snapshot, self._inbox_gauges())
        return await MetricsServer(collector, self.settings.metrics_host, port).__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            await metrics.__aexit__(None, None, None)
        platform, self._platform = self._platform, None
        if platform is not None:
            await platform.__aexit__(None, None, None)
        consumer = self._consumer
        if consumer is not None:
            consumer.stop_intake()
        retention, self._retention = self._retention, None
        if retention is not None:
            await asyncio.to_thread(retention.stop)  # after its current short chunk
        await self._stop_writer()
        await self._stop_uns()
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

    async def _stop_uns(self) -> None:
        """Stop the UNS mirror (after the writer, its only caller)."""
        uns, self.uns = self.uns, None
        if uns is not None:
            await asyncio.to_thread(uns.stop)
