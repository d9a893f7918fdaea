"""The contract every store adapter implements (one adapter per store)."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Protocol

from gateway.columns import SeriesRun, runs_from_samples
from gateway.deadletters import DeadLetter
from gateway.decode import NormalizedSample


@dataclass(slots=True)
class Batch:
    """What one transaction writes.

    ``runs`` holds the samples per series; ``Batch(samples=[...])`` groups a list of
    samples into runs (for callers that have single samples).
    """

    runs: list[SeriesRun] = field(default_factory=list)
    high_water: dict[str, int] = field(default_factory=dict)
    """Per agent, the highest envelope ``seq`` in this batch."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    received_ns: int = 0
    """When the batch is committed (Unix ns), recorded with the high-water marks."""
    samples: InitVar[list[NormalizedSample] | None] = None

    def __post_init__(self, samples: list[NormalizedSample] | None) -> None:
        if samples:
            self.runs.extend(runs_from_samples(samples))

    @property
    def sample_count(self) -> int:
        return sum(len(run) for run in self.runs)


@dataclass(frozen=True, slots=True)
class WriteResult:
    samples_written: int
    samples_duplicate: int
    """Samples whose (asset, signal, ts) was already stored (or repeated in the batch)."""
    rejected: tuple[DeadLetter, ...] = ()
    """Samples the store refused for good (stored as these dead letters, in the same
    write); the writer adds them to the batch's dead letters."""


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
