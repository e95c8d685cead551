"""cancel_until_done (common/tasks.py): a task that swallows a cancellation, as Python 3.11's
asyncio.wait_for can when the awaited call completes at that moment, is still stopped."""
import asyncio

import pytest

from serpens.common.tasks import cancel_until_done

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_a_task_that_swallows_cancellations_is_still_stopped():
    async def main():
        swallowed = 0

        async def stubborn():
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    swallowed += 1
                    if swallowed == 3:
                        raise

        task = asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0.02)
        await asyncio.wait_for(cancel_until_done(task, retry_s=0.05), 5)
        assert task.cancelled() and swallowed == 3

    asyncio.run(main())


def test_a_failed_task_s_exception_is_retrieved():
    async def main():
        async def fails():
            raise ValueError("x")

        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0)
        await cancel_until_done(task)
        assert task.done() and isinstance(task.exception(), ValueError)

    asyncio.run(main())
