"""e2e: FW->MON->NAT end to end through a node, Serpens vs three FaaS-style platforms (§V-E).

The paper's Fig. 15 runs the SFC on Fission, SNF and SAND, rebuilt on DPDK with the same C NFs
(§V). Here every platform runs the stock FW, MON and NAT with bench sfc's configs, through
the same node (bench/rig.py: router on CPU 1, net_pcap source, net_null sink, 64-byte UDP
over 10k flows), every NF instance on CPU 0; the platforms differ only in their designs
(docs/baselines.md "End to end" puts each next to the paper's description):
- serpens:      one SFC; one instance runs the chain by function calls, state in the state
                manager's shared memory;
- fission_like: each NF its own instance, started by the pool when packets arrive; all NF
                state in Redis (dp.STATE_REDIS, one pipelined round trip per batch); between
                two NFs the global proxy service (bench/proxy.py, on the router's CPU);
- snf_like:     as fission_like, but per-flow state local and only global state in Redis
                (dp.STATE_REDIS_GLOBAL);
- sand_like:    each NF its own instance, a child forked from a zygote that holds the NF
                loaded, forked when packets arrive and ended when its ring idles
                (bench/forked.py); between NFs the node's router (a local proxy); state in
                Redis (SAND has no state manager of its own), as fission_like's.
Redis listens on a Unix socket pinned to the NFs' CPU (as in bench state). Each platform runs
with its own settings (`params.platforms`: `idle_us`, ring size).
Before any figure every platform carries a fixed finite input (state.check_frames: several
packets per flow, flows the FW denies); its output (count, bytes, digest) and each NF's work
(packets in, dropped, named counters) must equal Serpens', or the run fails (BenchError).
Figures per platform: `mpps`, the highest offered rate with under 0.1% of the packets lost
anywhere (sfc.measure_started, loss_key "lost": a baseline's internal queues count too), and
`latency_us` {p50, p99, mean} at 80% of that platform's own `mpps` (`latency_scale` below
1: scaled to what the CPUs carried then, after a run that did not carry its load:
sfc.latency_at); per baseline `speedup` (Serpens' mpps over its), `latency_reduction` (1 -
Serpens' mean latency over its) and `latency_reduction_p50` (the same of the medians: on
this VM the host's stalls, milliseconds several times a second, queue packets at any rate
near a platform's maximum and decide every mean; the median is the platform's own).
With --gateway (root), `serpens_gateway`: Serpens again, the SFC on one server behind the
gateway (bench multinode's testbed), not compared with the baselines.
"""
from __future__ import annotations

import os
import tempfile
import uuid

from serpens import nfs
from serpens.runtime_cy import _dataplane as dp
from serpens.common.argtypes import non_negative_float, positive_float, positive_int
from serpens.runtime_cy.builder import compile_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from .baselines import ForkRedis, RedisServer, RedisState
from .chain import summary
from .common import BenchError, cpu_stalls, machine
from .forked import ForkedHop
from .rig import INSTANCE_CPU, PROXY, Hop, Rig, flow_frames
from .search import same_link, same_link_ratio
from .sfc import LOSS_LIMIT, build_images, measure_started
from .state import NF_CONFIGS, check_frames

NFS = ("fw", "mon", "nat")
PLATFORMS = ("serpens", "fission_like", "snf_like", "sand_like")
BASELINES = PLATFORMS[1:]
# Each platform's settings (docs/baselines.md "End to end" has how they were chosen):
# idle_us: how long an instance polls an empty ring before it sleeps (a forked SAND child:
# before it ends); sandbox: the pool's (Redis clients need a socket, the fork zygote fork()).
SETTINGS = {
    "serpens": {"idle_us": 50, "ring_size": 4096, "sandbox": True},
    "fission_like": {"idle_us": 200, "ring_size": 1024, "sandbox": "network"},
    "snf_like": {"idle_us": 200, "ring_size": 1024, "sandbox": "network"},
    "sand_like": {"idle_us": 20000, "ring_size": 1024, "sandbox": False},
}
DESIGNS = {
    "serpens": "one SFC, NF to NF by function calls, state in shared memory",
    "fission_like": "instance per NF started on demand, global proxy between NFs, all "
                    "state in Redis",
    "snf_like": "instance per NF started on demand, global proxy between NFs, per-flow "
                "state local, global state in Redis",
    "sand_like": "instance per NF forked on demand from a zygote, local proxy (the node's "
                 "router) between NFs, all state in Redis",
}


