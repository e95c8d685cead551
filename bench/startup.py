"""startup: instance start time and memory, Serpens mapping vs dlopen, fork and spawn.

Each start is timed from the start request (TSC before the agent sends the command) until the
new instance has handed its first burst of 32 packets to its TX ring (TSC stamped by the
runtime in the shared control block). All four methods use the same pool processes, rings,
wake-up and NF; they differ only in how the NF gets into the process (paper §III-A, Fig. 3):

- map:    Serpens. The NF is a sealed, pre-relocated memfd; start = 3 mmaps + init.
- dlopen: SOCK-style. A pre-initialised runtime dlopen()s the NF's .so on start.
- fork:   SAND-style. A zygote with the NF already loaded forks; the child runs it.
- spawn:  cold start. A fresh runtime process is spawned, attaches to DPDK and runs it.
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
