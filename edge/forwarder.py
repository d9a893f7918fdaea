"""Pump from the buffer to the uplink: seal batches into envelopes, publish them in order.

For each uplink connection :meth:`Forwarder.session` starts again at the oldest outbox row,
so whatever was not acknowledged before a disconnect or a restart is re-sent first, byte for
byte. At most ``max_in_flight`` messages await their PUBACK at once; they are handed to the
MQTT client in outbox order, and a row is deleted only after its PUBACK. New envelopes are
sealed only when the outbox has nothing left to send, so during an outage samples stay in
the buffer and go out in full batches once the broker is back. A backlog drains with
``max_in_flight`` envelopes awaiting PUBACK at once, and samples read meanwhile queue behind
it in arrival order, so the agent's envelopes stay seq-ordered. Rows handed to the client are
leased in the buffer (its bounds never drop them) until acknowledged or the session ends.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from edge.buffer import Buffer, OutboxItem
from karkhana.topics import edge_samples

log = logging.getLogger(__name__)


class Forwarder:
    def __init__(
        self,
        buffer: Buffer,
        agent_id: str,
        *,
        max_batch_samples: int,
        flush_interval_s: float,
        max_in_flight: int = 20,
    ) -> None:
        self._buffer = buffer
        self._agent_id = agent_id
        self._topic = edge_samples(agent_id)
        self._max_batch = max_batch_samples
        self._flush_interval = flush_interval_s
        self._max_in_flight = max_in_flight
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._flush_all = False
        loop = asyncio.get_running_loop()
        # Samples left over from a previous run are due at once.
        self._first_pending_at: float | None = (
            loop.time() - flush_interval_s if buffer.pending_samples else None
        )
        self.envelopes_published = 0
        self.samples_published = 0
        self.messages_published = 0  # dead letters and other non-envelope messages

    # --- notifications from the agent -------------------------------------------------

    def samples_added(self) -> None:
        if self._first_pending_at is None:
            self._first_pending_at = asyncio.get_running_loop().time()
        self._wake.set()

    def message_added(self) -> None:
        self._wake.set()

    @property
    def empty(self) -> bool:
        return self._buffer.pending_samples == 0 and self._buffer.pending_outbox == 0

    async def drain(self, within_s: float) -> bool:
        """Seal everything now and wait (up to ``within_s``) until all is acknowledged.
        Only meaningful while a session runs. Returns True when the buffer is empty."""
        self._flush_all = True
        self._wake.set()
        try:
            async with asyncio.timeout(within_s):
                while not self.empty:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        finally:
            self._flush_all = False
        return True

    # --- the per-connection session ---------------------------------------------------

    def _seal_due(self, now: float) -> bool:
        pending = self._buffer.pending_samples
        if pending <= 0:
            return False
        if pending >= self._max_batch or self._flush_all:
            return True
        started = self._first_pending_at
        return started is None or now >= started + self._flush_interval

    def _seal_wait(self, now: float) -> float | None:
        if self._buffer.pending_samples <= 0 or self._first_pending_at is None:
            return None
        return max(0.0, self._first_pending_at + self._flush_interval - now)

    async def session(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        cursor = 0  # highest outbox id handed to the client in this session
        in_flight: set[asyncio.Task[None]] = set()
        failure: asyncio.Future[None] = loop.create_future()
        self._buffer.release_leases()  # anything left from a previous session is not in flight

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            self._wake.set()
            if not task.cancelled() and task.exception() is not None and not failure.done():
                failure.set_exception(task.exception())  # type: ignore[arg-type]

        try:
            while True:
                self._wake.clear()
                if failure.done():
                    failure.result()
                room = self._max_in_flight - len(in_flight)
                if room > 0:
                    items = await self._buffer.outbox_after(cursor, room)
                    if not items and self._seal_due(loop.time()):
                        sealed = await self._buffer.seal(
                            self._agent_id, self._topic, self._max_batch
                        )
                        self._after_seal(loop.time())
                        if sealed is not None:
                            items = [sealed]
                    for item in items:
                        cursor = item.id
                        task = asyncio.create_task(self._publish(client, item))
                        in_flight.add(task)
                        task.add_done_callback(finished)
                    if items:
                        continue
                timeout = self._seal_wait(loop.time()) if room > 0 else None
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass  # a partial batch is due
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._buffer.release_leases()
            if failure.done() and not failure.cancelled():
                failure.exception()  # mark retrieved; the caller sees the session end

    def _after_seal(self, now: float) -> None:
        remaining = self._buffer.pending_samples
        if remaining <= 0:
            self._first_pending_at = None
        elif remaining < self._max_batch:
            # The rest of a backlog starts a fresh interval instead of leaving at once.
            self._first_pending_at = now

    async def _publish(self, client: aiomqtt.Client, item: OutboxItem) -> None:
        await client.publish(item.topic, item.payload, qos=1)
        await self._buffer.ack(item)
        if item.seq is None:
            self.messages_published += 1
        else:
            self.envelopes_published += 1
            self.samples_published += item.n_samples
        self._progress.set()