def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=0.5, help="measuring time per trial")
    p.add_argument("--warmup", type=non_negative_float, default=0.3,
                   help="seconds at a trial's rate before it is measured")
    p.add_argument("--flows", type=positive_int, default=10000)
    p.add_argument("--platforms", default=",".join(PLATFORMS),
                   help="platforms to run (comma-separated; serpens always runs)")
    p.add_argument("--idle-us", type=int, default=None,
                   help="idle_us of every platform (default: each platform's own)")
    p.add_argument("--ring-size", type=int, default=None,
                   help="instance ring size of every platform (default: each platform's own)")
    p.add_argument("--redis-cpu", type=int, default=INSTANCE_CPU,
                   help="the CPU redis-server is pinned to (default: the NFs')")
    p.add_argument("--gateway", action="store_true",
                   help="also serpens_gateway: the SFC on one server behind the gateway "
                        "(bench multinode's testbed, memif underlay; needs root)")
    p.add_argument("--check-flows", type=int, default=300,
                   help="flows of the finite input (3 packets each) every platform is "
                        "compared on")


class _Platforms:
    """The platforms' router hops, built from one set of NF images and their .so files."""

    def __init__(self, images: dict, redis_socket: str, baseline_nfs=NFS):
        self.images, self.redis = images, redis_socket
        self.baseline_nfs = baseline_nfs  # tests: a baseline that skips an NF
        self.tmp = tempfile.TemporaryDirectory(prefix="serpens-bench-e2e-")
        self.so = {}
        for name in NFS:  # the same source, linked for dlopen (SAND's zygote loads it)
            self.so[name] = os.path.join(self.tmp.name, f"{name}.so")
            with open(self.so[name], "wb") as f:
                f.write(compile_nf(nfs.source(name), name=name))

    def hops(self, platform: str) -> list:
        tag = uuid.uuid4().hex[:6]  # fresh state each run (Redis keys and tables by name)
        names = NFS if platform == "serpens" else self.baseline_nfs
        steps = [NF(self.images[n], config=NF_CONFIGS[n](), name=f"{n}-{tag}") for n in names]
        if platform == "serpens":
            return [compile_sfc(chain(*steps))]
        out = []
        for name, step in zip(names, steps):
            sfc = compile_sfc(step)
            if platform == "sand_like":
                out.append(Hop(sfc, ForkRedis(self.so[name], dp.STATE_REDIS, self.redis),
                               forked=True))
                continue
            if out:
                out.append(PROXY)
            backend = dp.STATE_REDIS if platform == "fission_like" else dp.STATE_REDIS_GLOBAL
            out.append(Hop(sfc, RedisState(backend, self.redis)))
        return out

    def close(self):
        self.tmp.cleanup()


def _use(rig: Rig, settings: dict):
    rig.use_idle_us(settings["idle_us"], settings["sandbox"])


def _check_hops(rig: Rig, platform: str):
    errors = rig.hop_errors()
    if errors:
        raise BenchError(f"bench e2e: {platform}: {'; '.join(errors)}")


def check_equivalence(rig: Rig, platforms, plats: _Platforms, frames, settings,
                      check_forks: dict | None = None, gap_s: float = 0.0) -> dict:
    """Every platform's output for `frames` and each NF's work: {platform: summary with
    "nf_in", "nf_dropped", "nf_counters"}. Raises BenchError where a baseline's differ from
    Serpens' (its figures would compare different work). `check_forks` gets the children a
    forked platform forked per NF for the input; `gap_s`: a pause after each 256 frames of
    it (Rig.output)."""
    outputs = {}
    check_forks = {} if check_forks is None else check_forks
    for platform in platforms:
        _use(rig, settings[platform])
        # (instances started first: one started by the check's first packets may take longer
        # than the router holds packets for it, and the check would compare those drops)
        out = summary(rig.output(plats.hops(platform), frames,
                                 ring_size=settings[platform]["ring_size"], instances=1,
                                 gap_s=gap_s))
        steps = rig.last_work.get("steps", [])
        out["nf_in"] = [s["in"] for s in steps]
        out["nf_dropped"] = [s["dropped"] for s in steps]
        out["nf_counters"] = [s["counters"] for s in steps]
        if platform in ("fission_like", "snf_like"):  # what the proxy passed on, per hop
            forwarded = rig.last_work.get("proxy_forwarded")
            if forwarded != out["nf_in"][1:]:
                raise BenchError(f"bench e2e: {platform}'s global proxy passed on {forwarded} "
                                 f"packets per hop, its next NFs took in {out['nf_in'][1:]}")
        if "forks" in rig.last_work:
            check_forks[platform] = rig.last_work["forks"]
        for p in rig.pool.processes():
            if p.ctl.state_error:
                raise BenchError(f"bench e2e: {platform}: {p.ctl.state_error}")
        outputs[platform] = out
    ref = outputs["serpens"]
    for platform, out in outputs.items():
        sent, ref_sent = ({k: o[k] for k in ("packets", "bytes", "digest")} for o in (out, ref))
        if sent != ref_sent:
            raise BenchError(f"bench e2e: {platform} sent out {sent}, Serpens {ref_sent}: "
                             f"the platforms do not do the same work")
        if out != ref:
            raise BenchError(f"bench e2e: {platform}'s NFs took in {out['nf_in']}, dropped "
                             f"{out['nf_dropped']} and counted {out['nf_counters']}; "
                             f"Serpens' {ref['nf_in']}, {ref['nf_dropped']} and "
                             f"{ref['nf_counters']}: the platforms do not do the same work")
    return outputs


