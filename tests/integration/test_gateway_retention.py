"""The running gateway applies retention and downsampling to its SQLite store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import Gateway, GatewaySettings
from tests.helpers.servers import Mosquitto, async_wait_until
from tests.helpers.store_builders import Row, write_samples
from tests.helpers.stored import stored_count

pytestmark = pytest.mark.integration

ASSET = "lahore/weaving/line-1/loom-03"
TIMEOUT = 15.0


def count(db: Path, signal: str) -> int:
    return stored_count(db, signal)


async def test_gateway_deletes_and_downsamples_old_samples_while_ingesting(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite"
    now = datetime.now(UTC).replace(microsecond=0)
    ancient = now - timedelta(days=40)
    old = now - timedelta(days=10)
    rows: list[Row] = [(ASSET, "state", ancient + timedelta(minutes=m), m % 4) for m in range(60)]
    # One power sample per second for 5 minutes, 10 days ago: 2 per minute remain.
    rows += [(ASSET, "power", old + timedelta(seconds=s), float(s)) for s in range(300)]
    write_samples(db, rows)
    config = GatewaySettings(
        broker=mosquitto.url,
        db=db,
        client_id="gw-retention",
        retention_days=30,
        downsample_after_days=7,
        retention_interval_s=3600,
    )
    async with Gateway(config) as gateway:
        task = asyncio.create_task(gateway.run())
        await asyncio.wait_for(gateway.wait_subscribed(), TIMEOUT)
        await async_wait_until(
            lambda: count(db, "state") == 1 and count(db, "power") <= 12,
            TIMEOUT,
            "the first retention pass",
        )
        body = {
            "v": 1,
            "agent": "edge-1",
            "seq": 1,
            "sent": now.isoformat(),
            "samples": [{"asset": ASSET, "signal": "state", "ts": now.isoformat(), "value": 1}],
        }
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retention-edge")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        client.publish("karkhana/v1/edge/edge-1/samples", json.dumps(body), qos=1)
        await async_wait_until(lambda: gateway.stats.samples_written == 1, TIMEOUT, "a sample")
        client.disconnect()
        client.loop_stop()
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The newest state before the 30-day cutoff stays (the state in force), plus the new one.
    assert count(db, "state") == 2
    assert 10 <= count(db, "power") <= 12  # first and last of each minute (5 or 6 buckets)
