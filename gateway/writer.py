"""The single writer thread: takes messages, batches, de-duplicates, commits, acknowledges.

The thread drives its message source itself (for MQTT, paho's network I/O runs inside
``take``): reading and committing alternate on one thread, so no message crosses between
threads. Batching is opportunistic: a batch takes every message already read (up to
``max_samples`` samples, the source's bounds, or ``max_delay_s`` of collecting) and is
committed as soon as no further message is waiting. Messages are acknowledged only after
their batch is committed, so the broker's in-flight window is released batch by batch and a
crash loses nothing (unacknowledged messages are redelivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.columns import SampleColumns
from gateway.deadletters import dead_letter_from
from gateway.decode import DecodeResult, EnvelopeDecoder
from gateway.stats import GatewayStats
from gateway.stores.base import Batch, Store
from karkhana.errors import StoreError

log = logging.getLogger(__name__)

IDLE_WAIT_S = 1.0
"""How long one ``take`` waits for a first message (a stop request wakes it earlier)."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 15.0
RECENT_ENVELOPES = 100_000
"""How many committed (agent, seq) keys the writer remembers to skip redelivered envelopes.

The exact key, not a per-agent high-water mark: with several gateways on one shared
subscription, or a redelivery after a reconnect, envelopes of one agent arrive out of order,
and an older seq is not a duplicate just because a newer one was committed. Anything this
window misses (a restart) is still harmless: the store keys samples by (series, ts)."""


@dataclass(slots=True)
class Inbound:
    """A message and the opaque token its source needs to acknowledge it.

    A source hands over the raw message (``topic``, ``payload``, ``received_ns``, ``result``
    None); the writer thread parses it (``result``) as it takes it. A message may also
    arrive parsed.
    """

    result: DecodeResult | None
    token: object = None
    topic: str = ""
    payload: bytes = b""
    received_ns: int = 0

    @property
    def size(self) -> int:
        """Payload bytes (what the source's byte bound counts)."""
        return len(self.payload) if self.result is None else len(self.result.payload)

    @property
    def parsed(self) -> DecodeResult:
        if self.result is None:
            raise RuntimeError("message not parsed yet")
        return self.result


OnCommit = Callable[[list[Inbound], Batch], None]
"""Called (in the writer thread) with every message of a committed batch, and the batch."""


class MessageSource(Protocol):
    """Where the writer thread takes its messages from; every method runs on that thread
    except :meth:`wake`."""

    def take(self, timeout: float) -> list[Inbound]:
        """Messages available now, waiting up to ``timeout`` s for the first one. They count
        against the source's bounds until :meth:`release`."""
        ...

    def release(self, items: list[Inbound]) -> None:
        """``items`` are committed: they no longer count against the bounds."""
        ...

    def wait(self, seconds: float) -> None:
        """Pass ``seconds`` while the writer cannot commit (store retry); may end early."""
        ...

    def wake(self) -> None:
        """Make a waiting :meth:`take` or :meth:`wait` return (any thread)."""
        ...

    def finish(self) -> None:
        """After the last commit (e.g. flush acknowledgements and disconnect)."""
        ...


class QueueSource:
    """A :class:`MessageSource` over a queue that other threads fill (in-process producers
    and tests). ``queue.Queue(maxsize=...)`` bounds it."""

    def __init__(self, inbox: queue.Queue[Inbound]) -> None:
        self.inbox = inbox
        self._woken = threading.Event()

    def take(self, timeout: float) -> list[Inbound]:
        taken: list[Inbound] = []
        deadline = time.monotonic() + timeout
        try:
            # Short gets, so a wake-up is seen within 50 ms without a marker in the queue.
            while not taken and not self._woken.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(queue.Empty):
                    taken.append(self.inbox.get(timeout=min(remaining, 0.05)))
            while True:
                taken.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        self._woken.clear()
        return taken

    def release(self, items: list[Inbound]) -> None:
        """The queue's own ``maxsize`` bounds it: nothing to count."""

    def wait(self, seconds: float) -> None:
        self._woken.wait(seconds)
        self._woken.clear()

    def wake(self) -> None:
        self._woken.set()

    def finish(self) -> None:
        pass