def measure_platform(rig: Rig, plats: _Platforms, platform: str, settings: dict,
                     seconds: float, latency_link: str | None = None,
                     want: tuple = ()) -> dict:
    _use(rig, settings)
    rig.start(plats.hops(platform), ring_size=settings["ring_size"], instances=0)
    try:
        m = measure_started(rig, seconds, latency_mpps=0, loss_key="lost",
                            latency_link=latency_link, want=want)
        _check_hops(rig, platform)
        forks = [h.forks for h in rig.managers if isinstance(h, ForkedHop)]
    finally:
        rig.stop()
    if not m["mpps"] or "latency_us" not in m or m["latency_us"]["mean"] is None:
        # a 0 compares nothing: it did not run (or nothing came out while latency was sampled)
        raise BenchError(f"bench e2e: {platform} carried nothing under {LOSS_LIMIT:.1%} loss "
                         f"(unpaced capacity {m['capacity_mpps']} Mpps)")
    lat = m["latency_us"]
    out = {"mpps": m["mpps"], "latency_us": {"p50": lat["p50"], "p99": lat["p99"],
                                             "mean": lat["mean"]},
           "capacity_mpps": m["capacity_mpps"], "latency_mpps": m["latency_mpps"],
           "latency_link": m["latency_link"], "latency_scale": m["latency_scale"]}
    if forks:  # children forked per NF while measured (a child ends when its ring idles)
        out["forks"] = forks
    # the search's own extra figures (trials, spread), whatever sfc.py reports
    out.update({k: v for k, v in m.items() if k.startswith("mpps_")})
    return out


def measure_gateway(args) -> dict:
    """Serpens through the gateway: bench multinode's gateway and one server (network
    namespaces, VXLAN over memif), the SFC's output leaving the server's own port; the
    same search and latency at 80% (from each frame's arrival at the gateway)."""
    from types import SimpleNamespace

    from .multinode import GATEWAY_CPU, run_multi
    if os.geteuid() != 0:
        raise BenchError("bench e2e --gateway makes network namespaces: run it as root")
    margs = SimpleNamespace(underlay="memif", flows=args.flows, seconds=args.seconds,
                            warmup=args.warmup, gateway_cpu=GATEWAY_CPU)
    with tempfile.TemporaryDirectory(prefix="serpens-bench-e2e-gw-", dir="/dev/shm") as d:
        m = run_multi(margs, d, names=("a",), multi_only=True)["multi"]
    if not m["mpps"] or "latency_us" not in m:
        raise BenchError(f"bench e2e: serpens_gateway carried nothing under "
                         f"{LOSS_LIMIT:.1%} loss")
    lat = m["latency_us"]
    return {"mpps": m["mpps"], "latency_us": {"p50": lat["p50"], "p99": lat["p99"],
                                              "mean": lat["mean"]},
            "capacity_mpps": m["capacity_mpps"], "latency_mpps": m["latency_mpps"],
            "latency_link": m["latency_link"], "latency_scale": m["latency_scale"]}


def platform_settings(args) -> dict:
    settings = {p: dict(SETTINGS[p]) for p in PLATFORMS}
    for s in settings.values():
        if args.idle_us is not None:
            s["idle_us"] = args.idle_us
        if args.ring_size is not None:
            s["ring_size"] = args.ring_size
    return settings


