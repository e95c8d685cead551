"""chain: chains of 1, 2, 4 and 8 firewalls, Serpens function calls vs two proxy designs.

All NF instances share one core (CPU 0), as the paper puts all NFs of an SFC on one core; the
router has the other (bench/rig.py: net_pcap infinite_rx source, net_null sink, 64-byte UDP
packets over 10k flows). The same FW binary and configurations run in every mode
(hop k's FW also denies UDP port 100+k, so each hop does work of its own):
- serpens:      one instance runs the whole chain, NF to NF by function calls (paper Fig. 6);
- local_proxy:  each FW its own instance; between NFs the packet goes back through the node's
                router to the next instance (SAND-style local bus);
- global_proxy: as local_proxy, and between NFs the packets also pass a proxy service, a
                separate polling process on the router's CPU (Fission-style: function calls
                pass the platform's router; bench/proxy.py).
Each mode runs with its own best settings, chosen by measurement (docs/baselines.md) and stated
in `params.modes`: how long an instance polls an empty ring before it sleeps on its eventfd
(`idle_us`; while it polls it yields its shared core) and the instances' ring size. Before
the figures, each mode carries a fixed finite input (`--check-frames` frames, some of which
the FW drops): its output must equal Serpens' (count, bytes, digest), and so must the work
of each hop (the packets each FW took in and dropped, and for global_proxy the packets the
proxy passed on between hops), or the run fails. At 1 NF the three modes do the same work
(one instance, no hand-off): serpens_vs_* is given from 2 NFs on. A mode that carried nothing
while measured fails the run.
Figures: `mpps` is the unpaced throughput (the source never runs dry; the router
back-pressures), the median of `--runs` runs, all of them in `mpps_trials` ({values, median,
min, max, spread}, as bench sfc's searched figures), runs in one placement of the two CPUs
(bench/search.py: `mpps_link`, each placement's in `mpps_by_link`; serpens_vs_* compares
within one, `_link` names it); `p50_us` the median latency at half of that mode's own
throughput.
"""
from __future__ import annotations

import hashlib
import uuid

from serpens import nfs
from serpens.common.argtypes import non_negative_float, positive_float, positive_int
from serpens.runtime_cy.builder import AreaAllocator, build_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from serpens.nfs import fw as fw_nf

from .common import BenchError, cpu_stalls, machine, tcp_frame, udp_frame
from .rig import PROXY, Rig, flow_frames
from .search import same_link_ratio, search
from .state import FW_RULES

# Hop k's FW also denies UDP to port HOP_DPORT + k: n hops drop what n-1 pass, so a mode that
# skipped a hop sends out other packets (every hop alike would be FW twice = FW once).
HOP_DPORT = 100

MODES = ("serpens", "local_proxy", "global_proxy")
# Each mode's best settings on this machine (docs/baselines.md has the measurements).
SETTINGS = {
    "serpens": {"idle_us": 50, "ring_size": 256},
    "local_proxy": {"idle_us": 200, "ring_size": 1024},
    "global_proxy": {"idle_us": 200, "ring_size": 1024},
}


def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=1.0, help="measuring time per run")
    p.add_argument("--warmup", type=non_negative_float, default=0.3,
                   help="seconds at a run's rate before it is measured")
    p.add_argument("--flows", type=positive_int, default=10000)
    p.add_argument("--lengths", default="1,2,4,8", help="chain lengths (comma-separated)")
    p.add_argument("--modes", default=",".join(MODES), help="modes to run (comma-separated)")
    p.add_argument("--idle-us", type=int, default=None,
                   help="how long an instance polls an empty ring before sleeping, in every "
                        "mode (default: each mode's own best)")
    p.add_argument("--ring-size", type=int, default=None,
                   help="the instances' ring size in every mode (default: each mode's best)")
    p.add_argument("--check-frames", type=int, default=2000,
                   help="frames of the finite input every mode's output is compared on")
    p.add_argument("--runs", type=int, default=3,
                   help="unpaced runs per mode and length (the figure: their median)")


def hop_config(k: int) -> bytes:
    """Hop k's FW: the benchmark firewall (bench/state.py) that also denies UDP port 100+k."""
    rules = [{"action": "deny", "proto": "udp", "dport": HOP_DPORT + k}] + FW_RULES["rules"]
    return fw_nf.encode_config(dict(FW_RULES, rules=rules))


