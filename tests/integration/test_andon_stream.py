"""The andon's server-sent events on a real uvicorn: the stream's format, a snapshot first,
a ``state`` event when a new state sample reaches the store, and the browser's way in
(session cookie instead of a key header)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.api import ApiSettings
from services.cli import serve
from tests.helpers.api import auth_headers, create_key
from tests.helpers.servers import free_port
from tests.helpers.store_builders import write_factory, write_samples

pytestmark = pytest.mark.integration

M1 = "plant/assembly/line-1/m1"
M2 = "plant/assembly/line-1/m2"
DAY = datetime(2100, 1, 4, tzinfo=UTC)  # andon_clock=data: the andon follows the data


def at(h: int, m: int = 0) -> datetime:
    return DAY + timedelta(hours=h, minutes=m)


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(field block kind, payload) per server-sent event: ("event name", data), or
    ("retry", ms), or ("comment", text)."""
    block: list[str] = []
    async for line in response.aiter_lines():
        if line:
            block.append(line)
            continue
        fields: dict[str, str] = {}
        for item in block:
            name, _, value = item.partition(": ")
            fields[name] = value
        block = []
        if "event" in fields:
            assert set(fields) == {"event", "data"}, fields
            yield fields["event"], fields["data"]
        elif "retry" in fields:
            yield "retry", fields["retry"]
        elif fields:
            yield "comment", next(iter(fields))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiSettings]:
    factory = write_factory(
        tmp_path / "factory.yaml",
        machines={M1: {"ideal_cycle_s": 1.0}, M2: {"ideal_cycle_s": 1.0}},
        shifts=[{"name": "day", "start": "06:00", "end": "14:00"}],
    )
    db = tmp_path / "store.sqlite"
    write_samples(
        db,
        [
            (M1, "state", at(6), "running"),
            (M1, "power", at(9), 10.0),
            (M2, "state", at(6), "setup"),
            (M2, "power", at(9), 3.0),
        ],
    )
    settings = ApiSettings(factory=factory, db=db, port=free_port(), andon_clock="data")
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, started))
    await asyncio.wait_for(started.wait(), timeout=10)
    try:
        yield settings
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_stream_sends_a_snapshot_then_state_changes(api: ApiSettings) -> None:
    headers = auth_headers(create_key(api.keys_path, "viewer"))
    base = f"http://127.0.0.1:{api.port}"
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client,
        client.stream("GET", "/api/v1/andon/stream") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        assert await anext(events) == ("retry", "2000")
        kind, data = await asyncio.wait_for(anext(events), timeout=10)
        assert kind == "snapshot"
        snap = json.loads(data)
        states = {m["path"]: m["state"] for m in snap["sites"][0]["lines"][0]["machines"]}
        assert states == {M1: "running", M2: "setup"}

        # The gateway stores a fault of m1 (and later data); the stream tells.
        write_samples(api.db, [(M1, "state", at(9, 1), "fault"), (M1, "power", at(9, 2), 1.0)])

        async def next_state() -> dict[str, object]:
            async for kind, data in events:
                if kind == "state":
                    return dict(json.loads(data))
            raise AssertionError("stream ended")

        change = await asyncio.wait_for(next_state(), timeout=10)
        assert change["path"] == M1
        assert change["state"] == "fault"
        assert change["since"] == "2100-01-04T09:01:00Z"
        assert change["now"] == "2100-01-04T09:02:00Z"


async def test_browser_signs_in_once_then_streams_with_the_cookie(api: ApiSettings) -> None:
    secret = create_key(api.keys_path, "viewer")
    base = f"http://127.0.0.1:{api.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as browser:
        assert (await browser.get("/andon/stream")).status_code == 401
        signed_in = await browser.post("/andon/session", headers=auth_headers(secret))
        assert signed_in.status_code == 200
        async with browser.stream("GET", "/andon/stream") as response:  # no key header
            assert response.status_code == 200
            events = _events(response)
            assert await anext(events) == ("retry", "2000")
            kind, data = await asyncio.wait_for(anext(events), timeout=10)
            assert kind == "snapshot"
            assert json.loads(data)["now"] == "2100-01-04T09:00:00Z"