def run(args, baseline_nfs=NFS) -> dict:
    """`baseline_nfs`: a test hook, the NFs the baselines run (fewer: a baseline doing less,
    which must fail the run)."""
    wanted = args.platforms.split(",")
    unknown = set(wanted) - set(PLATFORMS)
    if unknown:
        raise BenchError(f"bench e2e: unknown platform(s) {sorted(unknown)} "
                         f"(known: {', '.join(PLATFORMS)})")
    platforms = [p for p in PLATFORMS if p == "serpens" or p in wanted]
    settings = platform_settings(args)
    redis_cpu = getattr(args, "redis_cpu", INSTANCE_CPU) % (os.cpu_count() or 1)
    images = build_images()
    result = {"machine": machine(),
              "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds,
                         "warmup": args.warmup, "loss_limit": LOSS_LIMIT, "loss_counts":
                         "every packet that did not come out (input and inside the node)",
                         "sfc": "fw->mon->nat",
                         "latency_at": "80% of each platform's mpps (x latency_scale)",
                         "platforms": {p: dict(settings[p], design=DESIGNS[p])
                                       for p in platforms},
                         "cores": "router cpu 1 (and the global proxy, sharing it), every NF "
                                  f"instance cpu {INSTANCE_CPU}, redis-server cpu "
                                  f"{redis_cpu}",
                         "redis": f"unix socket, pinned to cpu {redis_cpu}",
                         "instances": "started on demand by the first packets (warm after)",
                         "check_frames": 3 * args.check_flows}}
    rig = plats = None
    try:
        with RedisServer(cpu=redis_cpu) as redis:
            plats = _Platforms(images, redis.socket, baseline_nfs)
            rig = Rig("e2e", flow_frames(args.flows), pool_size=len(NFS), warmup=args.warmup,
                      idle_us=settings["serpens"]["idle_us"])
            result["machine"]["stalls"] = cpu_stalls()  # (it needs the EAL: after the rig)
            outputs = check_equivalence(rig, platforms, plats,
                                        check_frames(args.check_flows), settings)
            for platform in platforms:
                # every platform searched and its latency measured in the CPU placements
                # Serpens' were (bench/search.py)
                ref = result.get("serpens", {})
                row = measure_platform(rig, plats, platform, settings[platform], args.seconds,
                                       ref.get("latency_link"), tuple(ref.get("mpps_by_link", ())))
                row["output"] = outputs[platform]
                result[platform] = row
    finally:
        if rig is not None:
            rig.close()
        if plats is not None:
            plats.close()
        for image in images.values():
            image.close()
    if args.gateway:
        result["serpens_gateway"] = measure_gateway(args)
        result["params"]["serpens_gateway"] = (
            "FW->MON->NAT on one server (1 instance, the engine's default settings) behind "
            "the gateway, VXLAN over memif (bench multinode's testbed, gateway loop cpu 1): "
            "a second Serpens figure, not compared")
    ref = result["serpens"]
    for base in platforms[1:]:
        row = result[base]
        # in a CPU placement both were searched in (bench/search.py), else "mixed"
        speedup, row["speedup_link"] = same_link_ratio(
            ref["mpps_by_link"], row["mpps_by_link"], fallback=(ref["mpps"], row["mpps"]))
        row["speedup"] = round(speedup, 2)
        row["latency_reduction"] = round(1 - ref["latency_us"]["mean"] /
                                         row["latency_us"]["mean"], 3)
        row["latency_reduction_p50"] = round(1 - ref["latency_us"]["p50"] /
                                             row["latency_us"]["p50"], 3)
        # both latencies measured in one CPU placement, else "mixed"
        row["latency_reduction_link"] = same_link(ref["latency_link"], row["latency_link"])
    return result


def print_table(r: dict):
    print(f"FW->MON->NAT end to end on {r['machine']['cpu']} ({r['machine']['cores']} cores), "
          f"{r['params']['flows']} flows, 64 B; latency at 80% of each platform's max")
    print(f"{'platform':<14}{'Mpps':>9}{'p50 us':>9}{'p99 us':>9}{'mean us':>9}"
          f"{'speedup':>9}{'lat. red.':>10}")
    for p in PLATFORMS + ("serpens_gateway",):
        if p not in r:
            continue
        row, lat = r[p], r[p]["latency_us"]
        sp = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
        red = f"{row['latency_reduction']:.1%}" if "latency_reduction" in row else "-"
        print(f"{p:<14}{row['mpps']:>9.3f}{lat['p50']:>9}{lat['p99']:>9}{lat['mean']:>9}"
              f"{sp:>9}{red:>10}")
    print("every platform's output and NF counters equal Serpens' on",
          r["params"]["check_frames"], "frames")
