"""efficiency: why FaaS for NFs (paper §II-B3, Fig. 1b): core-seconds for many SFCs with
staggered, heavy-tailed loads, Serpens' per-second scaling vs static and minute-level
allocation.

The trace (trace(): seeded, synthetic, with the paper's shape). Each SFC's rate per trace
second is a heavy-tailed (Pareto) burst process with its own phase: mostly quiet, now and
then a burst, so an SFC's load is under 40% of its peak for about 80% of the time (the JSON's
`trace.under_40pct` says how often, measured), and the SFCs' peaks are staggered. Rates are
scaled so that all SFCs together peak at --peak-kpps.

The replay. One node (bench/rig.py's dataplane): the router on CPU 1 takes the traffic from a
ring-backed port and classifies it by source prefix (10.<i>.0.0/16 -> SFC i) into one
FW->MON->NAT SFC per trace SFC, each with its own instance manager (the node's real one:
an instance starts when packets arrive and none runs, and is stopped after `warm` without
packets: scale to zero), instances on CPU 0. A pacer in this process (CPU 1, beside the
router) pushes each SFC's packets every 10 ms as the trace says. The trace is played
--speedup times faster than its own clock (default 4: 60 s of replay are 4 trace minutes),
and the scaling with it: an idle instance stops after 1 trace second (0.25 s).

Core-seconds (all in replay seconds, in cores of CPU 0):
- serpens: the CPU time the instances' pool processes used during the replay (schedstat:
  packet work, polling before sleeping, starts and stops); `serpens_metered` is the node's
  own usage metering (instance_manager busy cycles: wall time inside batches, so time an
  instance was preempted by other processes on its CPU counts too);
- static: every SFC holds the cores its own peak needs for the whole run;
- minute: every SFC holds, for each trace minute, the cores that minute's peak needs (the
  VM/container granularity of the paper);
- demand: the cores the packets need at the NF's full speed (`capacity_mpps`: one instance of
  the SFC on one core kept busy by the benchmark driver).
`utilisation` for each = demand / its core-seconds.

Limits: the router takes at most ROUTER_MAX_SFCS (16) SFCs (router.h, a fixed array every
router loop walks): --sfcs above it runs that many and says so (`sfcs_requested`, `sfcs`).
"""
from __future__ import annotations

import os
import random
import time

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp
from serpens.common.argtypes import positive_float, positive_int
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from .common import BenchError, machine, udp_frame
from .rig import INSTANCE_CPU, ROUTER_CPU, Rig, flow_frames, keep_off_router_cpu
from .state import NF_CONFIGS

TICK = 0.01          # the pacer's period, replay seconds
MINUTE = 60          # trace seconds per minute-level allocation window


def add_arguments(p):
    p.add_argument("--sfcs", type=int, default=100, help="SFCs in the trace (default 100)")
    p.add_argument("--seconds", type=positive_float, default=60.0, help="replay time (default 60)")
    p.add_argument("--speedup", type=float, default=4.0,
                   help="trace seconds per replay second (default 4)")
    p.add_argument("--peak-kpps", type=float, default=100.0,
                   help="the SFCs' summed rate at its peak, kpps (default 100)")
    p.add_argument("--flows", type=positive_int, default=64, help="flows per SFC")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--idle-us", type=int, default=200,
                   help="how long an instance polls an empty ring before it sleeps (default "
                        "200, the pool's: at a few kpps per SFC an instance then rarely sleeps)")


def trace(sfcs: int, steps: int, seed: int) -> list[list[float]]:
    """Per SFC, a relative rate (peak 1.0) per trace second: a quiet base with Pareto-sized
    bursts (alpha 1.2, heavy-tailed), each SFC's at its own times (staggered)."""
    rng = random.Random(seed)
    rates = []
    for _ in range(sfcs):
        base = rng.uniform(0.05, 0.15)
        r, burst, left = [], 0.0, 0
        for _ in range(steps):
            if left == 0 and rng.random() < 0.04:  # a burst begins
                burst, left = rng.paretovariate(1.2), rng.randint(3, 30)
            level = base + (burst if left else 0.0)
            left = max(0, left - 1)
            r.append(level * rng.uniform(0.8, 1.2))
        peak = max(r)
        rates.append([x / peak for x in r])
    return rates


def trace_shape(rates: list[list[float]]) -> dict:
    """How often loads are under 40% of their peak: per SFC (mean over SFCs) and summed."""
    per_sfc = [sum(x < 0.4 for x in r) / len(r) for r in rates]
    total = [sum(col) for col in zip(*rates)]
    peak = max(total)
    return {"under_40pct": round(sum(per_sfc) / len(per_sfc), 3),
            "summed_under_40pct": round(sum(x < 0.4 * peak for x in total) / len(total), 3)}


