"""A queue of keys for reconcile workers, with the habits of client-go's workqueue (and kopf):

* a key waits at most once: adding a waiting key changes nothing, so the queue holds at
  most one entry per key (bounded by the number of SFCs);
* a key is never processed by two workers at once: added while a worker has it, it is marked
  dirty and queued again when that worker calls done(), so the change is not missed;
* per-key back-off: retry(key) adds it again after first * 2^failures seconds (capped), and
  forget(key) resets that count once it succeeds; one failing key never slows another. An
  add() made while the failing attempt was processed (a resync, a change the attempt itself
  caused) is folded into the scheduled retry, so a failure slower than the resync period is
  not retried at once, forever; callers leave keys waiting out a back-off out of a resync
  (backing_off()). A change after the failure (an add() during the back-off) runs at once.

Single event loop, no locks: every method but get() is synchronous.
"""
from __future__ import annotations

import asyncio
from collections import deque


class WorkQueue:
    def __init__(self, backoff_first: float = 0.2, backoff_max: float = 5.0):
        if not 0 < backoff_first <= backoff_max:
            raise ValueError("backoff: need 0 < first <= max")
        self.backoff_first, self.backoff_max = backoff_first, backoff_max
        self._ready: deque[str] = deque()      # keys a worker may take, in order
        self._dirty: set[str] = set()           # keys to process (ready, or after done())
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: dict[str, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future] = deque()

    def add(self, key: str) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._wake()

    def add_after(self, key: str, delay: float) -> None:
        """add(key) in `delay` seconds (an earlier pending one for the key stands)."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._delayed.get(key)
        if pending is not None:
            if pending.when() <= when:
                return
            pending.cancel()
        self._delayed[key] = loop.call_at(when, self._due, key)

    def retry(self, key: str) -> float:
        """The key failed: add it again after its back-off, which doubles; the delay. Call
        it before done(key): an add() made while the key was processed waits too."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.backoff_first * 2 ** min(failures, 32), self.backoff_max)
        if key in self._dirty:  # added meanwhile: that add is this retry, after the delay
            self._dirty.discard(key)
            if key in self._ready:
                self._ready.remove(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure backs off from the start again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def backing_off(self, key: str) -> bool:
        """A retry of the key is scheduled (a periodic resync may leave it to that)."""
        return key in self._delayed

    async def get(self) -> str:
        """The next key; the caller processes it, then calls done(key)."""
        while not self._ready:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the wake-up on
                raise
        key = self._ready.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:  # added again while it was processed
            self._ready.append(key)
            self._wake()

    def close(self) -> None:
        """Cancel scheduled retries (the queue is dropped, e.g. when a term ends)."""
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()

    def __len__(self) -> int:
        """Keys waiting to be processed (queued, or dirty while processed)."""
        return len(self._dirty)

    @property
    def processing(self) -> frozenset[str]:
        return frozenset(self._processing)

    def _due(self, key: str) -> None:
        del self._delayed[key]
        self.add(key)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
