"""The contract every store adapter implements (one adapter per store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.deadletters import DeadLetter
from gateway.decode import NormalizedSample


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    samples: list[NormalizedSample] = field(default_factory=list)
    high_water: dict[str, int] = field(default_factory=dict)
    """Per agent, the highest envelope ``seq`` in this batch."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    received_ns: int = 0
    """When the batch is committed (Unix ns), recorded with the high-water marks."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    samples_written: int
    samples_duplicate: int
    """Samples whose (asset, signal, ts) was already stored (or repeated in the batch)."""


class Store(Protocol):
    """A blocking store, used from the gateway's single writer thread only.

    ``write`` is all-or-nothing: either the whole batch is durable when it returns, or it
    raises :class:`karkhana.errors.StoreError` and nothing of the batch is kept.
    """

    def high_water_marks(self) -> dict[str, int]:
        """Per agent, the highest envelope ``seq`` committed so far."""
        ...

    def write(self, batch: Batch) -> WriteResult: ...

    def close(self) -> None: ...
