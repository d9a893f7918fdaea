from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.cli import report_rates
from gateway.stats import GatewayStats


async def test_rates_are_logged_only_with_traffic(caplog: pytest.LogCaptureFixture) -> None:
    stats = GatewayStats()
    reported = asyncio.Event()

    def source() -> GatewayStats:
        return stats.snapshot()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reported.set()

    watch = Watch()
    logging.getLogger("gateway.cli").addHandler(watch)
    caplog.set_level(logging.INFO, logger="gateway.cli")
    task = asyncio.create_task(report_rates(source, 0.01))
    try:
        await asyncio.sleep(0.05)  # several idle periods: nothing may be logged
        assert not reported.is_set()
        stats.messages = 30
        stats.samples_written = 300
        await asyncio.wait_for(reported.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        logging.getLogger("gateway.cli").removeHandler(watch)
    message = caplog.records[0].getMessage()
    assert "msg/s" in message and "samples/s written" in message
