"""startup: instance start time and memory, Serpens mapping vs dlopen, fork and spawn.

Each start is timed from the start request (TSC before the agent sends the command) until the
new instance has handed its first burst of 32 packets to its TX ring (TSC stamped by the
runtime in the shared control block). All four methods use the same pool processes, rings,
wake-up and NF; they differ only in how the NF gets into the process (paper §III-A, Fig. 3):

- map:    Serpens. The NF is a sealed, pre-relocated memfd; start = 3 mmaps + init.
- dlopen: SOCK-style. A pre-initialised runtime dlopen()s the NF's .so on start.
- fork:   SAND-style. A zygote with the NF already loaded forks; the child runs it.
- spawn:  cold start. A fresh runtime process is spawned, attaches to DPDK and runs it.

--sweep (Fig. 11a/b): for a log-spaced set of instance counts n up to --max, the CPU time
each method spends on n starts (request to first burst; every CPU the starts ran on: the pool
processes' own, from /proc/<pid>/schedstat, and that of processes they or we reaped: forked
children, retired spawned processes) and the memory n deployed instances hold:
- map:    n sealed images in shared memory (the pages the memfds hold);
- dlopen: n copies of the NF's .so in a tmpfs, as a SOCK-style node keeps them to dlopen;
- fork:   n zygote processes with the NF loaded (SAND keeps one per function), their private
          memory (USS from smaps_rollup: Private_Clean + Private_Dirty);
- spawn:  n runtime processes, each having run an instance, their private memory.
Fork and spawn memory need n live DPDK processes: counts above --process-max are left out of
those two series; spawn's CPU series stops at --spawn-max (each start costs ~0.1 s of CPU).
"""
from __future__ import annotations

import os
import tempfile
import time

from serpens.agent.process_pool import ProcessPool
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy import builder
from serpens.runtime_cy.sfc import NF, compile_sfc

from .baselines import Dlopen, Fork
from .common import bench_dataplane, machine, percentiles, udp_frame

NF_SOURCE = os.path.join(os.path.dirname(__file__), "nfs", "acl.c")


def add_arguments(p):
    p.add_argument("--starts", type=int, default=300, help="starts per method (default 300)")
    p.add_argument("--spawn-starts", type=int, default=None,
                   help="starts for the spawn baseline (default: --starts)")
    p.add_argument("--deploy-nfs", type=int, default=1000,
                   help="NFs deployed to measure memory per NF (default 1000)")
    p.add_argument("--sweep", action="store_true",
                   help="CPU time and memory against the instance count (Fig. 11a/b)")
    p.add_argument("--max", type=int, default=1000,
                   help="largest instance count of --sweep (default 1000: under a minute "
                        "on 2 vCPUs, the whole `bench startup --sweep` 45 s; most of it "
                        "spawn's 100 starts and the processes of the memory series)")
    p.add_argument("--spawn-max", type=int, default=100,
                   help="largest count of the spawn CPU series (default 100)")
    p.add_argument("--process-max", type=int, default=32,
                   help="largest count of the fork and spawn memory series: one live DPDK "
                        "process per instance (default 32)")


