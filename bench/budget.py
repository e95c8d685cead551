"""budget: the router's cycles per packet, stage by stage (docs/dataplane.md "Router budget").

The `bench sfc` rig (bench/rig.py: net_pcap infinite_rx -> net_null, router on CPU 1, one
instance on CPU 0, 64-byte UDP over `--flows` flows), unpaced (the source never runs dry), for
the empty SFC and FW->MON->NAT. With the router's stage stamps on (Router.stamp_stages: a TSC
read at each boundary of its loop, router.h serpens_stage), the cycles of each stage divided
by the packets received, over 0.1 s windows of `--seconds`: of the windows that dropped
nothing, the one with the fewest cycles per packet is reported (a window the host paused the
router in measures the host; `clean_windows` says how many dropped nothing, `dropped` whether
the reported one did: then no window was clean). Figures
per SFC: `mpps` unpaced with the stamps off, `stamped_mpps` in the reported window (what the
stamps cost), `cycles_per_packet` per stage and `total` (the loop's cycles per packet, idle
included), `median_total` (the median window's), `busy` (total without idle). The instance's
side over the same windows: `instance_cycles` (its busy TSC cycles per packet, the fewest of
the windows) and `median_instance_cycles`; `link` the host's placement of the two CPUs
around the windows (bench/search.py; "moved" if it changed). An SFC goes as fast as its busier CPU
(`bound_cycles`, the larger of busy and instance_cycles), so `sfc_vs_null_bound` is bench
sfc's sfc_vs_null as the cycles predict it; with `--flows 256` every table sits in cache and
the instance's figure is the chain's compute alone.
"""
from __future__ import annotations

import time

from serpens.runtime_cy import _dataplane as dp
from serpens.common.argtypes import non_negative_float, positive_float, positive_int
from serpens.runtime_cy.sfc import NF, compile_sfc

from .common import cpu_link, cpu_stalls, machine
from .rig import Rig, flow_frames
from .sfc import build_images, fw_mon_nat


def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=2.0, help="measuring time per SFC")
    p.add_argument("--warmup", type=non_negative_float, default=0.5)
    p.add_argument("--flows", type=positive_int, default=10000)


WINDOW_S = 0.1  # the budget is read over windows this long: the least disturbed one counts


def _read(router, ctls) -> tuple:
    st = router.stats()
    # the instances' busy TSC cycles and packets (pool_ctl.h busy_cycles: their batches'
    # work, not their polling or waits)
    busy = sum(c.busy_cycles for c in ctls), sum(c.stats()["rx_pkts"] for c in ctls)
    return (router.stage_cycles(), st["rx"], st["dropped"] + st["tx_failed"],
            time.perf_counter(), busy)


