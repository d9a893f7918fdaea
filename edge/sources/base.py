"""What every source adapter (OPC UA, MQTT, later Modbus, Sparkplug B) looks like.

A source is an async context manager: ``__aenter__`` starts its reading task (which connects,
reconnects with backoff and never gives up), ``__aexit__`` cancels it. Readings go to a
:class:`Sink`; payloads that cannot be turned into samples go to the sink as dead letters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from karkhana.models import Sample, iso_utc, utc_now

DEADLETTER_PAYLOAD_MAX = 2048  # characters of a bad payload kept in its dead letter


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a source could not turn into a sample, with the reason."""

    source: str
    topic: str
    reason: str
    payload: str
    received: str = field(default_factory=lambda: iso_utc(utc_now()))

    @classmethod
    def from_bytes(cls, source: str, topic: str, reason: str, payload: bytes) -> DeadLetter:
        text = payload.decode("utf-8", errors="replace")
        if len(text) > DEADLETTER_PAYLOAD_MAX:
            text = text[:DEADLETTER_PAYLOAD_MAX] + "...[truncated]"
        return cls(source, topic, reason, text)

    def to_json(self) -> dict[str, str]:
        return {
            "source": self.source,
            "topic": self.topic,
            "reason": self.reason,
            "received": self.received,
            "payload": self.payload,
        }


class Sink(Protocol):
    """Where sources deliver their output. ``put`` may wait (back-pressure)."""

    async def put(self, sample: Sample) -> None: ...

    async def dead_letter(self, letter: DeadLetter) -> None: ...

    def source_state_changed(self) -> None:
        """A source connected or lost its connection (the agent republishes its status)."""

    def ticket(self) -> int:
        """A mark covering every sample put so far (for ``wait_stored``)."""

    async def wait_stored(self, ticket: int) -> None:
        """Return once every sample covered by ``ticket`` is stored in the disk buffer."""


@dataclass
class SourceStats:
    """Counters of one source, read by ``EdgeAgent.stats``."""

    connected: bool = False
    connections: int = 0
    samples_read: int = 0
    parse_errors: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    dropped: int = 0  # notifications lost because the consumer fell far behind (logged)
    suppressed: int = 0  # samples held back by a configured deadband (edge.transform)


class Source(Protocol):
    """One protocol adapter instance reading one device or broker."""

    name: str
    stats: SourceStats

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Backoff:
    """Exponential reconnect delay with jitter: 0.5 s, 1 s, 2 s ... capped at ``cap``."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.0)  # jitter, not cryptography