def allocations(pps: list[list[float]], capacity_pps: float, step_s: float) -> dict:
    """Core-seconds of static and minute-level allocation and of the demand itself, for
    per-SFC rates `pps` (packets/s per trace step of `step_s` replay seconds)."""
    window = max(1, int(MINUTE))
    static = minute = demand = 0.0
    for r in pps:
        static += max(r) * len(r) * step_s
        for w in range(0, len(r), window):
            part = r[w:w + window]
            minute += max(part) * len(part) * step_s
        demand += sum(r) * step_s
    return {k: v / capacity_pps for k, v in
            (("static", static), ("minute", minute), ("demand", demand))}


def sfc_frames(i: int, flows: int) -> list[bytes]:
    return [udp_frame(f"10.{i}.{f // 256}.{f % 256 + 1}", "198.51.100.7", 1024 + f, 53)
            for f in range(flows)]


def pool_cpu_ns(pool) -> int:
    total = 0
    for p in pool.processes():
        try:
            with open(f"/proc/{p.pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def capacity(rig: Rig, sfc, flows: list[bytes], seconds: float = 1.0) -> float:
    """Packets per second one instance of `sfc` carries on one core (the driver keeps its
    ring full from the router's CPU)."""
    pool = rig.pool
    proc = pool.processes()[0]
    rx, tx = dp.Ring("beff_rx", 1024), dp.Ring("beff_tx", 1024)
    os.sched_setaffinity(0, {ROUTER_CPU})
    try:
        pool.start_instance(sfc, rx, tx, process=proc)
        try:
            r = dp.drive(rx, tx, rig.dataplane.mempool, flows, seconds, proc.ctl, proc.efd)
        finally:
            pool.stop_instance(proc)
    finally:
        os.sched_setaffinity(0, {INSTANCE_CPU})
        rx.free()
        tx.free()
    return r["mpps"] * 1e6


def replay(rig: Rig, router, port, inject, frames: list[list[bytes]], pps: list[list[float]],
           step_s: float) -> dict:
    """Push each SFC's packets as `pps` says (one trace step per `step_s`): sent and lost."""
    mp = rig.dataplane.mempool
    credit = [0.0] * len(frames)
    nxt = [0] * len(frames)
    sent = lost = 0
    steps = len(pps[0])
    t0 = time.perf_counter()
    last = t0
    while True:
        now = time.perf_counter()
        k = int((now - t0) / step_s)
        if k >= steps:
            break
        dt, last = now - last, now
        for i, fr in enumerate(frames):
            credit[i] += pps[i][k] * dt
            n = int(credit[i])
            if not n:
                continue
            credit[i] -= n
            while n:
                m = min(n, 256)
                batch = [fr[(nxt[i] + j) % len(fr)] for j in range(m)]
                nxt[i] = (nxt[i] + m) % len(fr)
                ok = dp.push(inject, mp, batch)
                sent += ok
                lost += m - ok
                n -= m
        time.sleep(max(0.0, TICK - (time.perf_counter() - now)))
    return {"sent": sent, "lost_at_input": lost, "seconds": time.perf_counter() - t0}


def run(args) -> dict:
    limit = dp.ROUTER_MAX_SFCS
    n = min(args.sfcs, limit)
    if n < 1:
        raise BenchError("bench efficiency: --sfcs: at least 1")
    step_s = 1.0 / args.speedup
    steps = max(1, int(args.seconds * args.speedup))
    rel = trace(n, steps, args.seed)
    summed_peak = max(sum(col) for col in zip(*rel))
    pps = [[x * args.peak_kpps * 1e3 / summed_peak for x in r] for r in rel]
    frames = [sfc_frames(i + 1, args.flows) for i in range(n)]
    from .sfc import build_images
    images = build_images()
    rig = Rig("efficiency", flow_frames(16), pool_size=n, idle_us=args.idle_us)
    wire = port = None
    try:
        steps_nf = [NF(images[nf], config=NF_CONFIGS[nf](), name=nf) for nf in ("fw", "mon", "nat")]
        cap_sfc = compile_sfc(chain(*steps_nf))
        for _ in range(3):  # a run the machine starved of CPU throughout: again
            cap_pps = capacity(rig, cap_sfc, [f for fr in frames for f in fr])
            if cap_pps:
                break
        else:
            raise BenchError("bench efficiency: the SFC carried nothing on its own core")
        # (deep: the pacer shares a CPU and may push several ticks at once after a stall)
        wire = (dp.Ring(f"eff_in{os.getpid()}", 16384), dp.Ring(f"eff_out{os.getpid()}", 16))
        port = dp.port_from_rings(f"net_ring_eff{os.getpid()}", *wire, rig.dataplane.mempool)
        router = dp.Router(port)
        ids = [router.add_sfc(rig.sink) for _ in range(n)]
        router.set_rules([{"sfc": sid, "src": f"10.{i + 1}.0.0/16"} for i, sid in enumerate(ids)])
        router.launch(rig.dataplane.config.router_lcore)
        warm = step_s  # one trace second
        managers = []
        try:
            for i, sid in enumerate(ids):
                sfc = compile_sfc(chain(*[NF(images[nf], config=NF_CONFIGS[nf](),
                                             name=f"{nf}-{i}") for nf in ("fw", "mon", "nat")]))
                managers.append(InstanceManager(rig.pool, router, sfc, sfc_id=sid,
                                                warm_s=warm).start())
            keep_off_router_cpu()
            os.sched_setaffinity(0, {ROUTER_CPU})  # the pacer beside the router
            cpu0 = pool_cpu_ns(rig.pool)
            busy0 = sum(m.busy.cycles() for m in managers)
            starts0 = sum(m.starts for m in managers)
            st0 = router.stats()
            played = replay(rig, router, port, wire[0], frames, pps, step_s)
            time.sleep(0.05)  # what is in flight leaves
            cpu1 = pool_cpu_ns(rig.pool)
            busy1 = sum(m.busy.cycles() for m in managers)
            st1 = router.stats()
            starts = sum(m.starts for m in managers) - starts0
        finally:
            os.sched_setaffinity(0, {INSTANCE_CPU})
            for m in managers:
                m.close()
            router.stop()
        out_pkts = st1["ports"][rig.sink]["tx"] - st0["ports"][rig.sink]["tx"]
        if not out_pkts:
            raise BenchError("bench efficiency: no packet came out of the node")
    finally:
        if port is not None:
            dp.port_close(port)
        if wire is not None:
            for ring in wire:
                ring.free()
        rig.close()
        for image in images.values():
            image.close()
    alloc = allocations(pps, cap_pps, step_s)
    # the demand of what was really carried (the pacer's ticks round rates a little)
    demand = out_pkts / cap_pps
    core_s = {"serpens": (cpu1 - cpu0) / 1e9, "static": alloc["static"],
              "minute": alloc["minute"], "demand": demand,
              "serpens_metered": (busy1 - busy0) / dp.tsc_hz()}
    return {"machine": machine(),
            "params": {"sfcs_requested": args.sfcs, "sfcs": n, "router_sfc_limit": limit,
                       "seconds": args.seconds, "speedup": args.speedup,
                       "trace_seconds": steps, "peak_kpps": args.peak_kpps,
                       "flows_per_sfc": args.flows, "seed": args.seed,
                       "sfc": "fw->mon->nat", "warm_s": warm, "minute_window_trace_s": MINUTE,
                       "idle_us": args.idle_us,
                       "cores": f"router and pacer cpu {ROUTER_CPU}, instances cpu "
                                f"{INSTANCE_CPU}; pool of {n} processes"},
            "trace": trace_shape(rel),
            "capacity_mpps": round(cap_pps / 1e6, 3),
            "packets": {"sent": played["sent"], "out": out_pkts,
                        "lost_at_input": played["lost_at_input"],
                        "dropped": st1["dropped"] - st0["dropped"]},
            "instance_starts": starts,
            "core_seconds": {k: round(v, 3) for k, v in core_s.items()},
            "utilisation": {k: round(demand / core_s[k], 3) if core_s[k] else None
                            for k in ("serpens", "static", "minute", "serpens_metered")}}


def print_table(r: dict):
    p = r["params"]
    print(f"efficiency: {p['sfcs']} SFCs ({p['sfcs_requested']} asked, router limit "
          f"{p['router_sfc_limit']}), {p['seconds']} s replay of {p['trace_seconds']} trace s, "
          f"peak {p['peak_kpps']} kpps, on {r['machine']['cpu']}")
    print(f"trace: SFC load under 40% of its peak {r['trace']['under_40pct']:.0%} of the time")
    print(f"{'allocation':<18}{'core-s':>10}{'utilisation':>13}")
    for k in ("serpens", "serpens_metered", "minute", "static"):
        print(f"{k:<18}{r['core_seconds'][k]:>10.3f}{r['utilisation'][k]:>13.3f}")
    print(f"demand {r['core_seconds']['demand']:.3f} core-s at {r['capacity_mpps']} Mpps per "
          f"core; {r['instance_starts']} instance starts; packets {r['packets']}")
