"""A process's record in etcd, kept under its lease (DESIGN §4): an agent's node, a gateway.

The key is put with the process's lease at start, then rewritten every `period` with what
`record()` returns then (its load, the term it applied...). A dead or cut-off process's key
disappears within the lease TTL: that is how the controller notices it is gone. Losing etcd
never stops the process: the loop keeps retrying, and on a lost lease it takes a new one and
writes the record again. close() revokes the lease, so the record goes at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from .store import Store, StoreError
from .tasks import cancel_until_done

log = logging.getLogger(__name__)


class LeasedRecord:
    """Keeps `key` = record() in etcd under a lease of `ttl` s, refreshed every `period` s,
    until close(). `what` names it in logs ("node edge-1")."""

    def __init__(self, store: Store, key: str, record: Callable[[], str], *, ttl: int = 5,
                 period: float = 1.0, what: str = ""):
        self.store, self.key, self.record = store, key, record
        self.ttl, self.period = ttl, period
        self.what = what or key
        self.lease = None
        self.reports = 0
        self._task = None
        self._closed = False
        self._now = asyncio.Event()

    async def start(self) -> LeasedRecord:
        """Put the record now (raises StoreError if etcd cannot be reached), then keep it."""
        self.lease = await self.store.grant(self.ttl)
        await self.store.put(self.key, self.record(), lease=self.lease)
        self._task = asyncio.get_running_loop().create_task(self._keep())
        return self

    def refresh(self) -> None:
        """Write the record at once (it changed), not at the next period."""
        self._now.set()

    async def _keep(self):
        while not self._closed:
            try:
                await asyncio.wait_for(self._now.wait(), self.period)
            except asyncio.TimeoutError:
                pass
            self._now.clear()
            value = self.record()
            try:
                if self.lease.lost.is_set():  # expired while etcd was away: register again
                    log.warning("%s: lease lost, registering again", self.what)
                    self.lease = await self.store.grant(self.ttl)
                await self.store.put(self.key, value, lease=self.lease)
                self.reports += 1
            except StoreError as e:  # etcd away: the process goes on, the next put retries
                log.warning("%s: report failed: %s", self.what, e)

    async def close(self):
        """Deregister: the record goes at once (a crash leaves it to the lease TTL)."""
        self._closed = True
        if self._task:
            await cancel_until_done(self._task)
        if self.lease is not None:
            try:
                await self.lease.revoke()
            except StoreError as e:
                log.warning("%s: could not deregister: %s", self.what, e)


async def registered_until(stop: asyncio.Event, connect: Callable[[], Awaitable[Store]],
                           register: Callable[[Store], Awaitable], what: str) -> None:
    """Until `stop`: connect to etcd and `register(store)` (a started LeasedRecord, or an
    object with close() keeping one); etcd being away at start is retried every second, and
    never holds the process up. On stop the record is closed (deregistered)."""
    while not stop.is_set():
        try:
            store = await connect()
            try:
                kept = await register(store)
                log.info("%s registered in etcd", what)
                await stop.wait()
                await kept.close()
            finally:
                await store.close()
        except StoreError as e:
            log.warning("etcd unavailable (%s); %s goes on, retrying", e, what)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
