"""The instance manager: instances of one SFC behind a router (paper §III-C, §IV-B2).

Theory of operation. Instances start when packets arrive and none runs (the router holds
them and raises `wants_instance`), stay warm while they get packets, and are stopped after
`warm_s` without any (scale to zero); their state stays in the state manager.
The control thread sleeps on an eventfd the router writes when packets wait for an
instance, waking otherwise only to check warm periods and crashed processes, so an idle node
costs almost no CPU. `scale(n)`
starts or retires instances; retiring drains an instance first (router.h), so its flows move
to the survivors without loss, reordering or state migration.

Faults (DESIGN §8). The router's watchdog kills an instance stuck in one batch longer than
`budget_ms`. A pool process that dies tells us at once (PoolProcess.on_death): the router lets
go of its instance (counting what it held as dropped), the death is described (agent/faults.py:
the NF, the signal, the address) and recorded, and instances start again after a back-off;
after too many crashes the SFC is Failed and the router drops its packets. A start that
fails (an NF's init() refused, its state filesystem full) counts as a crash: the same
back-off, Degraded then Failed, one log line per attempt. `health()` says which.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import select
import threading
import time
from dataclasses import dataclass

from serpens.runtime_cy import _dataplane as dp

from .faults import DEGRADED, FAILED, RUNNING, CrashPolicy, describe_death, start_failure
from .process_pool import (MAPPED, InstanceStart, PoolError, PoolExhausted, PoolProcess,
                           ProcessPool, merge_state, split_state)
from .usage import BusyCycles

log = logging.getLogger(__name__)
_names = itertools.count()


@dataclass
class _Instance:
    proc: PoolProcess
    rx: dp.Ring
    tx: dp.Ring
    pidfd: int               # the router's own handles on the process (watchdog, wake-ups):
    efd: int                 # dups, closed only once the router let go of the instance
    activity: int = 0
    active_at: float = 0.0


class InstanceManager:
    def __init__(self, pool: ProcessPool, router: dp.Router, sfc, *, sfc_id: int = 0,
                 warm_s: float = 30.0, max_instances: int = 16, check_s: float = 0.05,
                 ring_size: int = 1024, budget_ms: float = 10.0,
                 crashes: CrashPolicy | None = None, how: InstanceStart = MAPPED):
        """Runs instances of `sfc` (a CompiledSFC) for the router's SFC `sfc_id`; an
        instance inside one batch longer than `budget_ms` is killed (0: never). `how`: how
        each instance starts (the engine's images and tables; benchmarks pass a baseline's)."""
        self.pool, self.router, self.sfc, self.sfc_id = pool, router, sfc, sfc_id
        self.how = how
        self.budget_ms = budget_ms
        self.crashes = crashes or CrashPolicy()
        self.started: collections.deque = collections.deque(maxlen=256)  # processes, in order
        self.start_problem = ""  # why packets wait for an instance (no free pool process)
        self.wanted = 0   # instances last asked for by scale()
        self.restore = 0  # of those, lost to crashes and not started again yet
        router.set_drop_all(sfc_id, False)  # a failed predecessor's verdict is not ours
        self.warm_s, self.max_instances = warm_s, max_instances
        self.ring_size = ring_size  # per instance and direction: fewer mbufs in flight stay in cache
        self.check_s = min(check_s, warm_s / 4)  # how often warm periods are checked
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        router.set_notify_fd(self._wake_fd, sfc_id)
        self.instances: dict[int, _Instance] = {}
        self.starts = self.stops = 0
        self.starting = 0  # instances being started now (metrics)
        self.counts = _Counts(len(sfc.steps))  # NF counters and wake-ups, for metrics
        self.busy = BusyCycles()  # its instances' CPU time (usage metering)
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
        self.router.quiesce()  # (a write to the fd the router began before goes in first)
        os.close(self._wake_fd)

    def count(self) -> int:
        return len(self.instances)

    def health(self) -> tuple[str, str]:
        """(phase, message): Running, Degraded (crashed and restarting, or instances cannot
        start) or Failed; the message says why, or why its packets wait. Not under the lock:
        node stats (GetNode, load reports) must not wait for a drain."""
        phase, message = self.crashes.phase()
        if phase == RUNNING and self.start_problem:
            return RUNNING, self.start_problem
        if phase == DEGRADED and self.start_problem:  # why "restarting" takes a while
            return phase, f"{message}; {self.start_problem}"
        return phase, message

    def scale(self, n: int):
        """Run exactly n instances (0 = scale to zero)."""
        if not 0 <= n <= self.max_instances:
            raise ValueError(f"instances: 0..{self.max_instances}, got {n}")
        with self._lock:
            self.wanted, self.restore = n, 0
            if self.crashes.failed:
                n = 0
            while len(self.instances) < n:
                i = self._add()
                if len(self.instances) > 1:  # scale-out: the new instance takes a share of flows
                    with contextlib.suppress(ValueError):  # (it crashed at once: reaped)
                        self.router.rebalance(self.sfc_id, i)
            while len(self.instances) > n:
                self._retire(max(self.instances))

    def merge_state(self, timeout: float = 2.0) -> int:
        """Every running instance merges its state into the shared tables now (see
        process_pool.merge_state); returns how many did."""
        with self._lock:
            procs = [s.proc for s in self.instances.values()]
            merge_state(procs, timeout)
            return len(procs)

    def split_state(self, timeout: float = 2.0, only: str = ""):
        """A share of every release pool (or only of `only`, "<namespace>/<table>") split off
        into `<table>@out` by an instance (one is started if none runs: it stops again after
        warm_s without packets)."""
        with self._lock:
            if not self.instances:
                self._add()
            split_state(self.instances[min(self.instances)].proc, timeout, only)

    def nf_ops(self) -> list[dict] | None:
        """Per step, the ops its NF has ({"merge", "split"}), as the last instance started
        found them; None before any instance ran."""
        procs = list(self.started)
        if not procs:
            return None
        return [procs[-1].ctl.nf_ops(s) for s in range(len(self.sfc.steps))]

    @contextlib.contextmanager
    def paused(self):
        """No instance runs inside: those running drain and stop (eventual replicas merge,
        release shares go back), packets wait in the router's hold queue, and as many
        instances as before start on leaving (or on the held packets if there were none)."""
        with self._lock:
            n = len(self.instances)
            self.scale(0)
            try:
                yield
            finally:
                try:
                    self.scale(n)
                except PoolError as e:  # another SFC took the processes meanwhile
                    log.warning("sfc %d: %d of %d instances back after a pause (%s); "
                                "the rest start on traffic", self.sfc_id, len(self.instances),
                                n, e)

    # ---- internals ------------------------------------------------------------------------

    def _add(self) -> int:
        self.starting += 1
        try:
            return self._start_one()
        finally:
            self.starting -= 1

    def _start_one(self) -> int:
        i = self.router.reserve_index()
        rx = dp.Ring(f"im{self._tag}_{i}_rx{self.starts}", self.ring_size)
        tx = dp.Ring(f"im{self._tag}_{i}_tx{self.starts}", self.ring_size)
        try:
            proc = self.pool.start_instance(self.sfc, rx, tx, how=self.how)
            # ours: the pool closes its own when the process dies, the router may still
            # write to these until clear_instance() (OSError: it died just now)
            pidfd, efd = os.dup(proc.pidfd), os.dup(proc.efd)
        except (PoolError, OSError) as e:
            rx.free()
            tx.free()
            self.router.release_index(i)
            if not isinstance(e, PoolError):
                e = PoolError(f"the pool process died while starting ({e})")
            if not isinstance(e, PoolExhausted):  # (no process free: its packets wait)
                self._failed_start(getattr(e, "process", None), str(e))
            raise e
        self.starts += 1  # counted before the router gives it packets: whoever sees them,
        # sees the start (a test once read the count between the two)
        self.busy.begin(i, proc.ctl)  # (before the router gives it packets)
        self.router.set_instance(i, rx, tx, proc.ctl, efd, self.sfc_id, pidfd=pidfd,
                                 pid=proc.pid, budget_ms=self.budget_ms)
        self.instances[i] = _Instance(proc, rx, tx, pidfd, efd, self.router.activity(i),
                                      time.monotonic())
        proc.on_death = self._on_death
        self.started.append(proc)
        self.counts.add(i, proc)
        if proc.dead:  # died before it was ours to watch
            self._on_death(proc)
        return i

    def _forget(self, i: int, s: _Instance):
        """The router lets go of instance i (stopped or dead); then its rings go."""
        self.counts.retire(i)  # its process is done with packets: its counters are final
        if self.router.clear_instance(i):
            s.rx.free()
            s.tx.free()
            os.close(s.pidfd)
            os.close(s.efd)
        else:  # the router did not answer: leaking rings and fds beats freeing them under it
            log.error("sfc %d: router instance %d not released; its rings stay", self.sfc_id, i)

    def _failed_start(self, proc: PoolProcess | None, reason: str):
        """A start failed: a crash like any other (back-off, Failed when it repeats), whether
        its process died in it (an NF's init() that faults) or refused it and lives on (an
        init() that fails, a state table with no room); one log line per attempt."""
        if proc is not None and (proc.dead or proc.ctl.crash() is not None):
            fault = describe_death(proc.returncode, proc.ctl.crash(), proc.ctl.current_step(),
                                   [st.name for st in self.sfc.steps], None, 0, proc.pid)
            if not proc.dead:
                self.pool.replace_doomed(proc)
        else:
            fault = start_failure(reason, proc.pid if proc is not None else 0)
        self.crashes.record(fault)
        phase, message = self.crashes.phase()
        log.warning("sfc %d: %s", self.sfc_id, message)
        if phase == FAILED:
            self.router.set_drop_all(self.sfc_id, True)

    def _on_death(self, proc: PoolProcess):
        """From the pool's monitor thread: wake the control thread, which handles it."""
        os.eventfd_write(self._wake_fd, 1)

    def _bury(self, i: int, s: _Instance):
        """Instance i's process died: release it, record why, and fail the SFC if it must."""
        self.instances.pop(i)
        s.proc.on_death = None
        self.restore += 1
        watchdog_tsc = self.router.watchdog_fired(i)
        # set by the pool's monitor once the process has exited; a crash record says more,
        # sooner (the exit of a DPDK process takes the kernel up to 300 ms)
        returncode = s.proc.returncode
        fault = describe_death(returncode, s.proc.ctl.crash(),
                               s.proc.ctl.current_step(), [st.name for st in self.sfc.steps],
                               self.budget_ms if watchdog_tsc else None, watchdog_tsc,
                               s.proc.pid)
        self.busy.end(i)  # (a dead process runs nothing more: its figure is final)
        self._forget(i, s)
        if not s.proc.dead:  # reaped on its crash record: it is still exiting
            self.pool.replace_doomed(s.proc)
        self.crashes.record(fault)
        phase, message = self.crashes.phase()
        log.warning("sfc %d: instance %d died: %s", self.sfc_id, i, message)
        if phase == FAILED:
            self.router.set_drop_all(self.sfc_id, True)
            for other, o in list(self.instances.items()):
                self._retire(other)

    def _retire(self, i: int, timeout: float = 10.0):
        s = self.instances[i]
        try:
            self._drain_and_stop(i, s, timeout)
        finally:  # counted until the router has let go: count() 0 means a packet sent now
            self.instances.pop(i)  # asks for a new instance (CI once sent to a draining one)

    def _drain_and_stop(self, i: int, s: _Instance, timeout: float):
        self.router.drain_instance(i)
        deadline = time.monotonic() + timeout
        while not self.router.drained(i) and not s.proc.dead:
            if time.monotonic() > deadline:
                break  # stuck: stop it anyway; the router forgets what it still held
            time.sleep(0.0002)
        s.proc.on_death = None
        self.counts.retire(i)  # drained: final (before the process may serve another SFC)
        final = None  # (dead, crashed or killed: its control block's figure is final)
        if not s.proc.dead and not self.router.reaped(i):  # (reaped: it crashed)
            try:
                final = self.pool.stop_instance(s.proc)
            except PoolError as e:  # stuck in an NF: the process goes, the pool refills
                log.warning("sfc %d: stopping instance %d: %s; killing it", self.sfc_id, i, e)
                s.proc.proc.kill()
        self.busy.end(i, final)
        self._forget(i, s)
        self.stops += 1

    def _control(self):
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        while not self._stop.is_set():
            wait = self.check_s
            if self.crashes.not_before > time.monotonic():  # a back-off ends sooner
                wait = min(wait, self.crashes.not_before - time.monotonic())
            if poller.poll(max(wait, 0.001) * 1000):
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
            try:
                with self._lock:
                    self._check()
            except Exception:  # noqa: BLE001 - this thread must outlive any one mistake
                log.exception("sfc %d: instance manager", self.sfc_id)

    def _check(self):
        """One pass of the control thread (under the lock): crashes, warm periods, starts."""
        for i, s in list(self.instances.items()):
            if i in self.instances and (s.proc.dead or self.router.reaped(i)):
                self._bury(i, s)
        for i, s in list(self.instances.items()):
            activity = self.router.activity(i)
            now = time.monotonic()
            if activity != s.activity:
                s.activity, s.active_at = activity, now
            elif now - s.active_at > self.warm_s:
                self._retire(i)  # warm period over: scale in (to zero at last)
        if not self.crashes.may_start():
            return  # backing off (the request stays until then), or failed
        # crashed instances come back (as many as were asked for by scale())
        missing = max(0, min(self.restore, self.wanted - len(self.instances)))
        if self.router.take_instance_request(self.sfc_id) and not self.instances:
            missing = max(missing, 1)
        try:
            for _ in range(missing):
                i = self._add()
                self.restore = max(0, self.restore - 1)
                if len(self.instances) > 1:
                    with contextlib.suppress(ValueError):  # (reaped meanwhile)
                        self.router.rebalance(self.sfc_id, i)
            if missing:
                self.start_problem = ""
        except PoolExhausted as e:  # its packets wait (bounded), then are dropped
            self.start_problem = (f"no instance: {e}; its packets wait up to the node's "
                                  "hold_ms, then are dropped (no_instance)")
        except PoolError:  # e.g. its state filesystem is full: recorded, backing off
            self.start_problem = ""


