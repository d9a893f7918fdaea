"""OPC UA source: one asyncua client and its subscriptions (or a poll loop) per PLC.

Every configured node is a monitored item with a large server-side queue, so several value
changes between two publish cycles all arrive, in order, each with its own SourceTimestamp.
The nodes are spread over subscriptions of at most ``max_items_per_subscription`` items,
created concurrently, so no single publish response grows without bound (a single
subscription lags behind from a few thousand items at 1 Hz). Each publish response's data
changes are handled in one synchronous call, in order (asyncua's handler interface would
start one task per changed item). Notifications go through a bounded in-memory queue to the
sink. A lost connection is logged,
the source is marked down and the client reconnects with exponential backoff (capped at the
keep-alive), resolving browse paths again and re-creating the subscription. A reading whose
(asset, signal, ts) was already forwarded — the current value the server reports again after
a reconnect, or an unchanged value read again by polling — is not forwarded twice.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from asyncua import Client, ua
from asyncua.client.ua_session import UaSession
from asyncua.common.subscription import Subscription

from edge.config import OpcUaNode, OpcUaSourceConfig
from edge.sources.base import Backoff, Sink, SourceStats
from edge.sources.opcua_security import (
    ClientOptions,
    SecurityRejected,
    build_client,
    connect_client,
    resolve_browse_path,
)
from karkhana.errors import ConnectionFailed
from karkhana.models import Quality, Sample, SampleValue, utc_now
from karkhana.tasks import cancel_and_wait

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
    """asyncua subscription handler for what is not a data change (status changes)."""

    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        log.warning("opcua %s: subscription status %s", self._source.name, status.Status.name)


class _BatchSubscription(Subscription):
    """A subscription whose data changes go to the source one publish response at a time.

    asyncua's handler interface starts one task per changed item, which at thousands of
    items per second costs more than the rest of the agent. Here the monitored items of each
    ``DataChangeNotification`` are handed over in one synchronous call, in order; anything
    else (status changes) still takes asyncua's handler path.
    """

    def __init__(
        self,
        session: UaSession,
        params: ua.CreateSubscriptionParameters,
        source: OpcUaSource,
        handles: dict[int, OpcUaNode],
    ) -> None:
        super().__init__(session, params, _Handler(source))
        self._source = source
        self._handles = handles

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        message = publish_result.NotificationMessage
        data = message.NotificationData
        if data:
            others = []
            for notification in data:
                if isinstance(notification, ua.DataChangeNotification):
                    self._source._on_items(self._handles, notification.MonitoredItems)
                else:
                    others.append(notification)
            # A copy: the publish loop acknowledges the message by its own NotificationData.
            message = copy.copy(message)
            message.NotificationData = others
            publish_result = copy.copy(publish_result)
            publish_result.NotificationMessage = message
        await super().publish_callback(publish_result)


def chunked(items: Sequence[ua.NodeId], size: int) -> Iterable[Sequence[ua.NodeId]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        self._backoff = Backoff(cap=min(backoff_cap_s, config.keepalive_ms / 1000))
        self._nodes: dict[ua.NodeId, OpcUaNode] = {}  # resolved on every connect
        self._last_ts: dict[str, datetime] = {}  # node ref -> ts of the last forwarded sample
        self.last_error: str | None = None  # why the last connection attempt failed
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

    def _on_items(
        self, handles: dict[int, OpcUaNode], items: Iterable[ua.MonitoredItemNotification]
    ) -> None:
        received = utc_now()
        for item in items:
            mapping = handles.get(item.ClientHandle)
            if mapping is None:
                log.warning(
                    "opcua %s: notification for unknown handle %s", self.name, item.ClientHandle
                )
                continue
            self._on_value(mapping, item.Value, received)

    def _on_value(
        self, mapping: OpcUaNode, dv: ua.DataValue, received: datetime | None = None
    ) -> None:
        sample = datavalue_to_sample(dv, mapping, received or utc_now())
        if sample is None:
            self.stats.parse_errors += 1
            log.warning(
                "opcua %s: %s has no value (status %s); not forwarded",
                self.name,
                mapping.ref,
                dv.StatusCode,
            )
            return
        if self._last_ts.get(mapping.ref) == sample.ts:
            log.debug("opcua %s: %s at %s already forwarded", self.name, mapping.ref, sample.ts)
            return
        self._last_ts[mapping.ref] = sample.ts
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
            except SecurityRejected as exc:
                self.stats.connect_failures += 1
                self.last_error = str(exc)
                log.error("opcua %s: %s", self.name, exc)
            except Exception as exc:  # the library raises many types; all mean "retry"
                self.last_error = f"{type(exc).__name__}: {exc}"
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

    def _client_options(self) -> ClientOptions:
        cfg = self._config
        return ClientOptions(
            endpoint=cfg.endpoint,
            security=cfg.security,
            auth=cfg.auth,
            timeout_s=CONNECT_TIMEOUT_S,
            keepalive_s=cfg.keepalive_ms / 1000,
            session_timeout_ms=cfg.session_timeout_ms,
        )

    async def _resolve_nodes(self, client: Client) -> dict[ua.NodeId, OpcUaNode]:
        nodes: dict[ua.NodeId, OpcUaNode] = {}
        for node in self._config.nodes:
            if node.node_id is not None:
                nodes[ua.NodeId.from_string(node.node_id)] = node
            else:
                assert node.browse_path is not None
                resolved = await resolve_browse_path(client, node.browse_path)
                nodes[resolved.nodeid] = node
        return nodes

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        """Publishing interval as configured; a keep-alive message at least every
        ``keepalive_ms``; the server keeps the subscription for three keep-alives."""
        cfg = self._config
        keepalive_count = max(1, math.floor(cfg.keepalive_ms / cfg.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = cfg.publishing_interval_ms
        params.RequestedMaxKeepAliveCount = keepalive_count
        params.RequestedLifetimeCount = keepalive_count * 3
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        return params

    async def _session(self) -> None:
        options = self._client_options()
        client = await build_client(options)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            log.debug("opcua %s: connection lost: %r", self.name, exc)
            lost.set()

        client.connection_lost_callback = on_lost
        await connect_client(client, options)
        try:
            self._nodes = await self._resolve_nodes(client)
            # Connected before subscribing: the first values may arrive while the
            # subscriptions are still being created.
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.stats.connected = True
            self.last_error = None
            self._sink.source_state_changed()
            poller: asyncio.Task[None] | None = None
            if self._config.mode == "subscription":
                await self._subscribe(client)
            else:
                poller = asyncio.create_task(
                    self._poll(client, lost), name=f"opcua-poll:{self.name}"
                )
            self._backoff.reset()
            log.info(
                "opcua %s: reading %d nodes at %s (%s)",
                self.name,
                len(self._nodes),
                self._config.endpoint,
                self._config.mode,
            )
            try:
                await lost.wait()
            finally:
                if poller is not None and not poller.done():
                    await cancel_and_wait(poller)
            if poller is not None and poller.done() and not poller.cancelled():
                error = poller.exception()
                if error is not None:
                    raise ConnectionFailed(f"reading {self._config.endpoint}: {error}") from error
            raise ConnectionFailed(f"connection to {self._config.endpoint} lost")
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), timeout=2)
            except Exception as exc:  # closing a dead connection fails in many ways
                log.debug("opcua %s: disconnect: %r", self.name, exc)

    async def _subscribe(self, client: Client) -> None:
        """One subscription per ``max_items_per_subscription`` nodes, created concurrently;
        client handles are unique across them."""
        node_ids = list(self._nodes)
        size = self._config.max_items_per_subscription
        await asyncio.gather(
            *(
                self._subscribe_chunk(client, chunk, first_handle=1 + index * size)
                for index, chunk in enumerate(chunked(node_ids, size))
            )
        )

    async def _subscribe_chunk(
        self, client: Client, node_ids: Sequence[ua.NodeId], first_handle: int
    ) -> None:
        handles = {
            handle: self._nodes[node_id]
            for handle, node_id in enumerate(node_ids, start=first_handle)
        }
        params = self._subscription_parameters()
        subscription = _BatchSubscription(client.uaclient.session, params, self, handles)
        results = await subscription.init()
        revised = client.get_subscription_revised_params(params, results)
        if revised is not None:
            await subscription.update(revised)
        requests = [
            monitored_item_request(node_id, handle)
            for handle, node_id in enumerate(node_ids, start=first_handle)
        ]
        created = await subscription.create_monitored_items(requests)
        for node_id, result in zip(node_ids, created, strict=True):
            if isinstance(result, ua.StatusCode):
                log.error(
                    "opcua %s: cannot monitor %s: %s",
                    self.name,
                    self._nodes[node_id].ref,
                    result.name,
                )

    async def _poll(self, client: Client, lost: asyncio.Event) -> None:
        """Read every node each ``poll_interval_ms``; a failed read ends the session."""
        nodes = [client.get_node(node_id) for node_id in self._nodes]
        mappings = list(self._nodes.values())
        interval = self._config.poll_interval_ms / 1000
        try:
            while True:
                values = await client.read_attributes(nodes, ua.AttributeIds.Value)
                for mapping, dv in zip(mappings, values, strict=True):
                    self._on_value(mapping, dv)
                await asyncio.sleep(interval)
        finally:
            lost.set()