def budget(rig: Rig, sfc, seconds: float, warmup: float) -> dict:
    """The SFC's stage budget: of `seconds` in WINDOW_S windows, the one with the fewest
    cycles per packet among those that dropped nothing (a window the host paused the router
    in is not the router's cost, and one its instance was kept off its CPU in sheds packets
    after the rig's stall_us, router.h "Containment": this machine is shared), and the median
    window's total."""
    rig.start([sfc])
    try:
        plain = rig.run_at(0, seconds, warmup)["mpps"]
        router = rig.router
        router.stamp_stages(True)
        router.pace(rig.src, 0)
        time.sleep(warmup)
        ctls = [s.proc.ctl for s in rig.managers[0].instances.values()]
        link_before, _ = cpu_link()  # (the probe runs on both CPUs: not during the windows)
        windows = []
        c0, rx0, drop0, t0, b0 = _read(router, ctls)
        for _ in range(max(1, round(seconds / WINDOW_S))):
            time.sleep(WINDOW_S)
            c1, rx1, drop1, t1, b1 = _read(router, ctls)
            packets = max(1, rx1 - rx0)
            per = {k: (c1[k] - c0[k]) / packets for k in c1}
            windows.append((drop1 - drop0 > 0, sum(per.values()), per,
                            packets / (t1 - t0) / 1e6,
                            (b1[0] - b0[0]) / max(1, b1[1] - b0[1])))
            c0, rx0, drop0, t0, b0 = c1, rx1, drop1, t1, b1
        link_after, _ = cpu_link()
        router.stamp_stages(False)
        router.pace(rig.src, 1)
    finally:
        rig.stop()
    instance = sorted(w[4] for w in windows)
    windows.sort(key=lambda w: w[:2])  # clean windows first, then the fewest cycles
    dropped, total, per, mpps, _ = windows[0]
    return {"mpps": round(plain, 3), "stamped_mpps": round(mpps, 3),
            "cycles_per_packet": {k: round(v, 1) for k, v in per.items()},
            "total": round(total, 1),
            "median_total": round(sorted(w[1] for w in windows)[len(windows) // 2], 1),
            # the router's cycles a packet, its idle polling left out: what bounds its rate
            "busy": round(total - per["idle"], 1),
            # the instance's, over the same windows: the fewest (the least disturbed) and
            # the median
            "instance_cycles": round(instance[0], 1),
            "median_instance_cycles": round(instance[len(instance) // 2], 1),
            "bound_cycles": round(max(total - per["idle"], instance[0]), 1),
            # the host's placement of the two CPUs around the windows (bench/search.py):
            # "moved" if it changed meanwhile
            "link": link_before if link_before == link_after else "moved",
            "windows": len(windows), "clean_windows": sum(not w[0] for w in windows),
            "dropped": dropped}


def run(args) -> dict:
    images = build_images(null=True)
    sfc, _ = fw_mon_nat(images)
    null_sfc = compile_sfc(NF(images["null"], name="null"))
    rig = Rig("budget", flow_frames(args.flows), warmup=args.warmup)
    try:
        stalls = cpu_stalls()
        out = {"null": budget(rig, null_sfc, args.seconds, args.warmup),
               "fw_mon_nat": budget(rig, sfc, args.seconds, args.warmup)}
    finally:
        rig.close()
        for image in images.values():
            image.close()
    # Each SFC goes as fast as its busier CPU (`bound_cycles`): bench sfc's sfc_vs_null as
    # the cycles predict it
    fmn, null = out["fw_mon_nat"], out["null"]
    return {"machine": dict(machine(), stalls=stalls),
            "sfc_vs_null_bound": round(null["bound_cycles"] / fmn["bound_cycles"], 3)
            if fmn["bound_cycles"] else None,
            "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds,
                       "warmup": args.warmup, "load": "unpaced",
                       "cores": "router cpu 1, instance cpu 0",
                       "ports": "net_pcap infinite_rx -> net_null"},
            **out}


def print_table(r: dict):
    print(f"Router cycles per packet by stage, unpaced, {r['params']['flows']} flows, 64 B, "
          f"on {r['machine']['cpu']}")
    sfcs = ("null", "fw_mon_nat")
    print(f"{'stage':>10}" + "".join(f"{s:>12}" for s in sfcs))
    for stage in dp.STAGES:  # the loop's order
        print(f"{stage:>10}" + "".join(f"{r[s]['cycles_per_packet'][stage]:>12}" for s in sfcs))
    print(f"{'total':>10}" + "".join(f"{r[s]['total']:>12}" for s in sfcs))
    print(f"{'median':>10}" + "".join(f"{r[s]['median_total']:>12}" for s in sfcs)
          + "   (total, median window)")
    print(f"{'Mpps':>10}" + "".join(f"{r[s]['mpps']:>12}" for s in sfcs) + "   (stamps off)")
    print(f"{'stamped':>10}" + "".join(f"{r[s]['stamped_mpps']:>12}" for s in sfcs)
          + "   (stamps on, the window shown)")
    print(f"{'clean':>10}" + "".join(f"{r[s]['clean_windows']:>9}/{r[s]['windows']:<2}"
                                     for s in sfcs) + "   (windows that dropped nothing)")
    print(f"{'busy':>10}" + "".join(f"{r[s]['busy']:>12}" for s in sfcs)
          + "   (the router's total, idle left out)")
    print(f"{'instance':>10}" + "".join(f"{r[s]['instance_cycles']:>12}" for s in sfcs)
          + "   (the instance's busy cycles a packet)")
    print(f"{'link':>10}" + "".join(f"{str(r[s]['link']):>12}" for s in sfcs)
          + "   (the CPUs' placement, bench/search.py)")
    print(f"sfc_vs_null as the cycles bound it (the busier CPU's cycles): "
          f"{r['sfc_vs_null_bound']}")
