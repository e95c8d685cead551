"""A router hop served SAND-style: each instance a child forked on demand from a zygote.

SAND (Akkus et al., ATC'18) keeps a function's code loaded in a process and forks a child to
serve it; the paper's Table IV and Fig. 11 take fork as SAND's way to start and scale
instances. Here the zygote is one pool process (bench/baselines.py Fork/ForkRedis, the loader
of bench/native/loaders.c): it dlopen()s the NF once, and each start forks a child that runs
the instance until its ring stays empty for the pool's `idle_us`, then exits. A supervisor
thread (this module) forks the next child when packets wait on the hop's ring and no child
runs: the instance is started by the arrival of packets, as a FaaS platform's are.

The router sees the hop as one instance whose control block never sleeps (like the global
proxy's, bench/proxy.py): the children poll and exit rather than sleep, so there is nothing to
wake, and the zygote, which sleeps between starts, is never woken by traffic. The children
write their NF counters into the zygote's control block (shared, inherited across fork); each
child starts them from zero, so the hop adds up those of the children that ended.
"""
from __future__ import annotations

import os
import threading
import time

from serpens.runtime_cy import _dataplane as dp


class ForkedHop:
    def __init__(self, pool, proc, router, sfc, sfc_id: int, how, ring_size: int = 1024,
                 poll_s: float = 0.001):
        """Serve router SFC `sfc_id` with children of pool process `proc` (started with
        `how`, a Fork), checking every `poll_s` whether one must be forked."""
        self.pool, self.proc, self.router, self.sfc, self.how = pool, proc, router, sfc, how
        self.poll_s = poll_s
        self.forks = 0
        self.error = None  # why a fork failed (the supervisor stops forking)
        self._done = proc.ctl.stats()["forked_done"]  # children ended before ours
        self._totals = None  # NF counters of the children that ended
        ctl_fd = os.memfd_create("serpens-bench-forked", os.MFD_CLOEXEC)
        try:
            os.ftruncate(ctl_fd, dp.CTL_SIZE)
            self.ctl = dp.PoolCtl(ctl_fd)  # the router's view: never asleep
        finally:
            os.close(ctl_fd)
        self.efd = os.eventfd(0, os.EFD_CLOEXEC)  # never written (never asleep)
        self.slot = router.reserve_index()
        tag = f"{os.getpid() % 100000}_{id(self) % 10000}"
        self.rx = dp.Ring(f"fk{tag}_{self.slot}_rx", ring_size)
        self.tx = dp.Ring(f"fk{tag}_{self.slot}_tx", ring_size)
        router.set_instance(self.slot, self.rx, self.tx, self.ctl, self.efd, sfc_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="forked-hop", daemon=True)
        self._thread.start()

    def _child_running(self) -> bool:
        return self.proc.ctl.stats()["forked_done"] - self._done < self.forks

    @staticmethod
    def _added(totals, counts) -> list[dict]:
        if not totals:
            return [dict(c, counters=dict(c["counters"])) for c in counts]
        out = []
        for t, c in zip(totals, counts):
            named = dict(t["counters"])
            for name, v in c["counters"].items():
                named[name] = named.get(name, 0) + v
            out.append({"in": t["in"] + c["in"], "dropped": t["dropped"] + c["dropped"],
                        "counters": named})
        return out

    def _supervise(self):
        while not self._stop.is_set():
            if self.rx.count() and not self._child_running():
                try:
                    if self.forks:  # the last child ended: its counters are final
                        self._totals = self._added(self._totals, self._last_counts())
                    self.pool.start_instance(self.sfc, self.rx, self.tx, process=self.proc,
                                             how=self.how)
                    self.forks += 1
                except Exception as e:  # the hop carries nothing more: the bench says why
                    self.error = f"fork of {self.sfc.steps[0].name}: {e}"
                    return
            time.sleep(self.poll_s)  # (cheaper than Event.wait: it runs on the NFs' CPU)

    def _last_counts(self) -> list[dict]:
        return self.proc.ctl.nf_counters(len(self.sfc.steps))

    def step_counts(self) -> list[dict]:
        """Per NF step, what the hop's children took in and dropped, and their named
        counters: those that ended, plus the last one's (live if it still runs)."""
        return self._added(self._totals, self._last_counts()) if self.forks else []

    def close(self, timeout: float = 10.0):
        """Stop forking; wait for the running child to idle out; let the router go."""
        self._stop.set()
        self._thread.join(5)
        deadline = time.monotonic() + timeout
        while self._child_running() and time.monotonic() < deadline:
            time.sleep(0.001)
        if self.router.clear_instance(self.slot):
            self.rx.free()
            self.tx.free()
        os.close(self.efd)
