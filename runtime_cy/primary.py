"""A DPDK primary (the agent's, the gateway's): EAL init, the mbuf pool, and clean-up of what
DPDK leaves behind.

DESIGN §6: a primary leaves `/dev/hugepages/<prefix>map_*` and `/var/run/dpdk/<prefix>/`
behind when it exits (and always when it crashes). We remove ours on exit and, at start, any
left by a dead primary of the same prefix: DPDK's primary holds an fcntl write lock on
`<runtime dir>/config` while it lives, so a lock we can take means the owner is gone.
"""
from __future__ import annotations

import atexit
import fcntl
import glob
import logging
import os
import shutil
import time
import threading
from dataclasses import dataclass, field

from . import _dataplane as dp

log = logging.getLogger(__name__)
RUNTIME_ROOT = "/var/run/dpdk"
DEFAULT_BASE_VIRTADDR = 0x100000000000  # 16 TiB; NF region is at 32 TiB (nf_image.h)
# IOVA as VA, in every process of a prefix: a sandboxed pool process has no CAP_SYS_ADMIN, so
# /proc/self/pagemap gives it no physical addresses, and in PA mode it cannot map the
# hugepages the primary adds when its heap grows (DPDK's memory hotplug sync fails).
IOVA_MODE = "--iova-mode=va"
CLEANUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DataplaneConfig:
    file_prefix: str
    hugepage_dir: str = "/dev/hugepages"
    base_virtaddr: int = DEFAULT_BASE_VIRTADDR
    main_lcore: int = 0
    router_lcore: int = 1      # the EAL worker lcore the router (or gateway) runs on
    cpus: str = "0-1"          # CPUs the primary's threads may run on
    router_cpus: str = ""      # CPUs of the router's lcore ("": the same as cpus)
    vdevs: tuple = ()          # "net_null0", "net_pcap0,rx_pcap=...", ...
    state_dir: str = "/dev/shm/serpens/state"  # state tables (tmpfs, or hugetlbfs)
    mbufs: int = 16383
    mbuf_cache: int = 256
    extra_eal_args: tuple = field(default=())
    program: str = "serpens-agent"

    def eal_args(self):
        args = [self.program, "--proc-type=primary", f"--file-prefix={self.file_prefix}",
                f"--huge-dir={self.hugepage_dir}", f"--base-virtaddr={self.base_virtaddr:#x}",
                f"--lcores={self.main_lcore}@({self.cpus}),"
                f"{self.router_lcore}@({self.router_cpus or self.cpus})",
                "--no-telemetry", IOVA_MODE,
                "--log-level=lib.eal:error"]
        if not any(v.startswith(("0000:", "-a")) for v in self.vdevs):
            args.append("--no-pci")
        args += [f"--vdev={v}" for v in self.vdevs]
        return args + list(self.extra_eal_args)

    def router_cpu_set(self) -> set[int]:
        return cpu_set(self.router_cpus or self.cpus)

    def secondary_eal_args(self, lcore: int):
        return ["--proc-type=secondary", f"--file-prefix={self.file_prefix}",
                f"--huge-dir={self.hugepage_dir}", f"--lcores={lcore}@({self.cpus})",
                "--no-pci", "--no-telemetry", IOVA_MODE, "--log-level=lib.eal:error",
                "--log-level=lib.*:error",
                # ports are the primary's: a vdev a secondary cannot open (a net_pcap
                # source) is no error here
                "--log-level=bus.vdev:critical"]


def cpu_set(spec: str) -> set[int]:
    """CPUs of a list such as "0-3,6"."""
    cpus = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def remove_stale_files(prefix: str, hugepage_dir: str = "/dev/hugepages",
                       min_age: float = 0.0) -> bool:
    """Remove DPDK files of `prefix` if no live primary holds them and they are `min_age`
    seconds old; True if removed."""
    run_dir = os.path.join(RUNTIME_ROOT, prefix)
    config = os.path.join(run_dir, "config")
    try:  # a primary may be starting in it (EAL makes the directory, then locks its config)
        if min_age and time.time() - os.stat(run_dir).st_mtime < min_age:
            return False
    except FileNotFoundError:
        pass
    if os.path.exists(config):
        with open(config, "rb+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a primary is alive
    shutil.rmtree(run_dir, ignore_errors=True)
    for path in glob.glob(os.path.join(hugepage_dir, f"{prefix}map_*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return True


def remove_stale_prefixes(pattern: str = "serpens-*", hugepage_dir: str = "/dev/hugepages"):
    """Remove what dead primaries of any matching prefix left behind (not what a primary of
    another process is starting in: a minute old at least)."""
    for run_dir in glob.glob(os.path.join(RUNTIME_ROOT, pattern)):
        remove_stale_files(os.path.basename(run_dir), hugepage_dir, min_age=60)


class Dataplane:
    """One per process: the EAL primary and its mbuf pool. Use as a context manager, or call
    close(); close also runs at interpreter exit."""

    _started = False

    def __init__(self, config: DataplaneConfig):
        self.config = config
        self.mempool = None
        self._closed = False

    def start(self):
        if Dataplane._started:
            raise RuntimeError("the EAL can be initialised once per process")
        remove_stale_prefixes(hugepage_dir=self.config.hugepage_dir)
        remove_stale_files(self.config.file_prefix, self.config.hugepage_dir)
        dp.eal_init(self.config.eal_args())
        Dataplane._started = True
        atexit.register(self.close)
        dp.register_label_field()
        dp.set_state_dir(self.config.state_dir)
        self.mempool = dp.Mempool("serpens_mbufs",
                                  self.config.mbufs, self.config.mbuf_cache)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._closed:
            return
        self._closed = True
        # A secondary that died inside DPDK holding a shared lock (SIGKILL during its
        # attach) makes the cleanup wait forever: bounded, then we leave without it.
        cleanup = threading.Thread(target=dp.eal_cleanup, name="eal-cleanup", daemon=True)
        cleanup.start()
        cleanup.join(CLEANUP_TIMEOUT_S)
        if cleanup.is_alive():
            log.warning("DPDK cleanup of %s did not finish in %g s (a lock left by a dead "
                        "secondary?); leaving without it", self.config.file_prefix,
                        CLEANUP_TIMEOUT_S)
        remove_stale_files(self.config.file_prefix, self.config.hugepage_dir)