class BatchWriter:
    """Owns one thread that is the only user of ``store``; closes the store when done."""

    def __init__(
        self,
        store: Store,
        source: MessageSource,
        *,
        stats: GatewayStats,
        on_commit: OnCommit,
        max_samples: int = 100_000,
        max_delay_s: float = 0.2,
        deadletter_payload_max: int = 4096,
        decoder: EnvelopeDecoder | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._stats = stats
        self._on_commit = on_commit
        self._max_samples = max_samples
        self._max_delay_s = max_delay_s
        self._payload_max = deadletter_payload_max
        # Checks the samples that messages carry unchecked (``DecodeResult.pending``) and
        # groups them per series.
        self._decoder = decoder or EnvelopeDecoder()
        self._columns = SampleColumns(self._decoder)
        self._stop = threading.Event()
        # Envelopes committed lately, (agent, seq) -> None in commit order (a bounded set).
        self._recent: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._carry: list[Inbound] = []
        """Taken from the source beyond the last batch's ``max_samples``."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start the thread (call from the event loop that awaits :attr:`done`)."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
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
        self._source.wake()

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
        source = self._source
        stop = self._stop
        try:
            while True:
                stopping = stop.is_set()
                items = self._collect(IDLE_WAIT_S if not stopping else 0.0)
                if items:
                    if not self._commit(items):
                        return  # stopping during a store outage: left unacknowledged
                elif stopping and not self._carry:
                    return
        finally:
            source.finish()

    def _parse(self, item: Inbound) -> DecodeResult:
        """The message's parse (done here, in the writer thread, on first use)."""
        if item.result is None:
            item.result = self._decoder.parse(item.topic, item.payload, item.received_ns)
            # Only this thread writes this counter; readers may see it a message late.
            self._stats.samples_received += item.result.sample_count
        return item.result

    def _collect(self, first_wait_s: float) -> list[Inbound]:
        """A batch: every message available, up to ``max_samples`` or ``max_delay_s``.

        Messages taken beyond ``max_samples`` are carried into the next batch.
        """
        source = self._source
        items: list[Inbound] = []
        samples = 0
        deadline = 0.0
        while samples < self._max_samples:
            if self._carry:
                taken, self._carry = self._carry, []
            else:
                taken = source.take(first_wait_s if not items else 0.0)
                if not taken:
                    return items
            if not items:
                deadline = time.monotonic() + self._max_delay_s
            for n, item in enumerate(taken, 1):
                items.append(item)
                samples += self._parse(item).sample_count
                if samples >= self._max_samples:
                    self._carry = taken[n:]
                    break
            if time.monotonic() >= deadline:
                break
        return items

    def _remember(self, keys: set[tuple[str, int]]) -> None:
        recent = self._recent
        for key in keys:
            recent[key] = None
        while len(recent) > RECENT_ENVELOPES:
            recent.popitem(last=False)

    def _commit(self, items: list[Inbound]) -> bool:
        """Write ``items`` in one transaction (retrying on store errors); then acknowledge."""
        batch = Batch()
        columns = self._columns
        columns.clear()
        pending: dict[str, int] = {}
        keys: set[tuple[str, int]] = set()
        duplicates = 0
        for item in items:
            result = self._parse(item)
            if result.seq is not None and result.agent is not None:
                key = (result.agent, result.seq)
                if key in self._recent or key in keys:
                    duplicates += 1
                    log.debug("duplicate envelope %s seq %d skipped", result.agent, result.seq)
                    continue
                keys.add(key)
                if result.seq > pending.get(result.agent, -1):
                    pending[result.agent] = result.seq
                columns.add(result)
            if result.reason is not None:
                batch.dead_letters.append(dead_letter_from(result, self._payload_max))
        batch.runs = columns.filled()
        batch.high_water = pending
        batch.received_ns = time.time_ns()

        delay = RETRY_MIN_S
        while True:
            try:
                started = time.perf_counter()
                written = self._store.write(batch)
                write_s = time.perf_counter() - started
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
                self._source.wait(delay)
                if self._stop.is_set():
                    log.warning(
                        "stopping with %d uncommitted message(s); the broker redelivers them",
                        len(items),
                    )
                    return False
                delay = min(delay * 2, RETRY_MAX_S)

        # Samples the store refused for good were stored as dead letters in the same write.
        batch.dead_letters.extend(written.rejected)
        # Released before acknowledging, which may need to read (MqttConsumer.release).
        self._source.release(items)
        self._remember(keys)
        oldest_ns = min(item.parsed.received_ns for item in items)
        stats = self._stats
        with stats.lock:
            stats.batch_samples.observe(columns.count)
            stats.write_seconds.observe(write_s)
            stats.commit_lag_s = max(0.0, (time.time_ns() - oldest_ns) / 1e9)
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
            self._on_commit(items, batch)
        except Exception:
            # The data is committed; a failed acknowledgement only means redelivery, which
            # de-duplication absorbs.
            log.exception("acknowledging a committed batch failed")
        return True
