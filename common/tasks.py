"""Stopping asyncio tasks for sure."""
from __future__ import annotations

import asyncio
import contextlib


async def cancel_until_done(task: asyncio.Task, retry_s: float = 0.5) -> None:
    """Cancel `task` and wait until it ends, cancelling again while it runs on: Python 3.11's
    asyncio.wait_for (inside every store call) can swallow a cancellation that lands as the
    awaited call completes, and a loop around it would carry on forever (an agent that never
    exits on SIGTERM was one). Its exception, if any, is retrieved and dropped."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=retry_s)
    if not task.cancelled():
        task.exception()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set meanwhile (periodic loops that end on it)."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
