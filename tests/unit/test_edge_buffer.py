"""The on-disk buffer: arrival order, seq persistence, outbox re-sent unchanged."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from edge.buffer import Buffer
from karkhana.envelope import WireEnvelope
from karkhana.models import Quality, Sample

T0 = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
TOPIC = "karkhana/v1/edge/edge-1/samples"


def samples(n: int, start: int = 0) -> list[Sample]:
    return [
        Sample("s/a/l/m", "speed", T0 + timedelta(seconds=start + i), float(start + i))
        for i in range(n)
    ]


def decode(payload: bytes) -> WireEnvelope:
    return msgspec.json.decode(payload, type=WireEnvelope)


async def test_seal_takes_oldest_samples_in_order(tmp_path: Path) -> None:
    async with Buffer(tmp_path / "b.sqlite") as buf:
        await buf.append(samples(3))
        await buf.append([Sample("s/a/l/m", "state", T0, "RUN", Quality.BAD, None)])
        assert buf.pending_samples == 4
        first = await buf.seal("edge-1", TOPIC, max_samples=3)
        assert first is not None and first.seq == 1 and first.n_samples == 3
        env = decode(first.payload)
        assert (env.v, env.agent, env.seq) == (1, "edge-1", 1)
        assert [s.value for s in env.samples] == [0.0, 1.0, 2.0]
        assert [s.ts for s in env.samples] == [
            "2024-05-01T06:00:00Z",
            "2024-05-01T06:00:01Z",
            "2024-05-01T06:00:02Z",
        ]
        second = await buf.seal("edge-1", TOPIC, max_samples=3)
        assert second is not None and second.seq == 2
        (state,) = decode(second.payload).samples
        assert (state.signal, state.value, state.quality) == ("state", "RUN", "bad")
        assert await buf.seal("edge-1", TOPIC, max_samples=3) is None
        assert (buf.pending_samples, buf.pending_outbox, buf.pending_outbox_samples) == (0, 2, 4)


async def test_seq_and_unacknowledged_envelopes_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Buffer(path) as buf:
        await buf.append(samples(4))
        one = await buf.seal("edge-1", TOPIC, 2)
        two = await buf.seal("edge-1", TOPIC, 2)
        assert one is not None and two is not None
        await buf.ack(one)
        await buf.append(samples(1, start=10))
    async with Buffer(path) as buf:
        assert (buf.pending_samples, buf.pending_outbox, buf.last_seq) == (1, 1, 2)
        (again,) = await buf.outbox_after(0, 10)
        assert again == two  # same id, seq and bytes
        three = await buf.seal("edge-1", TOPIC, 2)
        assert three is not None and three.seq == 3
        await buf.ack(two)
        await buf.ack(three)
        assert await buf.outbox_after(0, 10) == []
    async with Buffer(path) as buf:
        await buf.append(samples(1, start=20))
        four = await buf.seal("edge-1", TOPIC, 2)
        assert four is not None and four.seq == 4  # seq never reused, even with an empty outbox


async def test_outbox_keeps_dead_letters_in_publish_order(tmp_path: Path) -> None:
    async with Buffer(tmp_path / "b.sqlite") as buf:
        await buf.append(samples(1))
        env = await buf.seal("edge-1", TOPIC, 10)
        await buf.add_message("karkhana/v1/deadletter", b'{"reason": "bad JSON"}')
        items = await buf.outbox_after(0, 10)
        assert [(i.topic, i.seq) for i in items] == [
            (TOPIC, 1),
            ("karkhana/v1/deadletter", None),
        ]
        assert items[0] == env
        assert await buf.outbox_after(items[0].id, 10) == items[1:]
        assert await buf.outbox_after(0, 1) == items[:1]
        assert (buf.pending_outbox, buf.pending_outbox_letters) == (2, 1)
    async with Buffer(tmp_path / "b.sqlite") as buf:
        assert (buf.pending_outbox, buf.pending_outbox_letters) == (2, 1)
        await buf.ack(items[1])
        assert (buf.pending_outbox, buf.pending_outbox_letters) == (1, 0)


async def test_samples_are_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    async with Buffer(path) as buf:
        await buf.append(samples(5))
        with sqlite3.connect(path) as other:  # an independent reader sees committed rows
            assert other.execute("SELECT count(*) FROM samples").fetchone() == (5,)
            mode = other.execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)
