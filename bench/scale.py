"""scale: scale-out of a stateful NF under traffic, on one server.

MON (per-flow counters in a per-flow state table) gets 1 Mpps over 1,000 flows (64-byte UDP,
paced source: bench/rig.py) in one instance; after `--before` seconds the instance manager is
asked for two instances, and the router moves half of the flows to the new one behind a
barrier (router.h), with no state migration: the state is in shared memory. Every packet
sent is logged by the router (arrival, departure, flow, receive order). Figures:
- before_p99_us: p99 latency over the steady state before the request;
- during_p99_us: p99 over the packets arriving in the 100 ms around the request
  (50 ms before to 50 ms after);
- after_p99_us: p99 over the rest of the run;
- lost_packets: arrivals not transmitted (source overflow, drops; MON drops nothing);
- reordered_flows: flows whose packets left in a different order than they arrived;
- scale_out_us: from the request until the new instance handed its first burst on.
The first instance has CPU 0; the new one gets CPU 1, which it shares with the router (on
this 2-CPU machine no core is free): the router yields its CPU whenever it has nothing to do,
and pool processes run with a 100 us time slice (agent/sched.py), so neither holds the core
for a default multi-millisecond slice while the other has packets.
"""
from __future__ import annotations

import struct
import time

from serpens import nfs
from serpens.runtime_cy import _dataplane as dp
from serpens.common.argtypes import positive_int
from serpens.runtime_cy.builder import AreaAllocator, build_nf
from serpens.runtime_cy.sfc import NF, compile_sfc

from .common import cpu_stalls, machine, percentiles
from .rig import ROUTER_CPU, Rig, flow_frames
from .state import NF_CONFIGS


def add_arguments(p):
    p.add_argument("--rate", type=float, default=1.0, help="offered load, Mpps")
    p.add_argument("--flows", type=positive_int, default=1000)
    p.add_argument("--before", type=float, default=1.0, help="seconds before the scale-out")
    p.add_argument("--after", type=float, default=1.0, help="seconds after it")
    p.add_argument("--idle-us", type=int, default=20,
                   help="how long an instance polls an empty ring before sleeping")


def analyse(recs: bytes, request_tsc: int, hz: float) -> dict:
    window = int(0.05 * hz)
    before, during, after = [], [], []
    last_seq, reordered = {}, set()
    for rx, tx, flow, seq in struct.iter_unpack(dp.LAT_REC_FORMAT, recs):
        lat = (tx - rx) * 1e6 / hz
        if rx < request_tsc - window:
            before.append(lat)
        elif rx <= request_tsc + window:
            during.append(lat)
        else:
            after.append(lat)
        if seq < last_seq.get(flow, 0):
            reordered.add(flow)
        last_seq[flow] = seq
    return {"before_p99_us": percentiles(before, 99)["p99"],
            "during_p99_us": percentiles(during, 99)["p99"],
            "after_p99_us": percentiles(after, 99)["p99"],
            "reordered_flows": len(reordered), "packets_logged": len(before) + len(during)
            + len(after)}


def run(args) -> dict:
    areas = AreaAllocator()
    image = build_nf(nfs.source("mon"), areas.allocate(), "mon")
    sfc = compile_sfc(NF(image, config=NF_CONFIGS["mon"](), name="mon-scale"))
    rig = Rig("scale", flow_frames(args.flows), pool_size=2, idle_us=args.idle_us)
    hz = dp.tsc_hz()
    try:
        stalls = cpu_stalls()
        rig.start([sfc], ring_size=1024)
        manager, router = rig.managers[0], rig.router
        pps = args.rate * 1e6
        router.pace(rig.src, pps, rig.depth_at(pps))
        time.sleep(0.3)  # warm: every flow pinned and its state created
        total = pps * (args.before + args.after + 1)
        router.log_start(int(total))
        st0 = router.stats()
        time.sleep(args.before)
        for proc in rig.pool.processes():
            proc.ctl.reset_timing()
            if not proc.running:  # the new instance gets the router's CPU (see above)
                rig.pool.pin(proc, ROUTER_CPU)
        request = dp.rdtsc()
        manager.scale(2)
        new_proc = manager.instances[max(manager.instances)].proc
        time.sleep(args.after)
        router.pace(rig.src, 1e-3)  # stop offering; let everything in flight leave
        st1 = drained_stats(router)
        recs = router.log_take()
        first_burst = new_proc.ctl.timing_cycles()[3]
        src, sink = st1["ports"][rig.src], st1["ports"][rig.sink]
        # since the router started, nothing in flight any more: arrived - sent - NF drops
        lost = src["rx"] + src["missed"] - sink["tx"] - st1["dropped"]
        result = analyse(recs, request, hz)
        result.update({
            "lost_packets": lost,
            "missed": src["missed"] - st0["ports"][rig.src]["missed"],
            "scale_out_us": round((first_burst - request) * 1e6 / hz, 1) if first_burst else None,
            "rebalanced_flows": st1["sfcs"][0]["rebalanced_flows"],
            "instances": {str(k): v["returned"] for k, v in st1["instances"].items()},
            "machine": dict(machine(), stalls=stalls),
            "params": {"rate_mpps": args.rate, "flows": args.flows, "nf": "mon",
                       "before_s": args.before, "after_s": args.after,
                       "idle_us": args.idle_us, "frame_bytes": 64,
                       "cores": "router cpu 1, first instance cpu 0, new instance cpu 1"}})
        return result
    finally:
        rig.close()
        image.close()


def drained_stats(router, timeout: float = 2.0) -> dict:
    """Router statistics once every packet given to an instance came back and left."""
    deadline = time.monotonic() + timeout
    while True:
        st = router.stats()
        busy = st["pending"] or st["held"] or any(
            i["enqueued"] != i["returned"] for i in st["instances"].values())
        if not busy or time.monotonic() > deadline:
            time.sleep(0.001)  # the last TX flush (drain timer: 100 us)
            return router.stats()
        time.sleep(0.001)


def print_table(r: dict):
    print(f"scale-out of MON at {r['params']['rate_mpps']} Mpps over {r['params']['flows']} "
          f"flows, {r['machine']['cpu']}")
    print(f"p99 latency: before {r['before_p99_us']} us, during {r['during_p99_us']} us, "
          f"after {r['after_p99_us']} us")
    print(f"lost {r['lost_packets']} packets, {r['reordered_flows']} flows reordered, "
          f"{r['rebalanced_flows']} flows moved, scale-out took {r['scale_out_us']} us")
