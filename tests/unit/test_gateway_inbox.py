"""The inbox between the network thread and the writer is bounded by messages and samples."""

from __future__ import annotations

import queue
import threading

import pytest

from gateway.decode import DecodeResult, NormalizedSample
from gateway.writer import Inbound, Inbox

ASSET = "lahore/weaving/line-1/loom-03"
T0 = 1_714_557_600 * 1_000_000_000


def message(samples: int) -> Inbound:
    result = DecodeResult(topic="karkhana/v1/edge/a/samples", payload=b"{}", received_ns=T0)
    result.samples = [NormalizedSample(ASSET, "count", T0 + i, i) for i in range(samples)]
    return Inbound(result)


def test_put_blocks_while_the_sample_bound_is_reached() -> None:
    inbox = Inbox(max_messages=100, max_samples=10)
    inbox.put(message(6))
    inbox.put(message(4))  # 10 samples queued: the bound
    assert (inbox.messages(), inbox.samples) == (2, 10)
    with pytest.raises(queue.Full):
        inbox.put(message(1), timeout=0.05)
    inbox.get()
    inbox.put(message(1), timeout=1)  # room again after the writer took one
    assert (inbox.messages(), inbox.samples) == (2, 5)


def test_message_bound_still_applies() -> None:
    inbox = Inbox(max_messages=2, max_samples=1_000)
    inbox.put(message(1))
    inbox.put(message(1))
    with pytest.raises(queue.Full):
        inbox.put_nowait(message(1))


def test_a_message_larger_than_the_bound_passes_an_empty_inbox() -> None:
    inbox = Inbox(max_messages=10, max_samples=5)
    inbox.put(message(50), timeout=1)  # alone it must not block forever
    assert inbox.samples == 50
    with pytest.raises(queue.Full):
        inbox.put(message(1), timeout=0.05)


def test_a_blocked_producer_resumes_when_the_consumer_takes() -> None:
    inbox = Inbox(max_messages=100, max_samples=3)
    inbox.put(message(3))
    done = threading.Event()

    def produce() -> None:
        inbox.put(message(2))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.1)  # blocked: backpressure
    taken = inbox.get()
    assert isinstance(taken, Inbound) and len(taken.result.samples) == 3
    assert done.wait(5)
    producer.join()
    assert (inbox.messages(), inbox.samples) == (1, 2)
