"""Prometheus metric families for the gateway (served by :mod:`karkhana.metrics_http`).

Values are read from a :class:`gateway.stats.GatewayStats` snapshot at scrape time (the
writer updates plain counters and bucket counts once per batch), so the hot path never
touches prometheus-client. Names start with ``karkhana_gateway_``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.stats import GatewayStats, Histogram

log = logging.getLogger(__name__)

PREFIX = "karkhana_gateway_"


class InboxGauges:
    """How full the inbox is, read at scrape time."""

    def __init__(self, messages: Callable[[], int], bytes_: Callable[[], int]) -> None:
        self.messages = messages
        self.bytes = bytes_


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
        yield counter(
            "samples_received",
            "Samples in the well-formed envelopes among them",
            s.samples_received,
        )
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
            "Envelopes skipped: their (agent, seq) was committed already",
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
            yield gauge("inbox_messages", "Messages waiting for the writer", self._inbox.messages())
            yield gauge(
                "inbox_bytes",
                "Payload bytes of the messages waiting for the writer",
                self._inbox.bytes(),
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
