"""A one-node rig for the data-plane benchmarks (sfc, chain, scale).

Ports: the source is DPDK's net_pcap with infinite_rx (it replays a capture of the benchmark
traffic endlessly, copying each frame into a fresh mbuf: the cost of a NIC's RX on the router
core), the sink is net_null (frees what is sent). The same kind of ports serve the testpmd
baseline. Cores: the router's lcore on CPU 1, instances on CPU 0, the Python control thread
mostly asleep; offered load is set by pacing the source in the router (router.h "Pacing"),
so latency counts from each packet's scheduled arrival and an overload shows as `missed`.
"""
from __future__ import annotations

import os
import struct
import tempfile
import time
from dataclasses import dataclass

import numpy

from serpens.agent.dataplane import Dataplane, DataplaneConfig
from serpens.agent.instance_manager import InstanceManager
from serpens.agent.process_pool import ProcessPool
from serpens.common.node_spec import NodeSpec
from serpens.runtime_cy import _dataplane as dp

from serpens.agent.process_pool import MAPPED, InstanceStart

from .common import udp_frame
from .forked import ForkedHop
from .proxy import ProxyService

ROUTER_CPU, INSTANCE_CPU = 1, 0
CONTROL_NICE = 19  # yield_to_instances()
# Arrivals the emulated input queue holds (docs/dataplane.md "The benchmarks' input queue"):
# deep enough that this VM's host pauses (1-10 ms, several a second) do not decide a
# loss-limited figure. A NIC's RX ring is 4096, but here the queue only models arrival: at
# 10 Mpps 4096 packets last 0.4 ms, and a paused router vCPU lost them whatever the rate
# (issue 18). A pause is a time, so the queue holds INPUT_HOLD_S of arrivals at the offered
# rate, and at least INPUT_DEPTH (65536 was the fixed depth: 4 ms at 15 Mpps, but 1.9 ms at
# the empty SFC's 34 Mpps).
INPUT_DEPTH = 65536
INPUT_HOLD_S = 0.005


def input_depth_at(pps: float, floor: int = INPUT_DEPTH, hold_s: float = INPUT_HOLD_S) -> int:
    """The emulated input queue's depth for an offered rate of `pps`."""
    return max(floor, int(pps * hold_s))


def stall_us_for(hold_s: float = INPUT_HOLD_S) -> float:
    """The rig router's stall_us (dp.Router): a paused instance holds the router's RX back,
    and its arrivals wait in the input queue; the router sheds only once the queue could not
    have held them (a node's default would shed in host pauses the queue absorbs)."""
    return max(NodeSpec.stall_us, hold_s * 1e6)


PROXY = "proxy"  # a hop of Rig.start() through the global proxy


@dataclass(frozen=True)
class Hop:
    """A hop of Rig.start() whose instances start as `how` says (a baseline's loader or state
    backend, bench/baselines.py); `forked`: served by children forked on demand from a pool
    process (bench/forked.py; `how` is then a Fork)."""
    sfc: object
    how: InstanceStart = MAPPED
    forked: bool = False


def flow_frames(flows: int, size: int = 64) -> list[bytes]:
    """One frame per flow: UDP from 10.x.y.z (allowed by the benchmark firewall) to port 53."""
    return [udp_frame(f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}", "198.51.100.7",
                      1024 + i % 50000, 53, size=size) for i in range(flows)]


def write_pcap(path: str, frames: list[bytes]):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for fr in frames:
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)) + fr)


