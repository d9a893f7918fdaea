"""The edge agent: sources -> bounded queue -> on-disk buffer -> forwarder -> uplink."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from edge.buffer import Buffer, DropCounts
from edge.config import EdgeConfig
from edge.forwarder import Forwarder
from edge.metrics import MetricsServer, lag_seconds
from edge.sources import DeadLetter, Source, SourceStats, build_source
from edge.transform import build_transforms
from edge.uplink import Uplink
from karkhana.errors import KarkhanaError
from karkhana.models import Sample
from karkhana.tasks import cancel_and_wait
from karkhana.topics import DEADLETTER

log = logging.getLogger(__name__)

SAMPLE_QUEUE_SIZE = 10_000
WRITE_BATCH_MAX = 5_000


@dataclass(frozen=True)
class EdgeStats:
    """A snapshot of the agent's counters."""

    samples_read: int
    parse_errors: int
    dead_letters: int
    samples_buffered: int  # on disk, not yet in an envelope
    outbox_pending: int  # envelopes and dead letters waiting for PUBACK
    samples_pending: int  # buffered + inside pending envelopes
    envelopes_published: int
    samples_published: int
    last_seq: int
    uplink_connected: bool
    uplink_connections: int
    sources: dict[str, SourceStats] = field(default_factory=dict)
    dropped: DropCounts = field(default_factory=DropCounts)  # by the buffer bounds
    buffer_bytes: int = 0  # payload bytes stored in the buffer
    uplink_lag_s: float = 0.0  # age of the oldest unsent sample or message
    unmapped_states: int = 0  # values with no entry in their state_map (passed through)


class _AgentSink:
    """The Sink every source writes into: a bounded queue (samples) and the buffer
    (dead letters)."""

    def __init__(self, agent: EdgeAgent) -> None:
        self._agent = agent
        self._transforms = None if agent._transforms.empty else agent._transforms
        self.stats: SourceStats | None = None  # of the source writing into this sink

    async def put(self, sample: Sample) -> None:
        if self._transforms is not None:  # value mapping (edge.transform)
            transform = self._transforms.lookup(sample.asset, sample.signal)
            if transform is not None:
                mapped = transform.apply(sample)
                if mapped is None:
                    if self.stats is not None:
                        self.stats.suppressed += 1
                    return
                sample = mapped
        await self._agent._queue.put(sample)
        self._agent._samples_queued += 1

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._agent._add_dead_letter(letter)

    def source_state_changed(self) -> None:
        if self._agent._uplink is not None:
            self._agent._uplink.status_changed()

    def ticket(self) -> int:
        return self._agent._samples_queued

    async def wait_stored(self, ticket: int) -> None:
        agent = self._agent
        async with agent._stored_changed:
            await agent._stored_changed.wait_for(lambda: agent._samples_stored >= ticket)