class _Bench:
    def __init__(self, pool, sfc, mempool):
        self.pool = pool
        self.sfc = sfc
        self.mempool = mempool
        self.rx = dp.Ring("bstart_rx", 1024)
        self.tx = dp.Ring("bstart_tx", 1024)
        self.frames = [udp_frame("10.0.0.1", "10.0.1.1", 1000 + i, 80) for i in range(32)]
        self.hz = dp.tsc_hz()

    def us(self, cycles):
        return cycles * 1e6 / self.hz

    def prime(self, proc):
        dp.free_all(self.tx)
        proc.ctl.reset_timing()
        if dp.push(self.rx, self.mempool, self.frames) != len(self.frames):
            raise RuntimeError("could not queue the first burst")

    def wait_burst(self, proc, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not proc.ctl.burst_done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no first burst from pool process {proc.pid}: "
                                   f"{proc.ctl.error}")
        while self.tx.count() < len(self.frames):  # the stamp precedes the last enqueue
            pass

    def record(self, proc, t0, out):
        wake, cmd, _ready, burst = proc.ctl.timing_cycles()
        out["total"].append(self.us(burst - t0))
        out["inproc"].append(self.us(burst - cmd))
        out["wake"].append(self.us(cmd - wake))

    def run_reused(self, proc, n, **start):
        out = {"total": [], "inproc": [], "wake": []}
        for _ in range(n):
            self.prime(proc)
            t0 = dp.rdtsc()
            self.pool.start_instance(self.sfc, self.rx, self.tx, process=proc,
                                     wait=False, **start)
            self.wait_burst(proc)
            self.record(proc, t0, out)
            self.pool.stop_instance(proc)
        return out

    def run_fork(self, proc, n, dl_path):
        out = {"total": [], "inproc": [], "wake": []}
        for i in range(n + 1):  # the first start pre-loads the zygote: not counted
            done = proc.ctl.stats()["forked_done"]
            self.prime(proc)
            t0 = dp.rdtsc()
            self.pool.start_instance(self.sfc, self.rx, self.tx, process=proc,
                                     how=Fork(dl_path), wait=False)
            self.wait_burst(proc)
            while proc.ctl.stats()["forked_done"] == done:  # one consumer per ring at a time
                time.sleep(0.0001)
            self.pool.wait_ack(proc, proc.ctl.cmd_seq)
            if i:
                self.record(proc, t0, out)
        return out

    def run_fork_one(self, proc, dl_path):
        """One fork start (the first on `proc` also loads the NF into the zygote)."""
        done = proc.ctl.stats()["forked_done"]
        self.prime(proc)
        self.pool.start_instance(self.sfc, self.rx, self.tx, process=proc,
                                 how=Fork(dl_path), wait=False)
        self.wait_burst(proc)
        while proc.ctl.stats()["forked_done"] == done:
            time.sleep(0.0001)
        self.pool.wait_ack(proc, proc.ctl.cmd_seq)

    def run_spawn(self, n):
        out = {"total": [], "inproc": [], "wake": []}
        for _ in range(n):
            dp.free_all(self.tx)
            dp.push(self.rx, self.mempool, self.frames)
            t0 = dp.rdtsc()
            (proc,) = self.pool.grow(1, wait=False)
            self.pool.start_instance(self.sfc, self.rx, self.tx, process=proc,
                                     wait=False)
            self.wait_burst(proc)
            self.record(proc, t0, out)
            self.pool.retire(proc)
        return out

    def close(self):
        self.rx.free()
        self.tx.free()


def _shmem_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def measure_deploy_kb(so: bytes, n: int) -> float:
    """Memory added per deployed NF: shared memory (memfd pages) over n prepared images."""
    before = _shmem_kb()
    images = [builder.prepare_image(so, area, f"acl{area}") for area in range(n)]
    after = _shmem_kb()
    for img in images:
        img.close()
    return round((after - before) / n, 2)


def instance_private_kb(pid: int) -> float:
    """Memory a running instance owns alone in the NF region: its copied-on-write data pages
    (anonymous). Text and relro pages are the memfd's, shared with every other instance."""
    lo, hi = builder.NF_REGION_BASE, builder.NF_REGION_BASE + builder.NF_AREA_SIZE * builder.NF_AREAS
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start = int(head.split("-")[0], 16)
                inside = lo <= start < hi
            elif inside and head == "Anonymous:":
                total += int(line.split()[1])
    return total