def hops(mode: str, n: int, fw_images, fw_config: bytes | None = None) -> list:
    """The router SFCs of one run: a single SFC, or one per hop (chained by the router; PROXY
    hops pass the global proxy). `fw_config`: every FW's, instead of hop_config(k)."""
    tag = uuid.uuid4().hex[:6]  # fresh state per run
    fws = [NF(fw_images[k], config=hop_config(k) if fw_config is None else fw_config,
              name=f"fw{k}-{tag}") for k in range(n)]
    if mode == "serpens":
        return [compile_sfc(chain(*fws) if n > 1 else fws[0])]
    out = []
    for k, fw in enumerate(fws):
        if k and mode == "global_proxy":
            out.append(PROXY)
        out.append(compile_sfc(fw))
    return out


def check_frames(count: int, hops_max: int = 8) -> list[bytes]:
    """A finite input the FW passes in part: UDP from 10/8 (allowed), from 192.0.2/24 and TCP
    to port 22 (denied), UDP to port 100+k for each hop k < hops_max (denied by hop k)."""
    frames = []
    for i in range(count):
        kind = i % 8
        if kind == 5:
            frames.append(udp_frame(f"10.8.{i // 256 % 256}.{i % 256}", "198.51.100.7",
                                    1024 + i % 50000, HOP_DPORT + i // 8 % hops_max,
                                    payload=i.to_bytes(4, "big")))
        elif kind == 6:
            frames.append(udp_frame(f"192.0.2.{i % 250 + 1}", "198.51.100.7", 1024 + i, 53,
                                    payload=i.to_bytes(4, "big")))
        elif kind == 7:
            frames.append(tcp_frame(f"10.9.{i // 256 % 256}.{i % 256}", "198.51.100.7",
                                    2000 + i % 30000, 22))
        else:
            frames.append(udp_frame(f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}",
                                    "198.51.100.7", 1024 + i % 50000, 53,
                                    payload=i.to_bytes(4, "big")))
    return frames


def summary(frames: list[bytes]) -> dict:
    """Count, bytes and a digest of an output, in order."""
    h = hashlib.sha256()
    for f in frames:
        h.update(len(f).to_bytes(4, "little") + f)
    return {"packets": len(frames), "bytes": sum(map(len, frames)), "digest": h.hexdigest()[:16]}


def check_equivalence(rig: Rig, n: int, fw_images, modes, frames, settings,
                      baseline_fw_config: bytes | None = None,
                      baseline_length: int | None = None) -> dict:
    """Every mode's output for `frames` through a chain of n FWs: {mode: summary with
    "hop_in" and "hop_dropped", per FW}. Raises if a baseline's output or any hop's work
    differs from Serpens' (its figures would compare different work). Tests make baselines
    differ: `baseline_fw_config` configures all their FWs, `baseline_length` runs them with
    that many hops (one that skips hops)."""
    outputs = {}
    for mode in modes:
        base = mode != "serpens"
        length = baseline_length if base and baseline_length else n
        rig.use_idle_us(settings[mode]["idle_us"])
        out = summary(rig.output(hops(mode, length, fw_images,
                                      baseline_fw_config if base else None), frames,
                                 ring_size=settings[mode]["ring_size"]))
        steps = rig.last_work.get("steps", [])
        out["hop_in"] = [s["in"] for s in steps]
        out["hop_dropped"] = [s["dropped"] for s in steps]
        if mode == "global_proxy":  # the proxy passed on what each next hop took in
            forwarded = rig.last_work.get("proxy_forwarded", [])
            if forwarded != out["hop_in"][1:]:
                raise BenchError(f"bench chain: the global proxy passed on {forwarded} "
                                   f"packets per hop, its next hops took in "
                                   f"{out['hop_in'][1:]}")
        outputs[mode] = out
    ref = outputs.get("serpens")
    for mode, out in outputs.items():
        if ref is None:
            continue
        sent, ref_sent = ({k: o[k] for k in ("packets", "bytes", "digest")} for o in (out, ref))
        if sent != ref_sent:
            raise BenchError(f"bench chain: {n} FWs in {mode} sent out {sent}, Serpens "
                               f"{ref_sent}: the modes do not do the same work")
        if out != ref:
            raise BenchError(f"bench chain: {n} FWs in {mode}: its FWs took in "
                               f"{out['hop_in']} and dropped {out['hop_dropped']}, Serpens' "
                               f"{ref['hop_in']} and {ref['hop_dropped']}: the modes do not "
                               f"do the same work")
    return outputs


def mode_settings(args) -> dict:
    settings = {m: dict(SETTINGS[m]) for m in MODES}
    for s in settings.values():
        if args.idle_us is not None:
            s["idle_us"] = args.idle_us
        if args.ring_size is not None:
            s["ring_size"] = args.ring_size
    return settings


