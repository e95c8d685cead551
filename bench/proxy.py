"""The global proxy of `bench chain`: a separate polling process between NFs (Fission-style).

A FaaS platform such as Fission sends every function call through its router, a service of
its own: a chain of n NFs passes it n-1 times besides the node's own data plane. Here that
service is one process (bench/native/proxy.h, bench/proxy_main.py), a DPDK secondary that
polls; the node's router hands it the output of every NF but the last on a ring pair, as it
would to an instance, and sends what comes back on to the next NF's instance. It has a CPU of
its own in the sense the rig allows: not the NFs' CPU (which a separate service would not
take from them), but the router's, shared with it as the machine has only two (docs/baselines.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from serpens.agent.sched import set_time_slice
from serpens.runtime_cy import _dataplane as dp

PROXY_LCORE = 100  # an EAL lcore id no pool process takes (it never touches a mempool)


class ProxyService:
    def __init__(self, dataplane, router, sfc_ids, cpu: int, ring_size: int = 1024,
                 slice_us: int = 100):
        """Serve router SFCs `sfc_ids` (one per hop) from a new process pinned to `cpu`."""
        self.router = router
        self.hops = []  # (slot, rx, tx)
        self.forwarded = None  # packets passed on per hop, reported by the process at its end
        self._report = None
        ctl_fd = os.memfd_create("serpens-bench-proxy", os.MFD_CLOEXEC)
        os.ftruncate(ctl_fd, dp.CTL_SIZE)
        self.ctl = dp.PoolCtl(ctl_fd)  # the router reads it as an instance's (never asleep)
        self.efd = os.eventfd(0, os.EFD_CLOEXEC)  # never written: the proxy never sleeps
        tag = f"{os.getpid() % 100000}{id(self) % 1000}"
        try:
            for sid in sfc_ids:
                slot = router.reserve_index()
                rx = dp.Ring(f"gp{tag}_{slot}_rx", ring_size)
                tx = dp.Ring(f"gp{tag}_{slot}_tx", ring_size)
                router.set_instance(slot, rx, tx, self.ctl, self.efd, sid)
                self.hops.append((slot, rx, tx))
            rings = ",".join(f"{rx.name}:{tx.name}" for _, rx, tx in self.hops)
            self._report, report_w = os.pipe2(os.O_CLOEXEC)
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "serpens.bench.proxy_main", "--ctl-fd", str(ctl_fd),
                     "--report-fd", str(report_w), "--rings", rings, "--"]
                    + dataplane.config.secondary_eal_args(PROXY_LCORE),
                    pass_fds=(ctl_fd, report_w), close_fds=True)
            finally:
                os.close(report_w)
            os.sched_setaffinity(self.proc.pid, {cpu})
            set_time_slice(self.proc.pid, slice_us)  # it shares the CPU with the router
            deadline = time.monotonic() + 20
            while self.ctl.state != dp.POOL_RUNNING:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the proxy process did not start "
                                       f"(exit status {self.proc.poll()})")
                time.sleep(0.005)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(ctl_fd)

    def _read_report(self, hops: int) -> list[int] | None:
        """The per-hop counts the process wrote as it ended (None: it wrote none)."""
        data = b""
        while chunk := os.read(self._report, 4096):
            data += chunk
        try:
            counts = [int(x) for x in data.decode().split(",")]
        except ValueError:
            return None
        return counts if len(counts) == hops else None

    def close(self):
        proc = getattr(self, "proc", None)
        if proc is not None:
            self.ctl.bump_cmd_seq()  # stop: it hands back what it holds and exits
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.proc = None
            self.forwarded = self._read_report(len(self.hops))
        if self._report is not None:
            os.close(self._report)
            self._report = None
        for slot, rx, tx in self.hops:
            if self.router.clear_instance(slot):
                rx.free()
                tx.free()
        self.hops = []
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1