def sweep_counts(top: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `top` (and `top` itself)."""
    counts, base = [], 1
    while base <= top:
        counts += [c for c in (base, 2 * base, 5 * base) if c <= top]
        base *= 10
    return counts + ([top] if counts[-1] != top else [])


def _schedstat_ns(pid: int) -> int:
    """CPU time a live process has run, in ns (its own threads, not its children)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _reaped_children_ns(pid: int) -> int:
    """CPU time of the children process `pid` reaped (cutime + cstime, clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) * 10**9 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


class CpuMeter:
    """CPU spent by the pool's processes, live or retired since, and their children: the
    starts' cost, not this process's (it spins waiting for the first burst)."""

    def __init__(self, pool):
        self.pool = pool
        self.t0 = self._now()

    def _now(self) -> int:
        import resource
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # retired pool processes we reaped
        total = int((ru.ru_utime + ru.ru_stime) * 1e9)
        for p in self.pool.processes():
            total += _schedstat_ns(p.pid) + _reaped_children_ns(p.pid)
        return total

    def ms(self) -> float:
        return round((self._now() - self.t0) / 1e6, 3)


def uss_kb(pid: int) -> int:
    """Private memory of a process (Private_Clean + Private_Dirty, KB)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def sweep_cpu(pool, counts, start) -> list[dict]:
    """Cumulative CPU time of n starts for each n in `counts` (one pass of max(counts));
    start(k) makes k more starts."""
    series, done = [], 0
    meter = CpuMeter(pool)
    for n in counts:
        start(n - done)
        done = n
        series.append({"n": n, "cpu_ms": meter.ms()})
    return series


def sweep(args, so: bytes, so_path: str, sfc, pool, mempool) -> dict:
    counts = sweep_counts(args.max)
    out = {"counts": counts, "cpu_ms": {}, "memory_kb": {},
           "params": {"max": args.max, "spawn_max": args.spawn_max,
                      "process_max": args.process_max,
                      "cpu": "pool processes' schedstat + reaped children (forks, retired "
                             "spawns); cumulative over n starts, request to first burst",
                      "memory": "map: pages of n images' memfds; dlopen: of n .so copies in tmpfs; "
                                "fork: USS of n zygotes with the NF loaded; spawn: USS of n "
                                "runtime processes that ran an instance"}}
    b = _Bench(pool, sfc, mempool)
    try:
        map_proc, fork_proc = pool.processes()[:2]
        b.run_reused(map_proc, 20)  # warm caches
        out["cpu_ms"]["map"] = sweep_cpu(pool, counts, lambda k: b.run_reused(map_proc, k))
        out["cpu_ms"]["dlopen"] = sweep_cpu(
            pool, counts, lambda k: b.run_reused(map_proc, k, how=Dlopen(so_path)))
        # (run_fork(proc, k - 1) makes k starts; its first, here, also loaded the zygote)
        out["cpu_ms"]["fork"] = sweep_cpu(pool, counts,
                                          lambda k: b.run_fork(fork_proc, k - 1, so_path))
        spawn_counts = [n for n in counts if n <= args.spawn_max]
        out["cpu_ms"]["spawn"] = sweep_cpu(pool, spawn_counts, b.run_spawn)
        # memory held by n deployed instances
        mem = {"map": [], "dlopen": [], "fork": [], "spawn": []}
        for n in counts:
            mem["map"].append({"n": n, "kb": images_kb(so, n)})
            mem["dlopen"].append({"n": n, "kb": tmpfs_copies_kb(so, n)})
        for n in [c for c in counts if c <= args.process_max]:
            mem["fork"].append({"n": n, "kb": processes_kb(b, pool, n, Fork(so_path))})
            mem["spawn"].append({"n": n, "kb": processes_kb(b, pool, n, None)})
        out["memory_kb"] = mem
    finally:
        b.close()
    return out


def images_kb(so: bytes, n: int) -> int:
    """Memory n deployed Serpens NFs take: the pages their sealed memfds hold (st_blocks:
    exact, where /proc/meminfo's Shmem lags by per-CPU batches)."""
    images = [builder.prepare_image(so, area, f"acl{area}") for area in range(n)]
    try:
        return sum(os.fstat(img.fd).st_blocks for img in images) * 512 // 1024
    finally:
        for img in images:
            img.close()


def tmpfs_copies_kb(so: bytes, n: int) -> int:
    """Memory n copies of the .so take in a tmpfs (a SOCK-style node's deployed NFs)."""
    with tempfile.TemporaryDirectory(prefix="serpens-sweep-", dir="/dev/shm") as d:
        total = 0
        for i in range(n):
            path = os.path.join(d, f"nf{i}.so")
            with open(path, "wb") as f:
                f.write(so)
            total += os.stat(path).st_blocks
        return total * 512 // 1024


def processes_kb(b: "_Bench", pool, n: int, fork) -> int:
    """Private memory of n new pool processes, each having run the NF once: loaded as a
    zygote (`fork`: a Fork; its child has exited) or mapped (None: spawn's processes)."""
    procs = pool.grow(n)
    try:
        for p in procs:
            if fork is not None:
                b.run_fork_one(p, fork.path)
            else:
                b.prime(p)
                pool.start_instance(b.sfc, b.rx, b.tx, process=p)
                b.wait_burst(p)
                pool.stop_instance(p)
        return sum(uss_kb(p.pid) for p in procs)
    finally:
        for p in procs:
            pool.retire(p)


def run(args) -> dict:
    spawn_n = args.spawn_starts if args.spawn_starts is not None else args.starts
    with open(NF_SOURCE) as f:
        source = f.read()
    so = builder.compile_nf(source, name="acl")
    result = {"machine": machine(),
              "params": {"starts": args.starts, "spawn_starts": spawn_n, "burst": 32,
                         "nf": "bench/nfs/acl.c", "deploy_nfs": args.deploy_nfs}}
    dataplane = bench_dataplane("startup")
    image = builder.prepare_image(so, 1, "acl")
    rule = bytes(16)  # one allow-all rule
    sfc = compile_sfc(NF(image, config=rule))
    with tempfile.NamedTemporaryFile(suffix=".so") as so_file, \
            ProcessPool(dataplane, 2, sandbox=False) as pool:  # LOAD_FORK forks: unsandboxed baseline
        so_file.write(so)
        so_file.flush()
        b = _Bench(pool, sfc, dataplane.mempool)
        try:
            map_proc, fork_proc = pool.processes()[:2]
            b.run_reused(map_proc, 20)  # warm caches
            m = b.run_reused(map_proc, args.starts)
            d = b.run_reused(map_proc, args.starts, how=Dlopen(so_file.name))
            fk = b.run_fork(fork_proc, args.starts, so_file.name)
            sp = b.run_spawn(spawn_n)
            # Private memory of an instance that has processed traffic.
            b.prime(map_proc)
            pool.start_instance(sfc, b.rx, b.tx, process=map_proc)
            b.wait_burst(map_proc)
            result["instance_private_kb"] = instance_private_kb(map_proc.pid)
            pool.stop_instance(map_proc)
        finally:
            b.close()
        if args.sweep:
            result["sweep"] = sweep(args, so, so_file.name, sfc, pool, dataplane.mempool)
    image.close()
    result.update({
        "map_us": percentiles(m["total"], 50, 99),
        "map_inprocess_us": percentiles(m["inproc"], 50, 99),
        "wake_us": percentiles(m["wake"], 50, 99),
        "dlopen_us": percentiles(d["total"], 50, 99),
        "dlopen_inprocess_us": percentiles(d["inproc"], 50, 99),
        "fork_us": percentiles(fk["total"], 50, 99),
        "spawn_us": percentiles(sp["total"], 50, 99),
        "deploy_kb_per_nf": measure_deploy_kb(so, args.deploy_nfs),
    })
    dataplane.close()
    return result


def print_table(r: dict):
    print(f"Instance startup on {r['machine']['cpu']} ({r['machine']['cores']} cores), "
          f"{r['params']['starts']} starts each; request -> first burst out")
    print(f"{'method':<10}{'p50 us':>12}{'p99 us':>12}")
    for key, label in (("map_us", "serpens"), ("dlopen_us", "dlopen"), ("fork_us", "fork"),
                       ("spawn_us", "spawn")):
        print(f"{label:<10}{r[key]['p50']:>12.1f}{r[key]['p99']:>12.1f}")
    print(f"serpens in-process (map+init+burst): p50 {r['map_inprocess_us']['p50']} us, "
          f"wake-up p50 {r['wake_us']['p50']} us")
    print(f"memory per deployed NF: {r['deploy_kb_per_nf']} KB; "
          f"private memory of a running instance: {r['instance_private_kb']} KB")
