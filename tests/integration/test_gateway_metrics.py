"""The gateway's Prometheus endpoint, scraped after real traffic through mosquitto."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.servers import Mosquitto, async_wait_until
from tests.integration.test_gateway_mqtt import (
    SAMPLES_TOPIC,
    TIMEOUT,
    envelope,
    paho_client,
    running,
    sample,
    settings,
)

pytestmark = pytest.mark.integration


def scrape(port: int, path: str = "/metrics") -> dict[str, float]:
    """Every sample of the exposition, by name and labels (parsed by prometheus-client)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


async def test_metrics_count_traffic_batches_and_dead_letters(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = settings(mosquitto, tmp_path / "store.sqlite", metrics_port=0)
    topic = SAMPLES_TOPIC.format(agent="edge-1")
    first = envelope("edge-1", 1, [sample("count", 1), sample("speed", 2.5)])
    async with running(config) as gateway:
        assert gateway.metrics is not None
        port = gateway.metrics.port
        with paho_client(mosquitto) as publisher:
            publisher.publish(topic, first)
            publisher.publish(topic, first)  # the same agent + seq again: a duplicate
            publisher.publish(topic, b"not json")
            publisher.publish(
                topic, envelope("edge-1", 2, [sample("count", 3, ts="2024-05-01T10:00:01Z")])
            )
            await async_wait_until(lambda: gateway.stats.messages == 4, TIMEOUT, "4 messages")
        m = await asyncio.to_thread(scrape, port)
        with pytest.raises(urllib.error.HTTPError) as not_found:
            await asyncio.to_thread(scrape, port, "/other")
        assert not_found.value.code == 404
    p = "karkhana_gateway_"
    assert m[p + "messages_received_total"] == 4
    assert m[p + "samples_received_total"] == 2 + 2 + 1  # valid samples decoded
    assert m[p + "messages_committed_total"] == 4
    assert m[p + "samples_written_total"] == 3
    assert m[p + "envelopes_duplicate_total"] == 1
    assert m[p + "samples_duplicate_total"] == 0
    assert m[p + "dead_letters_total"] == 1
    assert m[p + "write_errors_total"] == 0
    batches = m[p + "batch_samples_count"]
    assert batches >= 1
    assert m[p + "batch_samples_sum"] == 3  # duplicates never reach a batch
    assert m[p + "batch_samples_bucket{le=+Inf}"] == batches
    assert m[p + "write_seconds_count"] == batches
    assert m[p + "write_seconds_sum"] > 0
    assert m[p + "consumer_lag_seconds"] >= 0
    assert m[p + "last_commit_timestamp_seconds"] > 0
    assert m[p + "inbox_messages"] == 0
    assert m[p + "inbox_bytes"] == 0


async def test_metrics_endpoint_is_off_by_default(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with running(settings(mosquitto, tmp_path / "store.sqlite")) as gateway:
        assert gateway.metrics is None