class EdgeAgent:
    """Async context manager owning the sources, the buffer and the uplink.

    ``__aenter__`` opens the buffer and starts everything; ``run()`` waits until cancelled
    (or raises if a component fails for good); ``__aexit__`` stops the sources, flushes what
    can be flushed within ``shutdown_timeout_s`` and closes everything. Whatever is not
    acknowledged stays in the buffer file for the next start.
    """

    def __init__(self, config: EdgeConfig, *, shutdown_timeout_s: float = 3.0) -> None:
        self.config = config
        self._shutdown_timeout_s = shutdown_timeout_s
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=SAMPLE_QUEUE_SIZE)
        # The queue is FIFO and the writer stores in order, so "n samples queued so far" is
        # stored once the writer has stored n: sources acknowledge their input on that.
        self._samples_queued = 0
        self._samples_stored = 0
        self._stored_changed = asyncio.Condition()
        self._stack = contextlib.AsyncExitStack()
        self._buffer: Buffer | None = None
        self._forwarder: Forwarder | None = None
        self._uplink: Uplink | None = None
        self._sources: list[Source] = []
        self._writer: asyncio.Task[None] | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._dead_letters = 0
        self._transforms = build_transforms(config)
        self.metrics: MetricsServer | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        self._buffer = await self._stack.enter_async_context(
            Buffer(
                cfg.buffer_path,
                max_bytes=cfg.buffer.max_bytes,
                max_age_s=cfg.buffer.max_age_s,
            )
        )
        self._forwarder = Forwarder(
            self._buffer,
            cfg.agent_id,
            max_batch_samples=cfg.buffer.max_batch_samples,
            flush_interval_s=cfg.buffer.flush_interval_s,
        )
        self._uplink = await self._stack.enter_async_context(
            Uplink(cfg, self._forwarder.session, status_details=self._status_details)
        )
        self._stack.push_async_callback(self._flush)
        self._stack.push_async_callback(self._stop_writer)
        self._writer = asyncio.create_task(self._write_loop(), name="edge-buffer-writer")
        if cfg.metrics is not None:
            self.metrics = await self._stack.enter_async_context(
                MetricsServer(cfg.agent_id, lambda: self.stats, cfg.metrics.host, cfg.metrics.port)
            )
        for source_config in cfg.sources:
            sink = _AgentSink(self)
            source = build_source(source_config, sink, cfg)
            sink.stats = source.stats
            await self._stack.enter_async_context(source)
            self._sources.append(source)
        log.info(
            "edge agent %s: %d source(s), buffer %s, uplink %s",
            cfg.agent_id,
            len(self._sources),
            cfg.buffer_path,
            cfg.uplink.broker,
        )

    def _status_details(self) -> dict[str, Any]:
        """Source connection states and buffer depth for the retained status message."""
        sources = {s.name: s.stats.connected for s in self._sources}
        buffer = self._buffer
        pending = buffer.pending_samples + buffer.pending_outbox_samples if buffer else 0
        return {
            "ready": bool(sources) and all(sources.values()),
            "sources": {n: "connected" if up else "disconnected" for n, up in sources.items()},
            "samples_pending": pending,
            "buffer_bytes": buffer.stored_bytes if buffer else 0,
        }

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The stack unwinds in reverse: sources, then the writer (drains the queue into
        # the buffer), then the flush (while the uplink is still connected), then the
        # uplink (publishes the offline status), then the buffer.
        await self._stack.aclose()
        log.info("edge agent %s stopped: %s", self.config.agent_id, self.stats)

    async def run(self) -> None:
        """Run until cancelled; raises if the buffer writer or the uplink fails for good."""
        if self._writer is None or self._uplink is None:
            raise RuntimeError("EdgeAgent.run() needs `async with EdgeAgent(...)` first")
        watched = [self._writer, self._uplink.task]
        done, _ = await asyncio.wait(
            [t for t in watched if t is not None], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            task.result()
        raise KarkhanaError("edge agent: a component stopped unexpectedly")

    # --- the buffer writer ------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._buffer is not None and self._forwarder is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < WRITE_BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._buffer.append(batch)
            except KarkhanaError:
                log.exception("edge agent: cannot write %d samples to the buffer", len(batch))
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()
            async with self._stored_changed:
                self._samples_stored += len(batch)
                self._stored_changed.notify_all()
            self._forwarder.samples_added()

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if not writer.done():
            try:
                async with asyncio.timeout(self._shutdown_timeout_s):
                    await self._queue.join()
            except TimeoutError:
                log.warning("edge agent: %d samples not written at shutdown", self._queue.qsize())
        await cancel_and_wait(writer)

    async def _flush(self) -> None:
        """Publish what can be published while the uplink is still up."""
        if self._uplink is None or self._forwarder is None:
            return
        if self._uplink.connected and not self._forwarder.empty:
            flushed = await self._forwarder.drain(self._shutdown_timeout_s)
            if not flushed:
                log.info("edge agent: shutdown flush incomplete; the rest stays in the buffer")

    async def _add_dead_letter(self, letter: DeadLetter) -> None:
        assert self._buffer is not None and self._forwarder is not None
        payload = json.dumps(letter.to_json(), ensure_ascii=False).encode()
        await self._buffer.add_message(DEADLETTER, payload)
        self._dead_letters += 1
        self._forwarder.message_added()

    # --- observation ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The uplink and every source are connected."""
        return (
            self._uplink is not None
            and self._uplink.connected
            and all(s.stats.connected for s in self._sources)
        )

    @property
    def pending(self) -> int:
        """Samples and dead letters read but not yet acknowledged by the broker (in memory,
        in the buffer or in unacknowledged envelopes); 0 when everything is delivered."""
        buffer = self._buffer
        if buffer is None:
            return self._queue.qsize()
        return (
            self._queue.qsize()
            + buffer.pending_samples
            + buffer.pending_outbox_samples
            + buffer.pending_outbox_letters
        )

    @property
    def stats(self) -> EdgeStats:
        buffer, forwarder, uplink = self._buffer, self._forwarder, self._uplink
        buffered = buffer.pending_samples if buffer else 0
        return EdgeStats(
            samples_read=sum(s.stats.samples_read for s in self._sources),
            parse_errors=sum(s.stats.parse_errors for s in self._sources),
            dead_letters=self._dead_letters,
            samples_buffered=buffered,
            outbox_pending=buffer.pending_outbox if buffer else 0,
            samples_pending=buffered + (buffer.pending_outbox_samples if buffer else 0),
            envelopes_published=forwarder.envelopes_published if forwarder else 0,
            samples_published=forwarder.samples_published if forwarder else 0,
            last_seq=buffer.last_seq if buffer else 0,
            uplink_connected=uplink.connected if uplink else False,
            uplink_connections=uplink.connections if uplink else 0,
            sources={s.name: replace(s.stats) for s in self._sources},
            dropped=buffer.dropped if buffer else DropCounts(),
            buffer_bytes=buffer.stored_bytes if buffer else 0,
            uplink_lag_s=lag_seconds(buffer.oldest_added if buffer else None),
            unmapped_states=self._transforms.unmapped,
        )
