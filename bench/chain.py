"""chain: chains of 1, 2, 4 and 8 firewalls, Serpens function calls vs two proxy designs.

All NF instances share one core (CPU 0); the router has the other (bench/rig.py: net_pcap
infinite_rx source, net_null sink, 64-byte UDP packets over 10k flows). The same FW binary and
configuration run in every mode:
- serpens:      one instance runs the whole chain, NF to NF by function calls (paper Fig. 6);
- local_proxy:  each FW its own instance; between NFs the packet goes back through the node's
                router to the next instance (SAND-style local bus);
- global_proxy: as local_proxy, with an extra proxy process hop between NFs (an instance
                running an empty NF; Fission-style: function calls pass a router process).
Instances poll an empty ring for `--idle-us` (default 0) before sleeping on their eventfd (the
router wakes them), so processes sharing the core hand it over instead of spinning; 0 is the
best setting for the proxy modes here (20 and 200 us were slower), and every mode runs with it. Figures: `mpps` is the
unpaced throughput (the source never runs dry; the router back-pressures), `p50_us` the median
latency at half of that mode's own throughput.
"""
from __future__ import annotations

import uuid

from serpens import nfs
from serpens.runtime_cy.builder import AreaAllocator, build_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from .common import cpu_stalls, machine
from .rig import Rig, flow_frames
from .sfc import NULL_NF
from .state import NF_CONFIGS

MODES = ("serpens", "local_proxy", "global_proxy")


def add_arguments(p):
    p.add_argument("--seconds", type=float, default=1.0, help="measuring time per run")
    p.add_argument("--flows", type=int, default=10000)
    p.add_argument("--lengths", default="1,2,4,8", help="chain lengths (comma-separated)")
    p.add_argument("--idle-us", type=int, default=0,
                   help="how long an instance polls an empty ring before sleeping")


def hops(mode: str, n: int, fw_images, null_image) -> list:
    """The router SFCs of one run: a single SFC, or one per hop (chained by the router)."""
    tag = uuid.uuid4().hex[:6]  # fresh state per run
    fws = [NF(fw_images[k], config=NF_CONFIGS["fw"](), name=f"fw{k}-{tag}") for k in range(n)]
    if mode == "serpens":
        return [compile_sfc(chain(*fws) if n > 1 else fws[0])]
    out = []
    for k, fw in enumerate(fws):
        if k and mode == "global_proxy":
            out.append(compile_sfc(NF(null_image, name=f"proxy{k}-{tag}")))
        out.append(compile_sfc(fw))
    return out


def run(args) -> dict:
    lengths = [int(x) for x in args.lengths.split(",")]
    areas = AreaAllocator()
    fw_src = nfs.source("fw")
    fw_images = [build_nf(fw_src, areas.allocate(), f"fw{k}") for k in range(max(lengths))]
    with open(NULL_NF) as f:
        null_image = build_nf(f.read(), areas.allocate(), "null")
    rig = Rig("chain", flow_frames(args.flows), pool_size=2 * max(lengths) - 1,
              idle_us=args.idle_us)
    result = {"machine": dict(machine(), stalls=cpu_stalls()),
              "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds,
                         "idle_us": args.idle_us, "ring_size": 256,
                         "cores": "router cpu 1, every instance cpu 0",
                         "p50_at": "half of each mode's throughput"}}
    try:
        for n in lengths:
            row = {}
            for mode in MODES:
                rig.start(hops(mode, n, fw_images, null_image), ring_size=256)
                try:
                    mpps = max(rig.run_at(0, args.seconds)["mpps"] for _ in range(2))
                    load = mpps * 1e6 / 2
                    lat = rig.run_at(load, args.seconds, log=int(load * args.seconds * 1.5))
                finally:
                    rig.stop()
                row[mode] = {"mpps": round(mpps, 3), "p50_us": lat["latency_us"]["p50"],
                             "p99_us": lat["latency_us"]["p99"]}
            row["serpens_vs_local_proxy"] = round(row["serpens"]["mpps"] /
                                                  max(row["local_proxy"]["mpps"], 1e-9), 2)
            row["serpens_vs_global_proxy"] = round(row["serpens"]["mpps"] /
                                                   max(row["global_proxy"]["mpps"], 1e-9), 2)
            result[str(n)] = row
    finally:
        rig.close()
        for image in fw_images + [null_image]:
            image.close()
    return result


def print_table(r: dict):
    print(f"FW chains on one core, {r['machine']['cpu']}, {r['params']['flows']} flows, 64 B")
    print(f"{'NFs':>4}" + "".join(f"{m + ' Mpps':>19}{'p50 us':>8}" for m in MODES)
          + f"{'vs local':>10}{'vs global':>10}")
    for key in sorted((k for k in r if k.isdigit()), key=int):
        row = r[key]
        print(f"{key:>4}" + "".join(f"{row[m]['mpps']:>19.3f}{row[m]['p50_us']:>8}"
                                    for m in MODES)
              + f"{row['serpens_vs_local_proxy']:>9.2f}x{row['serpens_vs_global_proxy']:>9.2f}x")
