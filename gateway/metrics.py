"""Prometheus ``/metrics`` for the gateway: its own registry, an asyncio HTTP endpoint.

Values are read from a :class:`gateway.stats.GatewayStats` snapshot at scrape time (the
writer updates plain counters and bucket counts once per batch), so the hot path never
touches prometheus-client. Names start with ``karkhana_gateway_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.stats import GatewayStats, Histogram

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_BYTES = 16 * 1024
PREFIX = "karkhana_gateway_"


class InboxGauges:
    """How full the inbox is, read at scrape time."""

    def __init__(self, messages: Callable[[], int], samples: Callable[[], int]) -> None:
        self.messages = messages
        self.samples = samples


class GatewayCollector(Collector):
    """Turns one :class:`GatewayStats` snapshot per scrape into metric families."""

    def __init__(self, stats: Callable[[], GatewayStats], inbox: InboxGauges | None = None) -> None:
        self._stats = stats
        self._inbox = inbox

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._stats()))

    def _families(self, s: GatewayStats) -> Iterator[Metric]:
        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        yield counter("messages_received", "Messages received from the broker", s.messages_received)
        yield counter("samples_received", "Valid samples decoded from them", s.samples_received)
        yield counter(
            "messages_committed",
            "Messages committed and acknowledged (valid, duplicate or dead letter)",
            s.messages,
        )
        yield counter("samples_written", "Samples written to the store", s.samples_written)
        yield counter(
            "samples_duplicate",
            "Samples not written: (asset, signal, ts) already stored",
            s.samples_duplicate,
        )
        yield counter(
            "envelopes_duplicate",
            "Envelopes skipped: seq at or below the agent's committed mark",
            s.envelopes_duplicate,
        )
        yield counter("dead_letters", "Messages (or parts) rejected with a reason", s.dead_letters)
        yield counter("write_errors", "Store writes that failed (and were retried)", s.write_errors)
        yield histogram("batch_samples", "Samples per committed batch", s.batch_samples)
        yield histogram(
            "write_seconds",
            "Duration of one store transaction, commit included",
            s.write_seconds,
        )
        yield gauge(
            "consumer_lag_seconds",
            "Of the last committed batch: commit time minus arrival of its oldest message",
            s.commit_lag_s,
        )
        if s.last_commit_ts is not None:
            yield gauge(
                "last_commit_timestamp_seconds",
                "Unix time of the last commit",
                s.last_commit_ts.timestamp(),
            )
        if self._inbox is not None:
            yield gauge(
                "inbox_messages", "Decoded messages waiting for the writer", self._inbox.messages()
            )
            yield gauge(
                "inbox_samples",
                "Samples of the messages waiting for the writer",
                self._inbox.samples(),
            )


def histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*map(_bound_text, h.bounds), "+Inf"), h.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(PREFIX + name, doc, buckets=buckets, sum_value=h.total)


def _bound_text(bound: float) -> str:
    return repr(float(bound))


class MetricsServer:
    """Serves ``GET /metrics`` from its own registry (async context manager)."""

    def __init__(self, collector: GatewayCollector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = port  # the bound port once started (``0`` picks a free one)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER_BYTES:
                raise ValueError("request header too large")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method != "GET":
                await _respond(writer, 405, b"method not allowed\n", "text/plain")
            elif path != "/metrics":
                await _respond(writer, 404, b"try /metrics\n", "text/plain")
            else:
                body = generate_latest(self.registry)
                await _respond(writer, 200, body, CONTENT_TYPE_LATEST)
        except (
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            log.debug("metrics: bad request: %r", exc)
        except ConnectionError as exc:
            log.debug("metrics: client went away: %r", exc)
        finally:
            writer.close()


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        + body
    )
    await writer.drain()
