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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.columns import SampleColumns
from gateway.deadletters import dead_letter_from
from gateway.decode import DecodeResult, EnvelopeDecoder
from gateway.stats import GatewayStats
from gateway.stores.base import Batch, Store
from karkhana.errors import StoreError

log = logging.getLogger(__name__)

STOP = object()
"""Put into the inbox to make the writer flush what is queued and exit."""

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

    The network thread queues the raw message (``topic``, ``payload``, ``received_ns``,
    ``result`` None); the writer thread parses it (``result``) as it takes it, so the parsed
    objects are used on the core that made them. A message may also arrive parsed.
    """

    result: DecodeResult | None
    token: object = None
    topic: str = ""
    payload: bytes = b""
    received_ns: int = 0

    @property
    def size(self) -> int:
        """Payload bytes (what the inbox is bounded by)."""
        return len(self.payload) if self.result is None else len(self.result.payload)

    @property
    def parsed(self) -> DecodeResult:
        if self.result is None:
            raise RuntimeError("message not parsed yet")
        return self.result


OnCommit = Callable[[list[Inbound], Batch], None]
"""Called (in the writer thread) with every message of a committed batch, and the batch."""


class Inbox(queue.Queue[object]):
    """The bounded queue between the network thread and the writer.

    Bounded twice: by messages (``max_messages``) and by their payload bytes
    (``max_bytes``), so memory stays bounded whatever the messages' size. A put blocks
    while either bound is reached (backpressure); a single message larger than
    ``max_bytes`` is still accepted when the inbox is empty, so it cannot block forever.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        super().__init__(maxsize=max_messages)
        self.max_bytes = max_bytes
        self.bytes = 0
        """Payload bytes of the queued messages (read without the lock for metrics)."""

    # queue.Queue calls these with its mutex held; ``_qsize`` reporting "full" while the
    # byte bound is reached is what makes ``put`` wait.
    def _qsize(self) -> int:
        queued = len(self.queue)
        if queued and self.bytes >= self.max_bytes:
            return max(queued, self.maxsize)
        return queued

    def _put(self, item: object) -> None:
        if isinstance(item, Inbound):
            self.bytes += item.size
        self.queue.append(item)

    def _get(self) -> object:
        item = self.queue.popleft()
        if isinstance(item, Inbound):
            self.bytes -= item.size
        return item

    def messages(self) -> int:
        """Messages queued (``qsize`` reports the inbox full while the byte bound is hit)."""
        return len(self.queue)


class BatchWriter:
    """Owns one thread that is the only user of ``store``; closes the store when done."""

    def __init__(
        self,
        store: Store,
        inbox: queue.Queue[object],
        *,
        stats: GatewayStats,
        on_commit: OnCommit,
        max_samples: int = 20_000,
        max_delay_s: float = 0.2,
        deadletter_payload_max: int = 4096,
        decoder: EnvelopeDecoder | None = None,
    ) -> None:
        self._store = store
        self._inbox = inbox
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
                saw_stop = self._collect(items, self._parse(first).sample_count)
            if saw_stop or self._stop.is_set():
                self._drain(items)
                if items:
                    self._commit(items)
                return
            self._commit(items)

    def _parse(self, item: Inbound) -> DecodeResult:
        """The message's parse (done here, in the writer thread, on first use)."""
        if item.result is None:
            item.result = self._decoder.parse(item.topic, item.payload, item.received_ns)
            # Only this thread writes this counter; readers may see it a message late.
            self._stats.samples_received += item.result.sample_count
        return item.result

    def _collect(self, items: list[Inbound], samples: int) -> bool:
        """Add waiting messages to ``items``; True when the stop marker was seen."""
        inbox = self._inbox
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
            samples += self._parse(item).sample_count
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
                if self._stop.wait(delay):
                    log.warning(
                        "stopping with %d uncommitted message(s); the broker redelivers them",
                        len(items),
                    )
                    return False
                delay = min(delay * 2, RETRY_MAX_S)

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
