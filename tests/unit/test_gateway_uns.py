"""The UNS mirror's table of latest values, with its broker unreachable (nothing acknowledged)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from gateway import GatewaySettings, NormalizedSample
from gateway.uns import UnsMirror, uns_payload, uns_topic
from tests.helpers.servers import free_port, wait_until

ASSET = "lahore/weaving/line-1/loom-03"
# 2024-05-01T10:00:00Z = 1714521600 s (2024-05-01T00:00Z) + 10 h.
T10_NS = (1_714_521_600 + 10 * 3600) * 1_000_000_000
SECOND = 1_000_000_000


def sample(signal: str, second: int, value: object = 1.5) -> NormalizedSample:
    return NormalizedSample(ASSET, signal, T10_NS + second * SECOND, value, "good", None)  # type: ignore[arg-type]


@pytest.fixture
def mirror() -> Iterator[UnsMirror]:
    """A mirror whose broker never answers, with two publishes allowed in flight."""
    settings = GatewaySettings(broker=f"mqtt://127.0.0.1:{free_port()}", client_id="gw-uns")
    mirror = UnsMirror(settings, max_in_flight=2, max_pending_series=3)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


def test_topic_and_payload() -> None:
    s = NormalizedSample(ASSET, "temperature", T10_NS + 250_000_000, 41.7, "uncertain", "degC")
    assert (
        uns_topic(s.asset, s.signal) == "karkhana/v1/uns/lahore/weaving/line-1/loom-03/temperature"
    )
    assert json.loads(uns_payload(s)) == {
        "ts": "2024-05-01T10:00:00.250000Z",
        "value": 41.7,
        "quality": "uncertain",
        "unit": "degC",
    }
    assert json.loads(uns_payload(sample("state", 0, "running")))["value"] == "running"
    assert json.loads(uns_payload(sample("auto", 0, True)))["value"] is True


def test_slow_broker_keeps_only_the_latest_value_per_series(mirror: UnsMirror) -> None:
    mirror.committed([sample("a", 1), sample("b", 1)])
    # Both go out (to paho's queue, the broker being down) and fill the in-flight window.
    wait_until(lambda: mirror.stats().published == 2, 10, "two values handed to the client")
    mirror.committed([sample("c", 1), sample("c", 3), sample("c", 2)])  # 3 wins; 2 is older
    mirror.committed([sample("a", 1), sample("a", 0)])  # not newer than what went out
    mirror.committed([sample("d", 5), sample("e", 5)])
    mirror.committed([sample("f", 5)])  # c, d, e wait: the table is full
    stats = mirror.stats()
    assert stats.published == 2
    assert stats.superseded == 1
    assert stats.stale == 3
    assert stats.overflow == 1
    assert stats.acknowledged == 0


def test_committed_returns_while_the_broker_is_down(mirror: UnsMirror) -> None:
    """The writer thread's call only touches the table, whatever the network does."""
    done = threading.Event()

    def offer() -> None:
        for second in range(2000):
            mirror.committed([sample(f"s{second % 3}", second)])
        done.set()

    thread = threading.Thread(target=offer)
    thread.start()
    thread.join(timeout=30)
    assert done.is_set(), "committed() blocked"
    wait_until(lambda: mirror.stats().published == 2, 10, "the in-flight window used")
    stats = mirror.stats()
    assert (stats.acknowledged, stats.overflow, stats.stale) == (0, 0, 0)
    assert stats.superseded >= 2000 - 2 - 3  # all but two sent and three first waiting
