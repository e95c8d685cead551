"""The instance manager: instances of one SFC behind a router (paper §III-C, §IV-B2).

Theory of operation. Instances start when packets arrive and none runs (the router holds
them and raises `wants_instance`), stay warm while they get packets, and are stopped after
`warm_s` without any (scale to zero); their state stays in the state manager.
The control thread sleeps on an eventfd the router writes when packets wait for an
instance, waking otherwise only to check warm periods and crashed processes, so an idle node
costs almost no CPU. `scale(n)`
starts or retires instances; retiring drains an instance first (router.h), so its flows move
to the survivors without loss, reordering or state migration. A pool process that dies is
taken out of the router at its next check.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import time
from dataclasses import dataclass

from serpens.runtime_cy import _dataplane as dp

from .process_pool import PoolError, PoolProcess, ProcessPool, merge_state

log = logging.getLogger(__name__)
_names = itertools.count()


@dataclass
class _Slot:
    proc: PoolProcess
    rx: dp.Ring
    tx: dp.Ring
    activity: int = 0
    active_at: float = 0.0


class InstanceManager:
    def __init__(self, pool: ProcessPool, router: dp.Router, sfc, *, sfc_id: int = 0,
                 warm_s: float = 30.0, max_instances: int = 16, check_s: float = 0.05,
                 ring_size: int = 1024):
        """Runs instances of `sfc` (a CompiledSFC) for the router's SFC `sfc_id`."""
        self.pool, self.router, self.sfc, self.sfc_id = pool, router, sfc, sfc_id
        self.warm_s, self.max_instances = warm_s, max_instances
        self.ring_size = ring_size  # per instance and direction: fewer mbufs in flight stay in cache
        self.check_s = min(check_s, warm_s / 4)  # how often warm periods are checked
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        router.set_notify_fd(self._wake_fd, sfc_id)
        self.slots: dict[int, _Slot] = {}
        self.starts = self.stops = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._control, name="instance-manager",
                                        daemon=True)
        self._tag = next(_names)

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self._stop.set()
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join(5)
        self.scale(0)
        self.router.set_notify_fd(-1, self.sfc_id)
        os.close(self._wake_fd)

    def count(self) -> int:
        return len(self.slots)

    def scale(self, n: int):
        """Run exactly n instances (0 = scale to zero)."""
        if not 0 <= n <= self.max_instances:
            raise ValueError(f"instances: 0..{self.max_instances}, got {n}")
        with self._lock:
            while len(self.slots) < n:
                slot = self._add()
                if len(self.slots) > 1:  # scale-out: the new instance takes a share of flows
                    self.router.rebalance(self.sfc_id, slot)
            while len(self.slots) > n:
                self._retire(max(self.slots))

    def merge_state(self, timeout: float = 2.0) -> int:
        """Every running instance merges its state into the shared tables now (see
        process_pool.merge_state); returns how many did."""
        with self._lock:
            procs = [s.proc for s in self.slots.values()]
            merge_state(procs, timeout)
            return len(procs)

    @contextlib.contextmanager
    def paused(self):
        """No instance runs inside: those running drain and stop (eventual replicas merge,
        release shares go back), packets wait in the router's hold queue, and as many
        instances as before start on leaving (or on the held packets if there were none)."""
        with self._lock:
            n = len(self.slots)
            self.scale(0)
            try:
                yield
            finally:
                try:
                    self.scale(n)
                except PoolError as e:  # another SFC took the processes meanwhile
                    log.warning("sfc %d: %d of %d instances back after a pause (%s); "
                                "the rest start on traffic", self.sfc_id, len(self.slots),
                                n, e)

    # ---- internals ------------------------------------------------------------------------

    def _add(self) -> int:
        slot = self.router.reserve_slot()
        rx = dp.Ring(f"im{self._tag}_{slot}_rx{self.starts}", self.ring_size)
        tx = dp.Ring(f"im{self._tag}_{slot}_tx{self.starts}", self.ring_size)
        try:
            proc = self.pool.start_instance(self.sfc, rx, tx)
        except PoolError:
            rx.free()
            tx.free()
            self.router.release_slot(slot)
            raise
        self.router.set_instance(slot, rx, tx, proc.ctl, proc.efd, self.sfc_id)
        self.slots[slot] = _Slot(proc, rx, tx, self.router.activity(slot), time.monotonic())
        self.starts += 1
        return slot

    def _retire(self, slot: int, timeout: float = 10.0):
        s = self.slots.pop(slot)
        self.router.drain_instance(slot)
        deadline = time.monotonic() + timeout
        while not self.router.drained(slot) and not s.proc.dead:
            if time.monotonic() > deadline:
                break  # stuck: stop it anyway; the router forgets what it still held
            time.sleep(0.0002)
        if not s.proc.dead:
            self.pool.stop_instance(s.proc)
        self.router.clear_instance(slot)
        s.rx.free()
        s.tx.free()
        self.stops += 1

    def _control(self):
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        while not self._stop.is_set():
            if poller.poll(self.check_s * 1000):
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
            with self._lock:
                for slot, s in list(self.slots.items()):
                    if s.proc.dead:  # crashed: the pool replaces the process
                        self.router.drain_instance(slot)
                        self.slots.pop(slot)
                        self.router.clear_instance(slot)
                        continue
                    activity = self.router.activity(slot)
                    now = time.monotonic()
                    if activity != s.activity:
                        s.activity, s.active_at = activity, now
                    elif now - s.active_at > self.warm_s:
                        self._retire(slot)  # warm period over: scale in (to zero at last)
                if self.router.take_instance_request(self.sfc_id) and not self.slots:
                    try:
                        self._add()
                    except PoolError:
                        pass  # every pool process busy: the packets keep waiting
