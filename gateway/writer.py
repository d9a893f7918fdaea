"""The single writer thread: batches decoded messages, de-duplicates, commits, acknowledges.

Batching is opportunistic: a batch takes every message already waiting (up to
``max_samples`` samples or ``max_delay_s`` of collecting) and is committed as soon as no
further message is waiting. Messages are acknowledged to the broker only after their batch
is committed, so the broker's in-flight window is released batch by batch and a crash
loses nothing (unacknowledged messages are redelivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.deadletters import DeadLetter, dead_letter_from
from gateway.decode import DecodeResult
from gateway.stats import GatewayStats
from gateway.stores.base import Batch, Store
from karkhana.errors import StoreError

log = logging.getLogger(__name__)

STOP = object()
"""Put into the inbox to make the writer flush what is queued and exit."""

RETRY_MIN_S = 0.5
RETRY_MAX_S = 15.0


@dataclass(slots=True)
class Inbound:
    """A decoded message and the opaque token its source needs to acknowledge it."""

    result: DecodeResult
    token: object = None


OnCommit = Callable[[list[Inbound], list[DeadLetter]], None]
"""Called (in the writer thread) with every message of a committed batch."""


class BatchWriter:
    """Owns one thread that is the only user of ``store``; closes the store when done."""

    def __init__(
        self,
        store: Store,
        inbox: queue.Queue[object],
        *,
        stats: GatewayStats,
        on_commit: OnCommit,
        max_samples: int = 5000,
        max_delay_s: float = 0.2,
        deadletter_payload_max: int = 4096,
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._stats = stats
        self._on_commit = on_commit
        self._max_samples = max_samples
        self._max_delay_s = max_delay_s
        self._payload_max = deadletter_payload_max
        self._stop = threading.Event()
        self._marks: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start the thread (call from the event loop that awaits :attr:`done`)."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._marks = self._store.high_water_marks()
        self._thread = threading.Thread(target=self._main, name="karkhana-gateway-writer")
        self._thread.start()

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolves when the thread has exited (with its exception, if it failed)."""
        if self._done is None:
            raise RuntimeError("writer not started")
        return self._done

    def request_stop(self) -> None:
        """Flush what is queued, then exit. Never blocks."""
        self._stop.set()
        # When the inbox is full the writer is busy and checks the stop flag after its batch.
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(STOP)

    # -- writer thread ---------------------------------------------------------------------

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self._loop_batches()
        except BaseException as exc:
            log.exception("gateway writer failed")
            error = exc
        finally:
            self._store.close()
            self._resolve(error)

    def _resolve(self, error: BaseException | None) -> None:
        loop, done = self._loop, self._done
        assert loop is not None and done is not None

        def settle() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            log.debug("event loop closed before the writer finished")

    def _loop_batches(self) -> None:
        inbox = self._inbox
        while True:
            first = inbox.get()
            items: list[Inbound] = []
            saw_stop = first is STOP
            if not saw_stop:
                assert isinstance(first, Inbound)
                items.append(first)
                saw_stop = self._collect(items)
            if saw_stop or self._stop.is_set():
                self._drain(items)
                if items:
                    self._commit(items)
                return
            self._commit(items)

    def _collect(self, items: list[Inbound]) -> bool:
        """Add waiting messages to ``items``; True when the stop marker was seen."""
        inbox = self._inbox
        samples = len(items[0].result.samples)
        deadline = time.monotonic() + self._max_delay_s
        while samples < self._max_samples:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return False
            if item is STOP:
                return True
            assert isinstance(item, Inbound)
            items.append(item)
            samples += len(item.result.samples)
            if time.monotonic() >= deadline:
                return False
        return False

    def _drain(self, items: list[Inbound]) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Inbound):
                items.append(item)

    def _commit(self, items: list[Inbound]) -> bool:
        """Write ``items`` in one transaction (retrying on store errors); then acknowledge."""
        batch = Batch()
        pending: dict[str, int] = {}
        duplicates = 0
        for item in items:
            result = item.result
            if result.seq is not None and result.agent is not None:
                mark = pending.get(result.agent)
                if mark is None:
                    mark = self._marks.get(result.agent, -1)
                if result.seq <= mark:
                    duplicates += 1
                    log.debug(
                        "duplicate envelope %s seq %d (committed up to %d) skipped",
                        result.agent,
                        result.seq,
                        mark,
                    )
                    continue
                pending[result.agent] = result.seq
                batch.samples.extend(result.samples)
            if result.reason is not None:
                batch.dead_letters.append(dead_letter_from(result, self._payload_max))
        batch.high_water = pending
        batch.received_ns = time.time_ns()

        delay = RETRY_MIN_S
        while True:
            try:
                written = self._store.write(batch)
                break
            except StoreError as exc:
                with self._stats.lock:
                    self._stats.write_errors += 1
                log.error(
                    "%s; %d message(s) stay unacknowledged, retrying in %.1f s",
                    exc,
                    len(items),
                    delay,
                )
                if self._stop.wait(delay):
                    log.warning(
                        "stopping with %d uncommitted message(s); the broker redelivers them",
                        len(items),
                    )
                    return False
                delay = min(delay * 2, RETRY_MAX_S)

        self._marks.update(pending)
        stats = self._stats
        with stats.lock:
            stats.messages += len(items)
            stats.samples_written += written.samples_written
            stats.samples_duplicate += written.samples_duplicate
            stats.envelopes_duplicate += duplicates
            stats.dead_letters += len(batch.dead_letters)
            stats.batches += 1
            stats.last_commit_ts = datetime.now(UTC)
        for letter in batch.dead_letters:
            log.warning("dead letter from %s: %s", letter.topic, letter.reason)
        try:
            self._on_commit(items, batch.dead_letters)
        except Exception:
            # The data is committed; a failed acknowledgement only means redelivery, which
            # de-duplication absorbs.
            log.exception("acknowledging a committed batch failed")
        return True
