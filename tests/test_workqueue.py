"""The reconciler's work queue (controller/workqueue.py): a key waits once, is never processed
by two workers at once, is run again when re-added while processed, and backs off on its own
when it fails."""
import asyncio

import pytest

from serpens.controller.workqueue import WorkQueue

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def run(coro):
    return asyncio.run(coro)


async def nothing_ready(q: WorkQueue, wait: float = 0.05) -> bool:
    try:
        key = await asyncio.wait_for(q.get(), wait)
    except asyncio.TimeoutError:
        return True
    q.done(key)
    return False


def test_a_key_added_many_times_waits_once():
    async def scenario():
        q = WorkQueue()
        for key in ("a", "b", "a", "a", "b", "c"):
            q.add(key)
        assert len(q) == 3
        got = [await q.get() for _ in range(3)]
        assert got == ["a", "b", "c"]  # first-added first
        assert await nothing_ready(q)
    run(scenario())


def test_a_key_added_while_processed_runs_once_more_afterwards_never_alongside():
    async def scenario():
        q = WorkQueue()
        q.add("a")
        assert await q.get() == "a"
        q.add("a")
        q.add("a")
        assert len(q) == 1
        assert await nothing_ready(q)  # a second worker does not get it meanwhile
        q.done("a")
        assert await q.get() == "a"  # once more, for the change made while it ran
        q.done("a")
        assert await nothing_ready(q)
    run(scenario())


def test_workers_never_hold_one_key_together_and_every_change_is_seen():
    async def scenario():
        q = WorkQueue()
        running: dict[str, int] = {}
        most = 0
        runs: dict[str, int] = {}
        seen: dict[str, int] = {}      # the newest version a run of the key saw
        version: dict[str, int] = {}   # the newest version added

        async def worker():
            nonlocal most
            while True:
                key = await q.get()
                running[key] = running.get(key, 0) + 1
                most = max(most, running[key])
                saw = version[key]
                await asyncio.sleep(0.001)
                seen[key] = saw
                runs[key] = runs.get(key, 0) + 1
                running[key] -= 1
                q.done(key)

        workers = [asyncio.ensure_future(worker()) for _ in range(8)]
        for i in range(300):
            key = f"k{i % 5}"
            version[key] = i
            q.add(key)
            if i % 7 == 0:
                await asyncio.sleep(0.0005)
        while len(q) or q.processing:
            await asyncio.sleep(0.005)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        assert most == 1
        assert seen == version  # the last run of each key came after its last change
        assert sum(runs.values()) < 300  # adds while waiting were merged
    run(scenario())


def test_failures_back_off_per_key_doubling_to_a_cap_and_success_forgets():
    async def scenario():
        q = WorkQueue(backoff_first=0.05, backoff_max=0.2)
        assert [q.retry("bad") for _ in range(4)] == [0.05, 0.1, 0.2, 0.2]
        q.forget("bad")
        assert q.failures("bad") == 0 and q.retry("bad") == 0.05
    run(scenario())


def test_a_failed_key_waits_out_its_back_off_while_others_go_on():
    async def scenario():
        q = WorkQueue(backoff_first=0.3, backoff_max=1.0)
        q.add("bad")
        assert await q.get() == "bad"
        q.done("bad")
        q.retry("bad")
        assert q.backing_off("bad") and len(q) == 0
        q.add("good")
        assert await asyncio.wait_for(q.get(), 0.1) == "good"  # not behind "bad"
        q.done("good")
        assert await nothing_ready(q, 0.1)  # "bad" not yet
        assert await asyncio.wait_for(q.get(), 2) == "bad"
        assert not q.backing_off("bad")
    run(scenario())


def test_a_key_added_while_its_failing_attempt_runs_still_waits_its_back_off():
    """A failure slower than the resync: the resync's add() lands while the key is processed;
    the retry must still wait its back-off, not run again as soon as done() is called."""
    async def scenario():
        q = WorkQueue(backoff_first=0.3, backoff_max=1.0)
        q.add("slow")
        assert await q.get() == "slow"
        q.add("slow")            # a resync or event while the attempt runs
        q.retry("slow")          # the attempt failed
        q.done("slow")
        assert q.backing_off("slow") and len(q) == 0
        assert await nothing_ready(q, 0.15)  # not at once
        assert await asyncio.wait_for(q.get(), 2) == "slow"  # after the back-off
        q.done("slow")
        assert await nothing_ready(q, 0.05)  # and once only
    run(scenario())


def test_an_earlier_retry_stands_and_close_cancels_retries():
    async def scenario():
        q = WorkQueue()
        q.add_after("a", 10)
        q.add_after("a", 0.05)   # sooner: replaces the later one
        q.add_after("a", 5)      # later: the sooner one stands
        assert await asyncio.wait_for(q.get(), 2) == "a"
        q.done("a")
        q.add_after("b", 0.05)
        q.close()
        assert await nothing_ready(q, 0.2)
    run(scenario())


def test_a_cancelled_waiter_passes_its_wake_up_on():
    async def scenario():
        q = WorkQueue()
        first = asyncio.ensure_future(q.get())
        second = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        q.add("a")       # wakes the first waiter...
        first.cancel()   # ...which is cancelled before it runs
        assert await asyncio.wait_for(second, 1) == "a"
    run(scenario())
