"""The process pool: pre-launched runtime processes that become NF instances in microseconds.

Theory of operation (paper §III-A, Fig. 4; runtime_cy/src/pool_ctl.h). At agent start we spawn
(never fork after EAL init) N runtime processes; each reserves the NF region, attaches to DPDK
as a secondary with its own lcore id and sleeps on an eventfd. `start_instance` hands an idle
process its compiled SFC (image memfds over SCM_RIGHTS, ring names) and wakes it; it maps the
images and runs. `stop_instance` returns it to the pool. A monitor thread watches every
process's pidfd and keeps the pool at its size: a process that dies (or recorded a fatal
signal and is still exiting: `replace_doomed`) is replaced, new processes boot nice and in
the background, and a replacement that fails to boot is retried with back-off (logged), so a
crash loop can never leave the node without processes. Its `on_death(process)` (set by whoever
runs an instance in it: they own its rings and the packets it held mid-batch, see
runtime_cy/src/lost_batch.h) and then `on_crash(process, instance_id)` are told.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from serpens.runtime_cy import _dataplane as dp

from .dataplane import RUNTIME_ROOT, Dataplane
from .sched import set_time_slice

log = logging.getLogger(__name__)
SO_SNDBUFFORCE = 32
BOOT_NICE = 15  # linux/socket.h; not exported by Python's socket module


class PoolError(RuntimeError):
    """A command to a pool process failed; the message is the runtime's reason."""

    def __init__(self, message: str, errno_: int = 0):
        super().__init__(message)
        self.errno = errno_


class _ExitedBooting(PoolError):
    """A pool process exited before it attached."""


class PoolExhausted(PoolError):
    pass


@dataclass
class PoolProcess:
    index: int
    lcore: int
    proc: subprocess.Popen
    ctl: dp.PoolCtl
    sock: socket.socket
    efd: int
    pidfd: int
    instance_id: int = 0
    rings: tuple = ()
    nsteps: int = 0
    dead: bool = False
    doomed: bool = False      # it recorded a fatal signal and is exiting; replaced already
    spawned_at: float = 0.0
    on_death: object = None   # called from the monitor thread when it dies
    returncode: int | None = None  # once dead: -signal, or its exit status

    @property
    def pid(self):
        return self.proc.pid

    @property
    def running(self):
        return self.ctl.state == dp.POOL_RUNNING

    def wake(self):
        """Producer side of the sleep handshake, after enqueueing packets for it."""
        return dp.wake_if_sleeping(self.ctl, self.efd)


def owns_cpu(mine: set[int], others: list[set[int]], router: set[int]) -> bool:
    """Whether a process allowed on CPUs `mine` has one to itself, beside the router's CPUs
    and the CPU sets of the other running instances."""
    return len(mine) == 1 and not mine & router and not any(mine & o for o in others)


class InstanceStart:
    """How a start command runs an SFC in a pool process. The engine's way (this class): its
    prepared images are mapped (their memfds go with the command) and its state lives in the
    node's shared-memory tables. Benchmarks subclass it for their baselines
    (bench/baselines.py); the runtime picks the loader the command names, once per start
    (runtime_cy/src/loader.h)."""

    detached = False  # the instance runs in a child of the process, which stays free

    def command(self, sfc) -> tuple[list[int], dict]:
        """The descriptors sent with the start command, and its fields beyond the SFC's
        (dp.build_command)."""
        return [img.fd for img in sfc.images], {}


MAPPED = InstanceStart()


def merge_state(procs: list[PoolProcess], timeout: float = 2.0):
    """Have the instances `procs` run merge their state now: eventual replicas into the
    shared tables, release shares back to their pools (pool_ctl.h merge_req), so the tables
    hold everything counted before the call. A process that died meanwhile is skipped;
    TimeoutError if one does not answer within `timeout` (it is stuck in an NF)."""
    asked = [(p, p.ctl.request_merge()) for p in procs]
    for p, _ in asked:
        p.wake()
    deadline = time.monotonic() + timeout
    for p, req in asked:
        # merge_done reaches req (modulo 2**32: a later request may have been answered too)
        while (p.ctl.merge_done - req) & 0xFFFFFFFF >= 1 << 31 and not p.dead:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool process {p.pid} did not merge its state within "
                                   f"{timeout}s")
            time.sleep(0.0002)


