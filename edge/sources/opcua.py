"""OPC UA source: one asyncua client and one subscription per PLC.

Every configured node is a monitored item with a large server-side queue, so several value
changes between two publish cycles all arrive, in order, each with its own SourceTimestamp.
Notifications go through a bounded in-memory queue to the sink. A lost connection is logged,
the source is marked down and the client reconnects with exponential backoff, re-creating
the subscription.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from asyncua import Client, Node, ua
from asyncua.common.subscription import DataChangeNotif

from edge.config import OpcUaNode, OpcUaSourceConfig
from edge.sources.base import Backoff, Sink, SourceStats
from edge.tasks import cancel_and_wait
from karkhana.errors import ConnectionFailed
from karkhana.models import Quality, Sample, SampleValue, utc_now

log = logging.getLogger(__name__)

MONITORED_ITEM_QUEUE_SIZE = 1000
NOTIFICATION_QUEUE_SIZE = 100_000
CONNECT_TIMEOUT_S = 4.0
DRAIN_TIMEOUT_S = 5.0


def quality_of(status: ua.StatusCode | None) -> Quality:
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def convert_value(value: Any) -> SampleValue | None:
    """bool/int/float/str pass through; None stays None; anything else becomes its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    if isinstance(value, datetime):
        return _aware(value).isoformat()
    return str(value)


def datavalue_to_sample(dv: ua.DataValue, node: OpcUaNode, received: datetime) -> Sample | None:
    """Map one DataValue onto a sample; None when it carries no value at all."""
    raw = dv.Value.Value if dv.Value is not None else None
    value = convert_value(raw)
    if value is None:
        return None
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    return Sample(
        asset=node.asset,
        signal=node.signal,
        ts=_aware(ts) if ts is not None else received,
        value=value,
        quality=quality_of(dv.StatusCode),
        unit=node.unit,
    )


def monitored_item_request(node_id: ua.NodeId, handle: int) -> ua.MonitoredItemCreateRequest:
    """Monitor a node's Value: every change of status, value *or source timestamp* is
    reported, queued on the server (oldest kept) until the next publish."""
    item = ua.MonitoredItemCreateRequest()
    item.ItemToMonitor = ua.ReadValueId()
    item.ItemToMonitor.NodeId = node_id
    item.ItemToMonitor.AttributeId = ua.AttributeIds.Value
    item.MonitoringMode = ua.MonitoringMode.Reporting
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = 0.0  # as fast as the server can; changes are queued
    params.QueueSize = MONITORED_ITEM_QUEUE_SIZE
    params.DiscardOldest = False
    params.Filter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
    item.RequestedParameters = params
    return item


class _Handler:
    """asyncua subscription handler; synchronous so notifications keep their order."""

    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        self._source._on_datachange(node, data)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        log.warning("opcua %s: subscription status %s", self._source.name, status.Status.name)


class OpcUaSource:
    """Reads the nodes of one OPC UA server by subscription (async context manager)."""

    def __init__(
        self,
        config: OpcUaSourceConfig,
        sink: Sink,
        *,
        backoff_cap_s: float = 10.0,
        queue_size: int = NOTIFICATION_QUEUE_SIZE,
    ) -> None:
        self.name = config.name
        self.stats = SourceStats()
        self._config = config
        self._sink = sink
        self._backoff = Backoff(cap=backoff_cap_s)
        self._nodes: dict[ua.NodeId, OpcUaNode] = {
            ua.NodeId.from_string(n.node_id): n for n in config.nodes
        }
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_full = False

    async def __aenter__(self) -> Self:
        self._tasks = [
            asyncio.create_task(self._deliver(), name=f"opcua-deliver:{self.name}"),
            asyncio.create_task(self._run(), name=f"opcua:{self.name}"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run, deliver = self._tasks[1], self._tasks[0]
        await cancel_and_wait(run)
        # Hand over what already arrived, then stop delivering.
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._queue.join()
        except TimeoutError:
            log.warning(
                "opcua %s: %d notifications not handed over at shutdown",
                self.name,
                self._queue.qsize(),
            )
        await cancel_and_wait(deliver)
        self._tasks = []

    # --- notifications --------------------------------------------------------------

    def _on_datachange(self, node: Node, data: DataChangeNotif) -> None:
        mapping = self._nodes.get(node.nodeid)
        if mapping is None:
            log.warning("opcua %s: notification for unknown node %s", self.name, node.nodeid)
            return
        sample = datavalue_to_sample(data.monitored_item.Value, mapping, utc_now())
        if sample is None:
            self.stats.parse_errors += 1
            log.warning(
                "opcua %s: %s has no value (status %s); not forwarded",
                self.name,
                mapping.node_id,
                data.monitored_item.Value.StatusCode,
            )
            return
        try:
            self._queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                log.error(
                    "opcua %s: %d notifications waiting; dropping new ones until the buffer "
                    "catches up",
                    self.name,
                    self._queue.qsize(),
                )
            return
        self._warned_full = False

    async def _deliver(self) -> None:
        while True:
            sample = await self._queue.get()
            try:
                await self._sink.put(sample)
                self.stats.samples_read += 1
            finally:
                self._queue.task_done()

    # --- connection -----------------------------------------------------------------

    async def _run(self) -> None:
        endpoint = self._config.endpoint
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the library raises many types; all mean "retry"
                if self.stats.connected:
                    log.warning("opcua %s: connection to %s lost: %s", self.name, endpoint, exc)
                else:
                    self.stats.connect_failures += 1
                    log.warning("opcua %s: cannot connect to %s: %r", self.name, endpoint, exc)
            finally:
                if self.stats.connected:
                    self.stats.connected = False
                    self._sink.source_state_changed()
            delay = self._backoff.next_delay()
            log.info("opcua %s: reconnecting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        client = Client(url=self._config.endpoint, timeout=CONNECT_TIMEOUT_S)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            log.debug("opcua %s: connection lost: %r", self.name, exc)
            lost.set()

        client.connection_lost_callback = on_lost
        await client.connect()
        try:
            subscription = await client.create_subscription(
                self._config.publishing_interval_ms, _Handler(self)
            )
            requests = [
                monitored_item_request(node_id, handle)
                for handle, node_id in enumerate(self._nodes, start=1)
            ]
            results = await subscription.create_monitored_items(requests)
            for node_id, result in zip(self._nodes, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    log.error(
                        "opcua %s: cannot monitor %s: %s",
                        self.name,
                        self._nodes[node_id].node_id,
                        result.name,
                    )
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.stats.connected = True
            self._sink.source_state_changed()
            self._backoff.reset()
            log.info("opcua %s: subscribed to %d nodes at %s", self.name, len(requests), client)
            await lost.wait()
            raise ConnectionFailed(f"connection to {self._config.endpoint} lost")
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout=2)
            except Exception as exc:  # closing a dead connection fails in many ways
                log.debug("opcua %s: disconnect: %r", self.name, exc)
