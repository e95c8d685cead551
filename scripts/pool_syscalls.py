"""Measure the system calls a pool process makes after it would enter the sandbox.

    .venv/bin/python scripts/pool_syscalls.py [--redis]

Boots a pool process without the sandbox, attaches `strace -f -c` to it (all its threads, DPDK's
included) and drives it through FW->MON->NAT: packets, idle sleep and wake-up, a merge
request, stop, a second start that attaches to the existing state tables, and exit. With
--redis, one more start with its state in a Redis server started for it. Prints strace's summary: the
seccomp allow-list in runtime_cy/src/sandbox.c must cover every call it names.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from serpens import nfs
from serpens.agent.dataplane import Dataplane, DataplaneConfig
from serpens.agent.process_pool import ProcessPool, merge_state
from serpens.bench.baselines import RedisServer, RedisState
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.builder import AreaAllocator, build_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.common import udp_frame  # noqa: E402
from bench.state import NF_CONFIGS  # noqa: E402
from tests.support.harness import PacketHarness  # noqa: E402 (test helper: a harness playing router)


def frames(n):
    return [udp_frame(f"10.0.{i // 256 % 256}.{i % 256}", "198.51.100.7", 1000 + i, 53)
            for i in range(n)]


def drive(pool, sfc, **kw):
    h = PacketHarness(pool, sfc)
    h.process = pool.start_instance(sfc, h.rx, h.tx, **kw)
    h.run(frames(512))
    time.sleep(0.05)  # past idle_us: merge, release, sleep on the eventfd
    h.run(frames(64))  # woken up
    merge_state([h.process])
    h.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", action="store_true")
    ap.add_argument("--full", action="store_true", help="every call, not a summary")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="serpens-syscalls-")
    cfg = DataplaneConfig(file_prefix=f"serpens-syscalls-{os.getpid()}",
                          state_dir=os.path.join(tmp, "state"))
    areas = AreaAllocator()
    images = [build_nf(nfs.source(n), areas.allocate(), n) for n in ("fw", "mon", "nat")]
    sfc = compile_sfc(chain(*[NF(img, config=NF_CONFIGS[img.name](), name=img.name)
                              for img in images]))
    out = os.path.join(tmp, "strace.txt")
    with Dataplane(cfg) as _dpl, ProcessPool(_dpl, 1, sandbox=False) as pool:
        proc = pool.processes()[0]
        strace = subprocess.Popen(["strace", "-f", "-o", out]
                                  + ([] if args.full else ["-c"])
                                  + ["-p", str(proc.pid)])
        time.sleep(1.0)  # strace attaches
        # The primary grows its hugepage heap: DPDK's rte_mp_handle thread maps the new pages.
        big = dp.Ring(f"sysc{os.getpid()}", 1 << 22)
        big.free()
        drive(pool, sfc)
        drive(pool, sfc)  # the tables exist now: attach instead of create
        if args.redis:
            with RedisServer() as redis:
                drive(pool, sfc, how=RedisState(dp.STATE_REDIS, redis.socket))
        pool.close()  # EXIT: the process returns to Python and exits
        strace.wait(10)
    with open(out) as f:
        print(f.read())


if __name__ == "__main__":
    main()