def keep_off_router_cpu():
    """Every thread of this process but the router's (EAL's interrupt and IPC threads, the
    pool monitor, instance managers) to the instance CPU: the router's CPU is the router's."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("rte-worker"):
                    continue
            os.sched_setaffinity(int(tid), {INSTANCE_CPU})
        except OSError:
            pass  # the thread ended meanwhile


def yield_to_instances():
    """This thread's work (a bench's control: commands, logs, figures) yields to the
    instances on its CPU: at an equal priority the kernel takes a busy instance off that CPU
    for a scheduling slice of several ms, and its router sheds (stall_us) what it would have
    carried. Linux's nice is per thread: the router's and the pool processes' stay as they
    are (threads and processes started later inherit it: call it after them)."""
    os.setpriority(os.PRIO_PROCESS, 0, CONTROL_NICE)


class Rig:
    def __init__(self, name: str, frames: list[bytes] | None, pool_size: int = 1,
                 idle_us: int = 200, mbufs: int = 32767, warmup: float = 0.3,
                 vdevs: tuple = (), sandbox: bool | str = True,
                 input_depth: int = INPUT_DEPTH, input_hold_s: float = INPUT_HOLD_S,
                 stall_us: float | None = None):
        """frames: what the net_pcap source replays (None: no source and sink, only `vdevs`,
        opened by the caller: a server whose router takes its traffic from an underlay).
        input_depth, input_hold_s: the paced source's emulated input queue holds input_hold_s
        of arrivals at the offered rate, and at least input_depth (depth_at).
        stall_us: the router's (dp.Router): how long an instance may hold its RX back
        (default: as long as the input queue holds arrivals, stall_us_for)."""
        self.stall_us = stall_us if stall_us is not None else stall_us_for(input_hold_s)
        self.warmup = warmup  # run_at's, unless it is given one
        self.input_depth = input_depth
        self.input_hold_s = input_hold_s
        # State tables are shared-memory files: on hugetlbfs (2 MiB pages: no TLB misses on
        # random flow lookups) when mounted, else tmpfs (on a disk, writeback would stall NFs).
        base = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.state = tempfile.TemporaryDirectory(prefix=f"serpens-bench-{name}-", dir=base)
        self.tmp = tempfile.TemporaryDirectory(prefix=f"serpens-bench-{name}-", dir="/dev/shm")
        if frames is not None:
            self.pcap = os.path.join(self.tmp.name, "traffic.pcap")
            write_pcap(self.pcap, frames)
            vdevs = (f"net_pcap_{name},rx_pcap={self.pcap},infinite_rx=1",
                     f"net_null_{name},no-rx=1") + tuple(vdevs)
        cpus = "0-1" if (os.cpu_count() or 1) > 1 else "0"
        self.dataplane = Dataplane(DataplaneConfig(
            file_prefix=f"serpens-bench-{name}-{os.getpid()}", mbufs=mbufs,
            state_dir=self.state.name, cpus=cpus,
            router_cpus=str(ROUTER_CPU % (os.cpu_count() or 1)), vdevs=vdevs)).start()
        self.pools = {(idle_us, sandbox): self._pool(pool_size, idle_us, sandbox)}
        self.pool = self.pools[idle_us, sandbox]
        os.sched_setaffinity(0, {INSTANCE_CPU})
        mp = self.dataplane.mempool
        self.src = self.sink = None
        if frames is not None:
            self.src = dp.port_open(f"net_pcap_{name}", mp)
            self.sink = dp.port_open(f"net_null_{name}", mp)
        self.router = self.managers = self.proxy = None
        self.sfc_ids = []
        self.wire = None

    def _pool(self, size: int, idle_us: int, sandbox: bool | str = True) -> ProcessPool:
        pool = ProcessPool(self.dataplane, size, idle_us=idle_us, sandbox=sandbox).start()
        for proc in pool.processes():
            pool.pin(proc, INSTANCE_CPU)
        return pool

    def use_idle_us(self, idle_us: int, sandbox: bool | str = True):
        """Instances started from now on poll an empty ring for `idle_us` before they sleep,
        in pool processes sandboxed as `sandbox` says (ProcessPool's; "network" lets a
        Redis baseline reach its store, False lets a fork baseline fork): a pool of the same
        size made with those settings, kept for later runs."""
        if (idle_us, sandbox) not in self.pools:
            self.pools[idle_us, sandbox] = self._pool(self.pool.size, idle_us, sandbox)
        self.pool = self.pools[idle_us, sandbox]

    def start(self, sfcs, warm_s: float = 600.0, instances: int = 1, ring_size: int = 1024,
              ports: tuple | None = None):
        """Route the source into `sfcs`, a chain of router SFCs when there are several (each
        hop passes the router): CompiledSFCs, `instances` of each started now, or PROXY for a
        hop through the global proxy process (bench/proxy.py) on the router's CPU, or Hops
        (a baseline's instances; forked hops take pool processes in hop order). `ports`:
        (source, sink) other than the rig's (a finite input: output())."""
        src, sink = ports or (self.src, self.sink)
        self.router = dp.Router(src, stall_us=self.stall_us)
        nxt = None
        ids = []
        for sfc in reversed(sfcs):
            nxt = self.router.add_sfc(sink) if nxt is None else self.router.add_sfc(
                next_sfc=nxt)
            ids.append(nxt)
        ids.reverse()
        self.sfc_ids = ids
        self.router.set_default_sfc(ids[0])
        self.router.pace(src, 1)  # held back until measured
        self.managers = []  # those started: stop() closes them
        self.router.launch(self.dataplane.config.router_lcore)
        try:
            proxied = [sid for sid, sfc in zip(ids, sfcs) if sfc is PROXY]
            if proxied:
                self.proxy = ProxyService(self.dataplane, self.router, proxied, ROUTER_CPU,
                                          ring_size=ring_size)
            zygotes = iter(self.pool.processes())
            for sid, sfc in zip(ids, sfcs):
                if sfc is PROXY:
                    continue
                hop = sfc if isinstance(sfc, Hop) else Hop(sfc)
                if hop.forked:
                    self.managers.append(ForkedHop(self.pool, next(zygotes), self.router,
                                                   hop.sfc, sid, hop.how,
                                                   ring_size=ring_size))
                    continue
                m = InstanceManager(self.pool, self.router, hop.sfc, sfc_id=sid,
                                    warm_s=warm_s, ring_size=ring_size, how=hop.how)
                m.start()
                self.managers.append(m)
                m.scale(instances)
                for s in m.instances.values():
                    self.pool.pin(s.proc, INSTANCE_CPU)
        except BaseException:
            self.stop()
            raise
        keep_off_router_cpu()
        return self

    def stop(self):
        if self.router is not None:
            for m in self.managers:
                m.close()
            if self.proxy is not None:
                self.proxy.close()
                self.proxy = None
            self.router.stop()
            self.router = self.managers = None

    def close(self):
        self.stop()
        for pool in self.pools.values():
            pool.close()
        if self.wire is not None:
            dp.port_close(self.wire_port)
            for ring in self.wire:
                ring.free()
        self.dataplane.close()
        self.tmp.cleanup()
        self.state.cleanup()

    # ---- measurements -----------------------------------------------------------------------

    def output(self, sfcs, frames: list[bytes], timeout: float = 20.0, gap_s: float = 0.0,
               **start_kw) -> list[bytes]:
        """The frames `sfcs` (as start() takes them) send out for the finite input `frames`,
        in order: what benchmarks compare between Serpens and a baseline. Afterwards
        `last_work` holds what each hop did: "steps" (_step_counts()), with PROXY hops
        "proxy_forwarded" (packets the global proxy passed on, per proxied hop), with forked
        hops "forks" (children forked, per hop). `gap_s`: a pause after each 256 frames put
        in (an input arriving in bursts)."""
        self.last_work = {}
        if self.wire is None:  # a ring-backed port: frames pushed in, frames sent read back
            self.wire = (dp.Ring(f"rig_in{os.getpid()}", 4096),
                         dp.Ring(f"rig_out{os.getpid()}", 4096))
            self.wire_port = dp.port_from_rings(f"net_ring_rig{os.getpid()}", *self.wire,
                                                self.dataplane.mempool)
        inject, sent = self.wire
        self.start(sfcs, ports=(self.wire_port, self.wire_port), **start_kw)
        out = []
        try:
            self.router.pace(self.wire_port, 0)
            deadline = time.monotonic() + timeout
            pushed = 0
            while True:
                if pushed < len(frames):
                    pushed += dp.push(inject, self.dataplane.mempool,
                                      frames[pushed:pushed + 256])
                    if gap_s:
                        time.sleep(gap_s)
                out += [data for _, data in dp.pull(sent)]
                st = self.router.stats()
                if (pushed == len(frames) and st["ports"][self.wire_port]["rx"] == pushed
                        and len(out) + st["dropped"] == pushed):
                    self.last_work = {"steps": self._step_counts()}
                    return out + [data for _, data in dp.pull(sent)]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(out)} of {len(frames)} frames came out "
                                       f"({st['dropped']} dropped) in {timeout} s")
                time.sleep(0.0005)
        finally:
            proxy = self.proxy
            forks = [m.forks for m in self.managers or () if isinstance(m, ForkedHop)]
            if forks:  # children forked per hop for this input
                self.last_work["forks"] = forks
            self.stop()
            if proxy is not None:
                self.last_work["proxy_forwarded"] = proxy.forwarded

    def _step_counts(self) -> list[dict]:
        """Per NF step of the running hops, in chain order: what it took in and dropped and
        its named counters (each instance's own, pool_ctl.h): the work each hop did."""
        steps = []
        for m in self.managers:
            if isinstance(m, ForkedHop):
                steps += m.step_counts()
                continue
            for s in m.instances.values():
                steps += s.proc.ctl.nf_counters(len(m.sfc.steps))
        return steps

    def hop_errors(self) -> list[str]:
        """Why hops of the running SFCs carry nothing: a fork that failed, a state store a
        baseline lost (its instances' state_error)."""
        errors = []
        for m in self.managers or ():
            if isinstance(m, ForkedHop):
                procs = [m.proc]
                if m.error:
                    errors.append(m.error)
            else:
                procs = [s.proc for s in m.instances.values()]
            errors += [p.ctl.state_error for p in procs if p.ctl.state_error]
        return errors

    def _counts(self):
        """The router's counters and when they were read. This thread shares its CPU with
        the instances: a read it was preempted in the middle of (the time is then off by a
        time slice or more) is read again."""
        for _ in range(100):
            t0 = time.perf_counter()
            st = self.router.stats()
            t1 = time.perf_counter()
            if t1 - t0 < 200e-6:
                break
        return (st["ports"][self.src]["rx"], st["ports"][self.src]["missed"],
                st["ports"][self.sink]["tx"], st["dropped"], (t0 + t1) / 2)

    def depth_at(self, pps: float) -> int:
        """The emulated input queue's depth for an offered rate of `pps`."""
        return input_depth_at(pps, self.input_depth, self.input_hold_s)

    def run_at(self, pps: float, seconds: float, warmup: float | None = None,
               log: int = 0) -> dict:
        """Offer `pps` (0: as fast as the router takes packets) for warmup + seconds; rates
        and loss over the measured part, latency (us) if `log` records were kept."""
        self.router.pace(self.src, pps, self.depth_at(pps))
        time.sleep(self.warmup if warmup is None else warmup)
        if log:
            self.router.log_start(log)
        rx0, miss0, tx0, drop0, t0 = self._counts()
        time.sleep(seconds)
        rx1, miss1, tx1, drop1, t1 = self._counts()
        recs = self.router.log_take() if log else b""
        self.router.pace(self.src, 1)  # idle between runs
        dt = t1 - t0
        arrived = (rx1 - rx0) + (miss1 - miss0)
        out = {"offered_mpps": arrived / dt / 1e6, "mpps": (tx1 - tx0) / dt / 1e6,
               "loss": (miss1 - miss0) / arrived if arrived else 0.0,
               # what did not come out: lost at the input or dropped in the node
               "lost": (miss1 - miss0 + drop1 - drop0) / arrived if arrived else 0.0,
               "nf_dropped": drop1 - drop0}
        if log:
            out["latency_us"] = latency_us(recs, (0.5, 50, 99, 99.9))
        return out