class _Counts:
    """An SFC's NF counters and instance wake-ups summed over its instances, past and present,
    for metrics: a running instance's are read from its process's control block (the chainer
    zeroes them when the instance starts), a retired one's are added to the totals when it
    is done with packets. Its own small lock: reading never waits for a drain."""

    def __init__(self, nsteps: int):
        self.nsteps = nsteps
        self._live: dict[int, tuple[PoolProcess, int]] = {}   # index -> (process, wakes then)
        self._nf = [{"in": 0, "dropped": 0, "counters": {}} for _ in range(nsteps)]
        self._wakes = 0
        self._lock = threading.Lock()

    def add(self, i: int, proc: PoolProcess) -> None:
        with self._lock:
            self._live[i] = (proc, proc.ctl.stats()["wakeups"])

    def retire(self, i: int) -> None:
        with self._lock:
            got = self._live.pop(i, None)
            if got is not None:
                self._sum_into(self._nf, got)
                self._wakes += got[0].ctl.stats()["wakeups"] - got[1]

    def _sum_into(self, into: list, live: tuple[PoolProcess, int]) -> None:
        for total, c in zip(into, live[0].ctl.nf_counters(self.nsteps)):
            total["in"] += c["in"]
            total["dropped"] += c["dropped"]
            for name, value in c["counters"].items():
                total["counters"][name] = total["counters"].get(name, 0) + value

    def snapshot(self) -> tuple[list[dict], int]:
        """([per step {"in", "dropped", "counters": {name: n}}], wake-ups), all instances."""
        with self._lock:
            nf = [{"in": t["in"], "dropped": t["dropped"], "counters": dict(t["counters"])}
                  for t in self._nf]
            wakes = self._wakes
            for live in self._live.values():
                self._sum_into(nf, live)
                wakes += live[0].ctl.stats()["wakeups"] - live[1]
        return nf, wakes