def split_state(p: PoolProcess, timeout: float = 2.0, only: str = ""):
    """Have the instance `p` runs split a share of every release pool (or only of the one
    `only` names, "<namespace>/<table>") off into `<table>@out` (pool_ctl.h split_req; the
    NFs' split ops run in that sandboxed process, never in the agent). PoolError with the
    runtime's reason if it failed, TimeoutError if it does not answer within `timeout`."""
    req = p.ctl.request_split(only)
    p.wake()
    deadline = time.monotonic() + timeout
    while (p.ctl.split_done - req) & 0xFFFFFFFF >= 1 << 31:
        if p.dead:
            raise PoolError(f"pool process {p.pid} died before it split its release pools")
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool process {p.pid} did not split its release pools "
                               f"within {timeout}s")
        time.sleep(0.0002)
    rc, why = p.ctl.split_result()
    if rc:
        raise PoolError(f"splitting the release pools: {why or os.strerror(-rc)}", -rc)


class ProcessPool:
    def __init__(self, dataplane: Dataplane, size: int, *, first_lcore: int = 2,
                 idle_us: int = 200, slice_us: int = 100, boot_timeout: float = 20.0,
                 on_crash=None, sandbox: bool | str = True):
        if size < 1:
            raise ValueError("a pool has at least one process")
        self.dataplane = dataplane
        self.size = size
        self.idle_us = idle_us
        self.slice_us = slice_us  # time slice when sharing a core (agent/sched.py)
        self.boot_timeout = boot_timeout
        self.on_crash = on_crash
        # False: NFs run unconfined (benchmarks measuring its cost); "network": sandboxed, but
        # with a Unix socket client allowed (the Redis state baseline)
        self.sandbox = sandbox
        self._lcores = itertools.count(first_lcore)
        self._free_lcores: list[int] = []
        self._procs: dict[int, PoolProcess] = {}
        self._index = itertools.count()
        self._instance_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._closing = False
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._monitor = None
        self.crashes = 0
        self.boot_failures = 0   # in a row; a booted process resets it
        self._unreaped: queue.SimpleQueue = queue.SimpleQueue()  # dead, for the reaper
        self._reaper = threading.Thread(target=self._reap_forever, name="pool-reaper",
                                        daemon=True)
        self._refill_at = 0.0    # no spawning before (back-off after failed boots)
        self._failed_at = 0.0    # when a boot last failed

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self):
        booting = [self._spawn() for _ in range(self.size)]
        for p in booting:
            self._boot(p)
        self._monitor = threading.Thread(target=self._watch, name="pool-monitor", daemon=True)
        self._monitor.start()
        self._reaper.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self, timeout: float = 5.0):
        with self._lock:
            self._closing = True
            procs = list(self._procs.values())
        # A process killed inside DPDK's attach would leave the shared memory lock it holds
        # there taken for good (the primary's cleanup then waits forever): let those still
        # booting attach, at full priority, before they are told to exit.
        booting = [p for p in procs if not p.dead and p.ctl.state == dp.POOL_BOOTING]
        for p in booting:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, p.pid, 0)
        for p in booting:
            with contextlib.suppress(PoolError):
                self._wait_booted(p)
        for p in procs:
            if not p.dead:
                try:
                    self._command(p, dp.CMD_EXIT, timeout=timeout)
                except (PoolError, OSError):
                    pass
        for p in procs:
            try:
                p.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
            self._release(p)
        os.write(self._wakeup_w, b"x")
        if self._monitor:
            self._monitor.join(timeout)
        self._unreaped.put(None)
        self._procs.clear()

    def grow(self, n: int = 1, *, wait: bool = True) -> list[PoolProcess]:
        """Spawn n more processes (e.g. under load); with wait=False they may still be
        attaching, and a start sent to one runs as soon as it has attached."""
        with self._lock:
            self.size += n
        procs = [self._spawn() for _ in range(n)]
        if wait:
            for p in procs:
                self._wait_booted(p)
        os.write(self._wakeup_w, b"x")  # let the monitor watch them
        return procs

    def retire(self, p: PoolProcess, timeout: float = 5.0):
        """Stop process p for good (shrinking the pool)."""
        with self._lock:
            self._procs.pop(p.index, None)
            p.dead = True
            self.size -= 1
        try:
            self._command(p, dp.CMD_EXIT, timeout=timeout)
        except (PoolError, OSError):
            p.proc.kill()
        p.proc.wait(timeout)
        self._release(p)

    def processes(self):
        with self._lock:
            return list(self._procs.values())

    def idle_count(self):
        """Processes attached and free (not counting those still booting)."""
        return sum(1 for p in self.processes() if not p.dead and p.instance_id == 0
                   and p.ctl.state == dp.POOL_IDLE)

    # ---- instances ------------------------------------------------------------------------

    def start_instance(self, sfc, rx_ring: dp.Ring, tx_ring: dp.Ring, *,
                       instance_id: int | None = None, wait: bool = True, timeout: float = 5.0,
                       process: PoolProcess | None = None,
                       how: InstanceStart = MAPPED) -> PoolProcess:
        """Run compiled SFC `sfc` (runtime_cy.sfc.CompiledSFC) in an idle pool process (or in
        `process`, which must be idle), reading from rx_ring and writing to tx_ring."""
        with self._lock:
            # an attached process first; one still booting runs the start once attached
            p = process or min((q for q in self._procs.values()
                                if not q.dead and not q.doomed and q.instance_id == 0),
                               key=lambda q: q.ctl.state != dp.POOL_IDLE, default=None)
            if p is None:
                doomed = sum(q.doomed for q in self._procs.values())
                raise PoolExhausted(f"all {len(self._procs) - doomed} pool processes are busy"
                                    + (f" ({doomed} more replacing crashed ones)"
                                       if doomed else ""))
            if p.instance_id:
                raise PoolError(f"pool process {p.pid} already runs instance {p.instance_id}")
            p.instance_id = instance_id or next(self._instance_ids)
        try:
            os.setpriority(os.PRIO_PROCESS, p.pid, 0)  # booted nice (see _spawn)
        except ProcessLookupError:
            pass  # died meanwhile: the command below says so
        # a capture or trace armed for the process's previous instance does not carry over
        p.ctl.observe_off(p.ctl.observing)
        images = [img.layout for img in sfc.images]
        fds, fields = how.command(sfc)
        try:
            self._command(p, dp.CMD_START, fds=fds, wait=wait, timeout=timeout,
                          instance_id=p.instance_id, rx_ring=rx_ring.name,
                          tx_ring=tx_ring.name, rx_ring_addr=rx_ring.address,
                          tx_ring_addr=tx_ring.address,
                          images=images, steps=[s.as_tuple() for s in sfc.steps],
                          config=sfc.config, **fields)
        except PoolError as e:
            p.instance_id = 0
            e.process = p  # (the caller may want to know how it died)
            raise
        except Exception:
            p.instance_id = 0
            raise
        p.rings = (rx_ring.name, tx_ring.name)
        p.nsteps = len(sfc.steps)
        if how.detached:
            p.instance_id = 0  # the process stays available; its child runs the instance
        self.update_cpu_sharing()
        return p

    def stop_instance(self, p: PoolProcess, timeout: float = 5.0) -> int:
        """Stop p's instance; returns the TSC cycles it spent on batches (its CPU time, for
        usage metering), read before p is free to run another instance."""
        if p.dead:
            return p.ctl.busy_cycles
        self._command(p, dp.CMD_STOP, timeout=timeout)
        busy = p.ctl.busy_cycles
        p.instance_id = 0
        p.rings = ()
        p.on_death = None
        self.update_cpu_sharing()
        return busy

    def pin(self, p: PoolProcess, cpu: int):
        """Run process p on CPU `cpu` only (then update_cpu_sharing)."""
        os.sched_setaffinity(p.pid, {cpu})
        self.update_cpu_sharing()

    def update_cpu_sharing(self):
        """Tell each process running an instance whether it has its CPU to itself (pinned to
        one CPU that neither the router nor another running instance may use): only then does
        it spin while it waits for ring room; sharing, it yields (pool_ctl.h own_cpu)."""
        router = self.dataplane.config.router_cpu_set()
        with self._lock:
            procs = [p for p in self._procs.values() if not p.dead]
            cpus = {}
            for p in procs:
                try:
                    cpus[p.index] = os.sched_getaffinity(p.pid)
                except OSError:
                    cpus[p.index] = set()  # gone: the monitor replaces it
            for p in procs:
                others = [cpus[q.index] for q in procs if q is not p and q.instance_id]
                p.ctl.own_cpu = p.instance_id != 0 and owns_cpu(cpus[p.index], others, router)

    def replace_doomed(self, p: PoolProcess):
        """Process p recorded a fatal signal (its instance is gone) but the kernel may take
        300 ms to finish its exit: its replacement boots now, while p exits."""
        with self._lock:
            if self._closing or p.dead or p.doomed:
                return
            p.doomed = True
        os.write(self._wakeup_w, b"x")  # the monitor refills (it alone spawns replacements)

    def _refill(self):
        """Spawn what the pool lacks (not waiting for them to attach), unless failed boots
        made it wait."""
        with self._lock:
            if self._closing or time.monotonic() < self._refill_at:
                return
            live = sum(1 for q in self._procs.values() if not q.dead and not q.doomed)
            missing = self.size - live
        for _ in range(missing):
            self._spawn()

    def wait_ack(self, p: PoolProcess, seq: int, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        spins = 0
        while p.ctl.ack_seq != seq:
            if p.dead or p.ctl.crash() is not None:  # (never reap here: _reap_forever)
                raise PoolError(f"pool process {p.pid} died")
            if time.monotonic() > deadline:
                raise PoolError(f"pool process {p.pid} did not answer within {timeout}s")
            spins += 1
            if spins > 2000:
                time.sleep(0.0002)
        if p.ctl.last_error:
            raise PoolError(p.ctl.error or os.strerror(-p.ctl.last_error), -p.ctl.last_error)

    # ---- internals ------------------------------------------------------------------------

    def _command(self, p: PoolProcess, kind: int, *, fds=(), wait=True, timeout=5.0, **fields):
        seq = p.ctl.cmd_seq + 1
        msg = dp.build_command(kind=kind, seq=seq, **fields)
        try:
            socket.send_fds(p.sock, [msg], list(fds))
        except OSError as e:  # it died (and the monitor may not have seen it yet)
            raise PoolError(f"pool process {p.pid} is gone ({e.strerror})") from None
        p.ctl.bump_cmd_seq()
        os.eventfd_write(p.efd, 1)
        if wait:
            self.wait_ack(p, seq, timeout)
        return seq

    def _spawn(self) -> PoolProcess:
        lcore = self._free_lcores.pop() if self._free_lcores else next(self._lcores)
        ctl_fd = os.memfd_create("serpens-pool-ctl", os.MFD_CLOEXEC)
        os.ftruncate(ctl_fd, dp.CTL_SIZE)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A start command carries the NFs' configuration (up to CONFIG_MAX bytes) in one
        # message: make room beyond net.core.wmem_max (we are root; else this is refused).
        try:
            ours.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * dp.CONFIG_MAX)
        except OSError:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * dp.CONFIG_MAX)
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        cmd = [sys.executable, "-m", "serpens.runtime_cy.pool_main",
               "--ctl-fd", str(ctl_fd), "--sock-fd", str(theirs.fileno()), "--efd", str(efd),
               "--idle-us", str(self.idle_us),
               "--state-dir", self.dataplane.config.state_dir]
        cmd += {True: [], False: ["--no-sandbox"], "network": ["--sandbox-network"]}[self.sandbox]
        cmd += ["--"]
        cmd += self.dataplane.config.secondary_eal_args(lcore)
        proc = subprocess.Popen(cmd, pass_fds=(ctl_fd, theirs.fileno(), efd), close_fds=True)
        set_time_slice(proc.pid, self.slice_us)
        # Booting (an interpreter, DPDK's attach: ~100 ms of CPU) must not take the CPU from
        # running instances, which it would for every crash of a crash-looping NF: nice until
        # it is given an instance (start_instance).
        os.setpriority(os.PRIO_PROCESS, proc.pid, BOOT_NICE)
        theirs.close()
        ctl = dp.PoolCtl(ctl_fd)
        os.close(ctl_fd)
        p = PoolProcess(next(self._index), lcore, proc, ctl, ours, efd, os.pidfd_open(proc.pid),
                        spawned_at=time.monotonic())
        with self._lock:
            self._procs[p.index] = p
        return p

    def _boot(self, p: PoolProcess, tries: int = 3):
        """Wait until p has attached. One that exits while attaching is replaced, `tries` in
        all, as the monitor replaces those of later boots: DPDK's attach can fail once (CI
        saw a secondary's lock of the hugepage directory interrupted, EINTR) and the next
        attach work; where attaching cannot work, every try fails and start() says why."""
        for left in range(tries - 1, -1, -1):
            try:
                return self._wait_booted(p)
            except _ExitedBooting as e:
                if not left:
                    raise
                log.warning("%s; starting another", e)
                with self._lock:
                    del self._procs[p.index]
                p.dead = True
                self._release(p)
                time.sleep(0.1)
                p = self._spawn()

    def _wait_booted(self, p: PoolProcess):
        deadline = time.monotonic() + self.boot_timeout
        while p.ctl.state != dp.POOL_IDLE:
            if p.proc.poll() is not None:
                p.returncode = p.proc.returncode
                raise _ExitedBooting(f"pool process {p.pid} exited with "
                                     f"{p.proc.returncode} while booting")
            if time.monotonic() > deadline:
                p.proc.kill()
                raise PoolError(f"pool process {p.pid} did not attach within {self.boot_timeout}s")
            time.sleep(0.001)

    def _release(self, p: PoolProcess):
        for closer in (p.sock.close, lambda: os.close(p.efd), lambda: os.close(p.pidfd)):
            try:
                closer()
            except OSError:
                pass
        # A secondary that exited without rte_eal_cleanup (see pool_main.py) or died leaves
        # its multi-process socket behind; the primary's next sync request (a hot-plugged
        # port, for one) would fail on it.
        run_dir = os.path.join(RUNTIME_ROOT, self.dataplane.config.file_prefix)
        for path in glob.glob(os.path.join(run_dir, f"mp_socket_{p.pid}_*")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._free_lcores.append(p.lcore)

    def _watch(self):
        """Monitor thread: a readable pidfd means the process exited; the pool is refilled
        (after a back-off while boots fail)."""
        while True:
            with self._lock:
                if self._closing:
                    return
                watched = {p.pidfd: p for p in self._procs.values() if not p.dead}
            poller = select.poll()
            poller.register(self._wakeup_r, select.POLLIN)
            for fd in watched:
                poller.register(fd, select.POLLIN)
            later = self._refill_at - time.monotonic()  # a boot back-off ending sooner
            wait = min(1.0, later) if later > 0 else 1.0
            events = poller.poll(wait * 1000)
            for fd, _ in events:
                if fd == self._wakeup_r:
                    os.read(fd, 4096)
                elif fd in watched:
                    self._handle_death(watched[fd])
            self._refill()
            for p in watched.values():
                if (not p.dead and p.ctl.state != dp.POOL_BOOTING
                        and p.spawned_at > self._failed_at):
                    self.boot_failures = 0  # (one spawned since the failure attached)

    def _reap_forever(self):
        """Reaper thread: collect dead processes' exit status. Reaping a killed pool process
        was seen to keep waitpid() in the kernel for seconds here (release_task, invalidating
        its /proc dentries), so it never runs on the monitor, which must notice deaths."""
        while True:
            p = self._unreaped.get()
            if p is None:
                return
            p.returncode = p.proc.wait()

    def _handle_death(self, p: PoolProcess):
        returncode = p.proc.returncode  # (known only if someone reaped it already)
        self._unreaped.put(p)
        with self._lock:
            if self._closing or p.dead:
                return
            p.returncode = returncode  # before `dead`, which its owner may be polling
            p.dead = True
            self.crashes += 1
            del self._procs[p.index]
        if p.ctl.state == dp.POOL_BOOTING:  # it never attached: do not spin on that
            self.boot_failures += 1
            self._failed_at = time.monotonic()
            delay = min(0.1 * 2 ** (self.boot_failures - 1), 10.0)
            self._refill_at = time.monotonic() + delay
            log.warning("pool process %d exited with %s while attaching; another in %.1f s",
                        p.pid, returncode, delay)
        instance_id = p.instance_id
        if p.on_death is not None:  # first: its owner lets go of it while we respawn
            try:
                p.on_death(p)
            except Exception:  # noqa: BLE001 - the pool must refill whatever the owner does
                log.exception("on_death of pool process %d", p.pid)
        self._release(p)
        if self.on_crash:
            self.on_crash(p, instance_id)
