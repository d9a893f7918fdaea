"""Stopping tasks reliably.

On Python 3.11, ``asyncio.wait_for`` (used inside aiomqtt and asyncua) can swallow a
cancellation that arrives just as the awaited operation completes; the cancelled task then
carries on as if nothing happened. Components therefore stop their tasks with
:func:`cancel_and_wait`, which repeats the cancellation until the task has really ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any], *, retry_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it is done; errors it ended with are logged."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s ended with an error while stopping: %r", task.get_name(), exc)
