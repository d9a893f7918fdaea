"""Counters of one gateway process."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class GatewayStats:
    """Totals since start. Updated by the writer thread only; read a :meth:`snapshot`."""

    messages: int = 0
    """Messages committed (valid, duplicate or dead letter)."""
    samples_written: int = 0
    samples_duplicate: int = 0
    """Samples not written because (asset, signal, ts) was already stored."""
    envelopes_duplicate: int = 0
    """Envelopes skipped because their seq was at or below the agent's committed mark."""
    dead_letters: int = 0
    batches: int = 0
    write_errors: int = 0
    last_commit_ts: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by the writer while it updates several counters together."""

    def snapshot(self) -> GatewayStats:
        with self.lock:
            return GatewayStats(
                messages=self.messages,
                samples_written=self.samples_written,
                samples_duplicate=self.samples_duplicate,
                envelopes_duplicate=self.envelopes_duplicate,
                dead_letters=self.dead_letters,
                batches=self.batches,
                write_errors=self.write_errors,
                last_commit_ts=self.last_commit_ts,
            )