# the router's latency records (LAT_REC_FORMAT) as an array: a latency run keeps millions,
# which a Python loop and sort took ~0.5 s a run to read (a third of `bench state`'s time)
LAT_RECORD = numpy.dtype([("rx", "<u8"), ("tx", "<u8"), ("flow", "<u4"), ("seq", "<u4")])
assert LAT_RECORD.itemsize == struct.calcsize(dp.LAT_REC_FORMAT)


def latency_us(recs: bytes, points=(50, 99)) -> dict:
    """Percentiles (common.percentiles': the sample at index int(n * p / 100)) and mean, us."""
    rec = numpy.frombuffer(recs, dtype=LAT_RECORD)
    if not len(rec):
        return {**{f"p{p}".replace(".", "_"): None for p in points}, "mean": None}
    # (as unsigned TSC differences, then signed: a frame stamped upstream may be "later")
    lat = (rec["tx"] - rec["rx"]).view("<i8") / (dp.tsc_hz() / 1e6)
    at = {p: min(len(lat) - 1, int(len(lat) * p / 100)) for p in points}
    part = numpy.partition(lat, sorted(set(at.values())))
    out = {f"p{p}".replace(".", "_"): round(float(part[i]), 2) for p, i in at.items()}
    out["mean"] = round(float(lat.mean()), 2)
    return out
