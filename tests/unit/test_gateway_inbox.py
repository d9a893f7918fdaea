"""The inbox between the network thread and the writer is bounded by messages and bytes."""

from __future__ import annotations

import queue
import threading

import pytest

from gateway.writer import Inbound, Inbox

T0 = 1_714_557_600 * 1_000_000_000


def message(size: int) -> Inbound:
    """A raw message as the network thread queues it, with ``size`` payload bytes."""
    return Inbound(None, None, "karkhana/v1/edge/a/samples", b"x" * size, T0)


def test_put_blocks_while_the_byte_bound_is_reached() -> None:
    inbox = Inbox(max_messages=100, max_bytes=10)
    inbox.put(message(6))
    inbox.put(message(4))  # 10 bytes queued: the bound
    assert (inbox.messages(), inbox.bytes) == (2, 10)
    with pytest.raises(queue.Full):
        inbox.put(message(1), timeout=0.05)
    inbox.get()
    inbox.put(message(1), timeout=1)  # room again after the writer took one
    assert (inbox.messages(), inbox.bytes) == (2, 5)


def test_message_bound_still_applies() -> None:
    inbox = Inbox(max_messages=2, max_bytes=1_000)
    inbox.put(message(1))
    inbox.put(message(1))
    with pytest.raises(queue.Full):
        inbox.put_nowait(message(1))


def test_a_message_larger_than_the_bound_passes_an_empty_inbox() -> None:
    inbox = Inbox(max_messages=10, max_bytes=5)
    inbox.put(message(50), timeout=1)  # alone it must not block forever
    assert inbox.bytes == 50
    with pytest.raises(queue.Full):
        inbox.put(message(1), timeout=0.05)


def test_a_blocked_producer_resumes_when_the_consumer_takes() -> None:
    inbox = Inbox(max_messages=100, max_bytes=3)
    inbox.put(message(3))
    done = threading.Event()

    def produce() -> None:
        inbox.put(message(2))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.1)  # blocked: backpressure
    taken = inbox.get()
    assert isinstance(taken, Inbound) and taken.size == 3
    assert done.wait(5)
    producer.join()
    assert (inbox.messages(), inbox.bytes) == (1, 2)
