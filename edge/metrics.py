"""Prometheus metric families for the edge agent (served by :mod:`karkhana.metrics_http`).

Values are read from :attr:`edge.agent.EdgeAgent.stats` at scrape time, so nothing on the hot
path touches a metric. Names start with ``karkhana_edge_``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.sources.mqtt import MqttSourceStats
from karkhana.metrics_http import MetricsServer as KernelMetricsServer

if TYPE_CHECKING:
    from edge.agent import EdgeStats

log = logging.getLogger(__name__)


class EdgeCollector(Collector):
    """Turns one :class:`EdgeStats` snapshot per scrape into metric families."""

    def __init__(self, agent_id: str, stats: Callable[[], EdgeStats]) -> None:
        self._agent = agent_id
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._stats()))

    def _families(self, s: EdgeStats) -> Iterator[Metric]:
        a = self._agent

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"karkhana_edge_{name}", doc, labels=["agent"])
            family.add_metric([a], value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"karkhana_edge_{name}", doc, labels=["agent"])
            family.add_metric([a], value)
            return family

        read = CounterMetricFamily(
            "karkhana_edge_samples_read", "Samples read from sources", labels=["agent", "source"]
        )
        reconnects = CounterMetricFamily(
            "karkhana_edge_source_reconnects",
            "Reconnections of a source after a lost connection",
            labels=["agent", "source"],
        )
        connected = GaugeMetricFamily(
            "karkhana_edge_source_connected",
            "1 while the source is connected",
            labels=["agent", "source"],
        )
        failures = CounterMetricFamily(
            "karkhana_edge_source_connect_failures",
            "Connection attempts of a source that failed (refused, unreachable, not trusted)",
            labels=["agent", "source"],
        )
        source_dropped = CounterMetricFamily(
            "karkhana_edge_source_dropped",
            "Readings a source dropped because the agent fell far behind (logged)",
            labels=["agent", "source"],
        )
        suppressed = CounterMetricFamily(
            "karkhana_edge_samples_suppressed",
            "Readings held back by a configured deadband",
            labels=["agent", "source"],
        )
        rebirths = CounterMetricFamily(
            "karkhana_edge_sparkplug_rebirth_requests",
            "Sparkplug B rebirth requests (NCMD) an MQTT source made (unpublishable: logged)",
            labels=["agent", "source"],
        )
        for name, src in s.sources.items():
            read.add_metric([a, name], src.samples_read)
            reconnects.add_metric([a, name], src.reconnects)
            connected.add_metric([a, name], 1.0 if src.connected else 0.0)
            failures.add_metric([a, name], src.connect_failures)
            source_dropped.add_metric([a, name], src.dropped)
            suppressed.add_metric([a, name], src.suppressed)
            if isinstance(src, MqttSourceStats):
                rebirths.add_metric([a, name], src.rebirth_requests)
        yield read
        yield reconnects
        yield connected
        yield failures
        yield source_dropped
        yield suppressed
        yield rebirths
        yield counter(
            "unmapped_states",
            "Values with no entry in their state_map (forwarded unchanged)",
            s.unmapped_states,
        )
        yield counter(
            "samples_published", "Samples acknowledged by the broker", s.samples_published
        )
        yield counter(
            "envelopes_published", "Envelopes acknowledged by the broker", s.envelopes_published
        )
        yield counter("dead_letters", "Messages that could not become samples", s.dead_letters)
        yield counter("parse_errors", "Source payloads that failed to parse", s.parse_errors)
        yield gauge(
            "samples_buffered", "Samples on disk, not yet in an envelope", s.samples_buffered
        )
        yield gauge(
            "samples_pending",
            "Samples not yet acknowledged (loose or in envelopes)",
            s.samples_pending,
        )
        yield gauge(
            "outbox_pending", "Envelopes and dead letters awaiting PUBACK", s.outbox_pending
        )
        yield gauge("buffer_bytes", "Payload bytes stored in the buffer", s.buffer_bytes)
        yield gauge(
            "uplink_connected", "1 while connected to the uplink broker", float(s.uplink_connected)
        )
        yield gauge(
            "uplink_lag_seconds",
            "Age of the oldest unsent sample or message (0 when nothing is pending)",
            s.uplink_lag_s,
        )
        dropped = CounterMetricFamily(
            "karkhana_edge_dropped",
            "Unsent data dropped by the buffer bounds (reason size or age)",
            labels=["agent", "kind", "reason"],
        )
        d = s.dropped
        for kind, reason, value in (
            ("samples", "size", d.samples_size),
            ("samples", "age", d.samples_age),
            ("envelopes", "size", d.envelopes_size),
            ("envelopes", "age", d.envelopes_age),
            ("dead_letters", "size", d.letters_size),
            ("dead_letters", "age", d.letters_age),
        ):
            dropped.add_metric([a, kind, reason], value)
        yield dropped


def lag_seconds(oldest_added: float | None, now: float | None = None) -> float:
    """Age of the oldest unsent row (wall clock), 0.0 when nothing is pending."""
    if oldest_added is None:
        return 0.0
    return max(0.0, (time.time() if now is None else now) - oldest_added)


class MetricsServer(KernelMetricsServer):
    """Serves the agent's ``GET /metrics`` (async context manager)."""

    def __init__(self, agent_id: str, stats: Callable[[], EdgeStats], host: str, port: int) -> None:
        super().__init__(EdgeCollector(agent_id, stats), host, port)
