"""A watch-fed copy of the controller's key range, so API reads and the reconciler cost no
etcd round trip; one per controller process, shared by both (controller/main.py).

Like a Kubernetes informer: list once, then apply every watch event in revision order
(a RESET after compaction replaces the copy). Reads use it only while it can be trusted:

* synced and its watch stream open (`usable`); while etcd is away the API reads etcd
  directly, so a dead etcd still answers UNAVAILABLE rather than stale data;
* read-your-writes: a write made through this controller returns its revision, and reads
  wait (briefly) until the copy has caught up with the newest such revision.

Writes never go through the cache: they stay transactions on etcd (api.py, reconciler.py),
and both tell it their revision (wrote()). Subscribers (the API's Watch stream, the
reconciler's work queue) get every event after the copy has applied it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from serpens.common.store import DELETE, PUT, RESET, Event, Item, Store, StoreError, Watch

log = logging.getLogger(__name__)

_CATCH_UP_S = 1.0       # longest a read waits for the copy to reach a write's revision
SUBSCRIBER_BYTES = 64 << 20   # of record values one subscriber may be behind (then a RESET)


class Subscription(asyncio.Queue):
    """One subscriber's events, bounded by count and by the bytes of their values: a
    subscriber behind by either gets one RESET instead of what it missed (it lists again)."""

    def __init__(self, depth: int, max_bytes: int):
        super().__init__(depth)
        self.max_bytes, self.bytes = max_bytes, 0

    def full(self) -> bool:
        return super().full() or self.bytes > self.max_bytes

    def _put(self, ev):
        super()._put(ev)
        self.bytes += len(ev.value or b"")

    def _get(self):
        ev = super()._get()
        self.bytes -= len(ev.value or b"")
        return ev


class Cache:
    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix = store, prefix
        self.items: dict[str, Item] = {}
        self.revision = 0          # every change up to here is in `items`
        self.written = 0           # newest revision written through this controller
        self._synced: bool | None = False
        self._watch: Watch | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._subscribers: set[asyncio.Queue] = set()

    def start(self) -> Cache:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="api-cache")
        return self

    async def close(self):
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def usable(self) -> bool:
        return bool(self._synced) and self._watch is not None and self._watch.connected

    def wrote(self, revision: int):
        self.written = max(self.written, revision)

    async def ready(self) -> bool:
        """True if reads may use the copy now (waiting for our own writes to arrive)."""
        if not self.usable:
            return False
        if self.revision >= self.written:
            return True
        async with self._changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: self.revision >= self.written or not self.usable), _CATCH_UP_S)
        return self.usable and self.revision >= self.written

    async def wait_ready(self) -> None:
        """Until reads may use the copy (synced, watch connected, our writes arrived)."""
        while not await self.ready():
            await asyncio.sleep(0.05)

    def subscribe(self, depth: int = 10000,
                  max_bytes: int = SUBSCRIBER_BYTES) -> Subscription:
        """A queue of every Event from now on. A subscriber `depth` events or `max_bytes` of
        values behind gets one RESET instead of what it missed (it lists again)."""
        queue = Subscription(depth, max_bytes)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: Subscription):
        self._subscribers.discard(queue)

    def _publish(self, ev):
        for queue in self._subscribers:
            try:
                queue.put_nowait(ev)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(Event(RESET, self.prefix, None, ev.mod_revision))

    def get(self, key: str) -> Item | None:
        return self.items.get(key)

    def list(self, prefix: str) -> dict[str, Item]:
        return {k: v for k, v in self.items.items() if k.startswith(prefix)}

    async def _run(self):
        while True:
            try:
                items, revision = await self.store.list(self.prefix)
                if self._synced is None:  # a re-list after etcd was away: changes missed
                    self._publish(Event(RESET, self.prefix, None, revision))
                self.items, self.revision = dict(items), revision
                self._synced = True
                async with self.store.watch(self.prefix, revision + 1) as watch:
                    self._watch = watch
                    async for ev in watch:
                        if ev.type == PUT:
                            self.items[ev.key] = ev.item()
                        elif ev.type == DELETE:
                            self.items.pop(ev.key, None)
                        elif ev.type == RESET:
                            self.items = dict(ev.items)
                        self.revision = max(self.revision, ev.mod_revision)
                        self._publish(ev)
                        async with self._changed:
                            self._changed.notify_all()
            except StoreError as e:
                log.warning("API cache: %s; reading etcd directly until it is back", e)
            finally:
                self._synced, self._watch = None, None  # None: was synced once
            await asyncio.sleep(0.5)
