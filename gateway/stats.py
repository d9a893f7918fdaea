"""Counters of one gateway process."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from datetime import datetime

BATCH_SAMPLES_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
WRITE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class Histogram:
    """Cumulative-ready bucket counts (the last count is ``+Inf``) and the sum of values."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass(slots=True)
class GatewayStats:
    """Totals since start, updated once per message (``*_received``, without the lock) or
    once per batch (under ``lock``), all by the writer thread; read a :meth:`snapshot`."""

    messages_received: int = 0
    """Messages handed to the gateway by the broker (before dedup and commit)."""
    samples_received: int = 0
    """Valid samples decoded from them."""
    messages: int = 0
    """Messages committed (valid, duplicate or dead letter)."""
    samples_written: int = 0
    samples_duplicate: int = 0
    """Samples not written because (asset, signal, ts) was already stored."""
    envelopes_duplicate: int = 0
    """Envelopes skipped because this gateway committed their (agent, seq) already."""
    dead_letters: int = 0
    batches: int = 0
    write_errors: int = 0
    last_commit_ts: datetime | None = None
    commit_lag_s: float = 0.0
    """Of the last batch: its commit time minus the arrival of its oldest message."""
    batch_samples: Histogram = field(default_factory=lambda: Histogram(BATCH_SAMPLES_BUCKETS))
    write_seconds: Histogram = field(default_factory=lambda: Histogram(WRITE_SECONDS_BUCKETS))
    """Duration of each successful store write (one transaction, commit included)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by the writer while it updates several counters together."""

    def snapshot(self) -> GatewayStats:
        with self.lock:
            return GatewayStats(
                messages_received=self.messages_received,
                samples_received=self.samples_received,
                messages=self.messages,
                samples_written=self.samples_written,
                samples_duplicate=self.samples_duplicate,
                envelopes_duplicate=self.envelopes_duplicate,
                dead_letters=self.dead_letters,
                batches=self.batches,
                write_errors=self.write_errors,
                last_commit_ts=self.last_commit_ts,
                commit_lag_s=self.commit_lag_s,
                batch_samples=self.batch_samples.copy(),
                write_seconds=self.write_seconds.copy(),
            )