def run(args) -> dict:
    lengths = [int(x) for x in args.lengths.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    settings = mode_settings(args)
    areas = AreaAllocator()
    fw_src = nfs.source("fw")
    fw_images = [build_nf(fw_src, areas.allocate(), f"fw{k}") for k in range(max(lengths))]
    rig = Rig("chain", flow_frames(args.flows), pool_size=max(lengths), warmup=args.warmup,
              idle_us=settings[modes[0]]["idle_us"])
    result = {"machine": dict(machine(), stalls=cpu_stalls()),
              "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds, "warmup": args.warmup,
                         "runs": args.runs, "input_depth": rig.input_depth,
                         "input_hold_s": rig.input_hold_s, "stall_us": rig.stall_us,
                         "modes": {m: settings[m] for m in modes},
                         # (kept from before per-mode settings: the first mode's, Serpens')
                         "idle_us": settings[modes[0]]["idle_us"],
                         "ring_size": settings[modes[0]]["ring_size"],
                         "cores": "router cpu 1, every instance cpu 0, global proxy cpu 1",
                         "check_frames": args.check_frames,
                         "hop_configs": f"hop k's FW also denies UDP port {HOP_DPORT}+k",
                         "length_1": "one NF: the three modes do the same work (one instance, "
                                     "no hand-off), so serpens_vs_* starts at 2 NFs",
                         "p50_at": "half of each mode's throughput"}}
    try:
        frames = check_frames(args.check_frames, max(lengths))
        for n in lengths:
            row = {}
            outputs = check_equivalence(rig, n, fw_images, modes, frames, settings)
            for mode in modes:
                rig.use_idle_us(settings[mode]["idle_us"])
                rig.start(hops(mode, n, fw_images), ring_size=settings[mode]["ring_size"])
                try:
                    # the median of unpaced runs in one CPU placement (bench/search.py)
                    runs = search(rig, args.seconds, searches=max(1, args.runs), unpaced=True,
                                  want=tuple(row.get("serpens", {}).get("mpps_by_link", ())))
                    trials, mpps = runs["trials"], runs["mpps"]
                    load = max(mpps * 1e6 / 2, 1e4)  # (a run the host stalled may carry ~0)
                    lat = rig.run_at(load, args.seconds, log=int(load * args.seconds * 1.5))
                finally:
                    rig.stop()
                if mpps <= 0:  # a figure of 0 compares nothing: the mode did not run
                    raise BenchError(f"bench chain: {n} FWs in {mode} carried no packets "
                                       f"while measured")
                row[mode] = {"mpps": round(mpps, 3), "mpps_trials": trials,
                             "mpps_link": runs["link"], "mpps_by_link": runs["by_link"],
                             "p50_us": lat["latency_us"]["p50"],
                             "p99_us": lat["latency_us"]["p99"], "output": outputs[mode]}
            for base in ("local_proxy", "global_proxy"):
                if "serpens" in row and base in row and n > 1:
                    ratio, link = same_link_ratio(
                        row["serpens"]["mpps_by_link"], row[base]["mpps_by_link"],
                        fallback=(row["serpens"]["mpps"], row[base]["mpps"]))
                    row[f"serpens_vs_{base}"] = round(ratio or 0.0, 2)
                    row[f"serpens_vs_{base}_link"] = link
            for mode in modes:  # what the hand-off costs each design as the chain grows
                one = result.get("1", {}).get(mode)
                if one and n > 1:
                    row[mode]["vs_own_chain_of_1"] = round(row[mode]["mpps"] /
                                                           max(one["mpps"], 1e-9), 2)
            result[str(n)] = row
    finally:
        rig.close()
        for image in fw_images:
            image.close()
    return result


def print_table(r: dict):
    print(f"FW chains on one core, {r['machine']['cpu']}, {r['params']['flows']} flows, 64 B")
    modes = list(r["params"]["modes"])
    print(f"{'NFs':>4}" + "".join(f"{m + ' Mpps':>19}{'p50 us':>8}" for m in modes)
          + f"{'vs local':>10}{'vs global':>10}")
    for key in sorted((k for k in r if k.isdigit()), key=int):
        row = r[key]
        print(f"{key:>4}" + "".join(f"{row[m]['mpps']:>19.3f}{row[m]['p50_us']:>8}"
                                    for m in modes)
              + "".join(f"{row[k]:>9.2f}x" if k in row else f"{'-':>10}"
                        for k in ("serpens_vs_local_proxy", "serpens_vs_global_proxy")))
    print("every mode's output equals Serpens' on", r["params"]["check_frames"], "frames")
