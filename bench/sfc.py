"""sfc: FW->MON->NAT through the router and one instance, vs an empty SFC and testpmd.

One router core (CPU 1) and one instance core (CPU 0), 64-byte UDP packets over 10k flows from
a net_pcap source replaying endlessly, into a net_null sink (bench/rig.py). Figures:
- sfc_mpps: the highest offered rate the SFC carries with under 0.1% loss (a paced source
  emulates arrivals: what the router cannot take in time overflows the emulated input queue,
  Rig.depth_at: 5 ms of arrivals, at least 65536, and is lost); a binary search below the
  unpaced capacity, a rate passing when one of `TRIES` trials does; `--searches`
  independent searches, the figure their median, all of them in sfc_mpps_trials ({values,
  median, min, max, spread}: every searched figure X_mpps has its X_mpps_trials);
- latency_us: p50/p99 from each packet's arrival to its transmission, at 80% of sfc_mpps
  (the median-p99 run of three; a run that lost over 0.1%, overloaded by a slow spell of the
  host, is run again: latency_overloaded_runs counts them; the load then follows what the
  CPUs carry now, latency_scale: latency_at);
- null_sfc_mpps: the same search for an SFC of one empty NF (router + instance overhead);
- null_latency_us: that empty SFC's latency at the load latency_us was measured at: the floor
  the router, the instance hand-off and the machine (its vCPU stalls) set;
- sfc_mpps_scraped: sfc_mpps searched again in the same run (same router, instance and
  state) while the node's metrics are scraped once a second (agent/metrics.py over HTTP, the
  router's latency sampling armed), in turns with as many searches without the scraper
  (sfc_mpps_unscraped_paired): this VM's slow spells (a third off every rate) then fall on
  both alike; scraped_vs_unscraped is the median of the pairs' ratios
  (scraped_vs_unscraped_pairs): what being observed costs (goal: within 2%);
- nf_cycles: TSC cycles per packet of each NF ({"fw": c, "mon": c, "nat": c}), counted by
  the instance around each NF call of each batch (pool_ctl.h nf_cycles_on: armed only for
  this run) over one unpaced run after the search (the instance saturated: full batches),
  the median of five parts of that run;
- testpmd_mpps: dpdk-testpmd io forwarding on one core over the same kind of ports (the best a
  plain DPDK app does with these ports: the ceiling for the router core).
Time: a search is two unpaced runs (its capacity), then at most 1 + 2 * STEPS + 1 points of
up to TRIES trials, each warmup + seconds (typically 8 runs: ~6.5 s at the defaults); the whole
run (three figures of SEARCHES searches, latency, testpmd) takes about 1.5-3 minutes (more
when the host moves the CPUs: bench/search.py).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from serpens import nfs
from serpens.common.argtypes import non_negative_float, positive_float, positive_int
from serpens.runtime_cy.builder import AreaAllocator, build_nf
from serpens.runtime_cy.sfc import NF, chain, compile_sfc

from .common import BenchError, cpu_link, cpu_stalls, machine
from .rig import Rig, flow_frames, write_pcap
from .scrape import RigNode, Scraper
from .search import (LOSS_LIMIT, SEARCHES, TRIES, link_ratios, linked_run, same_link_ratio,
                     search, trials_summary)
from .state import NF_CONFIGS

NULL_NF = os.path.join(os.path.dirname(__file__), "nfs", "null.c")


def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=0.5, help="measuring time per trial")
    p.add_argument("--warmup", type=non_negative_float, default=0.3,
                   help="seconds at a trial's rate before it is measured")
    p.add_argument("--flows", type=positive_int, default=10000)
    p.add_argument("--searches", type=positive_int, default=SEARCHES,
                   help="independent loss-limited searches per figure (the figure: median)")


def nf_cycles(rig: Rig, seconds: float, windows: int = 5) -> dict:
    """{NF step name: TSC cycles per packet} of the rig's (first) SFC, counted by its
    instances around each NF call (pool_ctl.h nf_cycles_on, armed only for this unpaced run
    of `seconds`: the instances saturated, batches full); the median of `windows` equal parts
    of the run, as a host's pause (cycles counted while the vCPU was away) lands in few."""
    m = rig.managers[0]
    steps = m.sfc.steps
    ctls = [s.proc.ctl for s in m.instances.values()]

    def read():
        return [ctl.nf_cycles(len(steps)) for ctl in ctls]

    per_window = []
    for ctl in ctls:
        ctl.nf_cycles_on = True
    try:
        for w in range(windows):
            before = read()
            rig.run_at(0, seconds / windows, warmup=None if w == 0 else 0.02)
            after = read()
            per_window.append([(sum(a[k][0] - b[k][0] for a, b in zip(after, before)),
                                sum(a[k][1] - b[k][1] for a, b in zip(after, before)))
                               for k in range(len(steps))])
    finally:
        for ctl in ctls:
            ctl.nf_cycles_on = False
    out = {}
    for k, step in enumerate(steps):
        rates = sorted(c / p for c, p in (w[k] for w in per_window) if p)
        out[step.name] = round(rates[len(rates) // 2], 1) if rates else None
    return out


def measure(rig: Rig, sfc, seconds: float, latency_mpps: float | None = None,
            loss_key: str = "loss", instances: int = 1, scraped: bool = False,
            searches: int = SEARCHES, cycles: bool = False,
            latency_link: str | None = None, want: tuple = ()) -> dict:
    """Max rate; with `latency_mpps`, latency at that load (0: at 80% of the max rate; in
    the placement `latency_link` if given; `want`: placements to search in too, those of
    a figure this one is compared with: measure_started); with
    `scraped`, the max rate again under a 1 Hz metrics scraper ("mpps_scraped"); with
    `cycles`, each NF's cycles per packet ("nf_cycles")."""
    rig.start([sfc], instances=instances)
    try:
        out = measure_started(rig, seconds, latency_mpps, loss_key, searches=searches,
                              latency_link=latency_link, want=want)
        if cycles:
            out["nf_cycles"] = nf_cycles(rig, seconds)
        if scraped:
            out.update(scraped_pairs(rig, seconds, loss_key, searches))
        return out
    finally:
        rig.stop()


def scraped_pairs(rig, seconds: float, loss_key: str, searches: int) -> dict:
    """The max rate searched `searches` times without and with a 1 Hz metrics scraper, in
    turns (a search without, then one with): this VM's slow spells, which take a third off
    any rate, then fall on both alike. "mpps_scraped" and "mpps_unscraped" are the medians;
    "scraped_vs_unscraped" is the median of the pairs' ratios (a spell that begins or ends
    between the two searches of a pair skews that pair alone), over the pairs whose two
    searches ran with the CPUs placed alike (search.py; another pair's ratio is None)."""
    plain, watched, scrapes = [], [], 0
    for _ in range(max(1, searches)):
        plain.append(search(rig, seconds, loss_key=loss_key, searches=1))
        scraper = Scraper(RigNode(rig, "fw-mon-nat"), period=1.0)
        try:
            watched.append(search(rig, seconds, loss_key=loss_key, searches=1))
            scrapes += scraper.scrapes
        finally:
            scraper.close()
    pairs = [same_link_ratio(w["by_link"], p["by_link"])[0] for p, w in zip(plain, watched)]
    ratios = [r for r in pairs if r is not None]
    without = trials_summary([p["mpps"] for p in plain])
    with_ = trials_summary([w["mpps"] for w in watched])
    return {"mpps_scraped": with_["median"], "mpps_scraped_trials": with_,
            "mpps_unscraped": without["median"], "mpps_unscraped_trials": without,
            "scraped_vs_unscraped": round(statistics.median(ratios), 3) if ratios else None,
            "scraped_vs_unscraped_pairs": pairs, "scrapes": scrapes}


def measure_started(rig, seconds: float, latency_mpps: float | None = None,
                    loss_key: str = "loss", searches: int = SEARCHES,
                    latency_link: str | None = None, want: tuple = ()) -> dict:
    """measure() on a rig carrying its SFC already: anything with run_at() as Rig has.
    "mpps" is the median of `searches` searches in one placement of the CPUs ("link"),
    "mpps_trials" all of them, "mpps_by_link" each placement's (bench/search.py). Latency
    (latency_mpps 0) is measured at 80% of the figure of the placement it runs in."""
    found = search(rig, seconds, loss_key=loss_key, searches=searches,
                   want=tuple(want) + ((latency_link,) if latency_link else ()))
    rate, trial = found["mpps"], found["trial"]
    out = {"mpps": round(rate, 3), "loss": trial[loss_key] if trial else None,
           "capacity_mpps": round(found["capacity"], 3), "mpps_trials": found["trials"],
           "mpps_link": found["link"], "mpps_by_link": found["by_link"],
           "mpps_moved": found["moved"]}
    if latency_mpps is not None and (latency_mpps or rate):
        out.update(latency_at(rig, seconds, found, latency_mpps, loss_key, latency_link))
    return out


LATENCY_RUNS = 3  # the median p99 of three runs
LINK_WAIT_TRIALS = 20  # a latency run waits for a placement (one the search has a figure
# in, or the one asked for) as long as this many trials, 1 to 10 s


def latency_at(rig, seconds: float, found: dict, latency_mpps: float, loss_key: str,
               want_link: str | None = None) -> dict:
    """Latency at `latency_mpps` (0: 80% of the searched figure of the placement each run
    finds the CPUs in): the median-p99 run of LATENCY_RUNS that ran in one placement (a run
    the host moved the CPUs during is run again, up to 3 times as many; then the placement's
    runs are those that ran whole); with `want_link`, runs wait for that placement (a latency
    compared with another figure's) up to LINK_WAIT_TRIALS trials' time. A placement the
    search found no figure in is waited out as long, then searched once. A run that lost
    over LOSS_LIMIT did not carry its load (the host slowed the CPUs below the searched
    figure): it is run again, within the same budget and LATENCY_RUNS times at most, and
    such runs' latency (the input queue's hold) counts only if no run carried the load.
    After such a run, a load taken of the searched figure (latency_mpps 0) follows the host:
    the placement's figure is scaled by its capacity now over the one its search measured,
    if clearly lower (carried_now: two unpaced runs more, at most twice); the figure is then
    of the placement's runs at the latest load one of them carried (or, if none carried
    any, the latest of the overloaded runs' loads) alone.
    {"latency_us", "latency_loss", "latency_mpps", "latency_link", "latency_of_mpps": the
    figure 80% was taken of, "latency_scale": the scale then applied to it (1.0: none),
    "latency_overloaded_runs": runs that did not carry their load}."""
    runs: dict = {}
    overloaded: dict = {}  # placement: runs that lost over LOSS_LIMIT
    n_overloaded = 0
    searched = dict(found["by_link"])  # placement: {"mpps", "capacity"} (+ searched here)
    scales: dict = {}  # placement: its figure's scale to what the CPUs carry now
    link, _ = cpu_link()
    wait_until = time.monotonic() + min(10.0, max(1.0, LINK_WAIT_TRIALS * seconds))
    for _ in range(3 * LATENCY_RUNS):
        while ((want_link and link != want_link)
               or (not latency_mpps and link not in searched)):
            if time.monotonic() > wait_until:
                break
            time.sleep(0.1)  # a placement the search found no figure in: wait for another
            link, _ = cpu_link()
        if not latency_mpps and link not in searched:  # waited long enough: search it
            extra = search(rig, seconds, loss_key=loss_key, searches=1)
            for k, v in extra["by_link"].items():
                searched.setdefault(k, v)
            link, _ = cpu_link()
        if link is None or (not latency_mpps and not searched.get(link, {}).get("mpps")):
            link, _ = cpu_link()  # (a probe that could not tell, or a figure of 0)
            continue
        scale = 1.0 if latency_mpps else scales.get(link, 1.0)
        mpps = latency_mpps or 0.8 * searched[link]["mpps"] * scale
        load = mpps * 1e6
        ran_in, link, run = link, *linked_run(rig, load, seconds, link,
                                              log=int(load * seconds * 1.5))
        # a run the VM stalled through may sample nothing (p99 None)
        if run is not None and run["latency_us"]["p99"] is not None:
            run["mpps"], run["scale"] = mpps, scale
            if run[loss_key] > LOSS_LIMIT:
                overloaded.setdefault(ran_in, []).append(run)
                n_overloaded += 1
                if n_overloaded == LATENCY_RUNS:
                    break  # not a spell: this load is over what the CPUs carry now
                if not latency_mpps:
                    link, now = carried_now(rig, seconds, ran_in, searched[ran_in])
                    if now is not None and now < scales.get(ran_in, 1.0):
                        scales[ran_in] = now
                continue
            runs.setdefault(ran_in, []).append(run)
            if sum(r["scale"] == scale for r in runs[ran_in]) == LATENCY_RUNS:
                break
    runs = runs or overloaded
    if not runs:
        raise BenchError("bench: no latency run sampled a packet in one placement of the CPUs")
    runs = {k: at_latest_load(v) for k, v in runs.items()}
    ran_in = want_link if want_link in runs else max(runs, key=lambda k: len(runs[k]))
    sampled = sorted(runs[ran_in], key=lambda r: r["latency_us"]["p99"])
    median = sampled[(len(sampled) - 1) // 2]
    return {"latency_us": median["latency_us"], "latency_loss": median[loss_key],
            "latency_mpps": round(median["mpps"], 3), "latency_link": ran_in,
            # the figure 80% was taken of (one searched here if the search had none there)
            "latency_of_mpps": None if latency_mpps else searched[ran_in]["mpps"],
            "latency_scale": round(median["scale"], 6),
            "latency_overloaded_runs": n_overloaded}


def at_latest_load(runs: list) -> list:
    """The runs at the lowest of their scales: the latest load (a placement's scale only
    falls) that they were run at."""
    latest = min(r["scale"] for r in runs)
    return [r for r in runs if r["scale"] == latest]


CARRIED_MARGIN = 0.95  # a capacity now under this share of the search's is the host's doing


def carried_now(rig, seconds: float, link: str, searched: dict) -> tuple:
    """What placement `link`'s CPUs carry now against when its figure was searched
    (`searched`: {"mpps", "capacity"}, search.py): (the placement after, its capacity now
    over the search's, or None). The capacity now is the better of two unpaced runs, as a
    search's own is; a ratio over CARRIED_MARGIN is a run's noise, not the host (None), as
    are a run that left the placement and an unknown capacity."""
    capacity = searched.get("capacity")
    if not capacity:
        return link, None
    best = 0.0
    for _ in range(2):
        link, trial = linked_run(rig, 0, seconds, link)
        if trial is None:
            return link, None
        best = max(best, trial["mpps"])
    ratio = best / capacity
    return link, ratio if 0 < ratio < CARRIED_MARGIN else None


def build_images(null: bool = False) -> dict:
    """The benchmark's FW, MON and NAT images (and the empty NF's): close them after use."""
    areas = AreaAllocator()
    images = {name: build_nf(nfs.source(name), areas.allocate(), name) for name in NF_CONFIGS}
    if null:
        with open(NULL_NF) as f:
            images["null"] = build_nf(f.read(), areas.allocate(), "null")
    return images


def fw_mon_nat(images: dict | None = None):
    """The benchmark SFC, FW->MON->NAT with the benchmark configs; (compiled SFC, images)."""
    images = images or build_images()
    return compile_sfc(chain(*[NF(images[n], config=NF_CONFIGS[n](), name=n)
                               for n in ("fw", "mon", "nat")])), list(images.values())


def run(args) -> dict:
    frames = flow_frames(args.flows)
    images = build_images(null=True)
    sfc, _ = fw_mon_nat(images)
    null_sfc = compile_sfc(NF(images["null"], name="null"))
    rig = Rig("sfc", frames, warmup=args.warmup)
    try:
        stalls = cpu_stalls()
        fmn = measure(rig, sfc, args.seconds, latency_mpps=0, scraped=True, cycles=True,
                      searches=args.searches)
        # the same load through an empty SFC: the latency floor of router, instance and VM
        null = measure(rig, null_sfc, args.seconds, latency_mpps=fmn.get("latency_mpps"),
                       searches=args.searches, latency_link=fmn.get("latency_link"),
                       want=tuple(fmn["mpps_by_link"]))
    finally:
        rig.close()
        for image in images.values():
            image.close()
    # the two SFCs compared in one placement of the CPUs (search.py)
    vs_null, vs_null_link = same_link_ratio(fmn["mpps_by_link"], null["mpps_by_link"])
    from .testpmd import testpmd_mpps
    with tempfile.TemporaryDirectory(prefix="serpens-bench-testpmd-") as tmp:
        pcap = os.path.join(tmp, "traffic.pcap")
        write_pcap(pcap, frames)
        testpmd = testpmd_mpps(pcap, seconds=max(1.0, args.seconds),
                               file_prefix=f"serpens-bench-testpmd-{os.getpid()}")
    return {"machine": dict(machine(), stalls=stalls),
            "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds,
                       "warmup": args.warmup,
                       "loss_limit": LOSS_LIMIT, "sfc": "fw->mon->nat",
                       "input_depth": rig.input_depth, "input_hold_s": rig.input_hold_s,
                       "stall_us": rig.stall_us,
                       "searches": args.searches,
                       "tries_per_rate": TRIES,
                       "cores": "router cpu 1, instance cpu 0; testpmd one forwarding core",
                       "ports": "net_pcap infinite_rx -> net_null"},
           "sfc_mpps": fmn["mpps"], "sfc_loss": fmn["loss"],
           "sfc_mpps_trials": fmn["mpps_trials"], "sfc_mpps_link": fmn["mpps_link"],
           "sfc_mpps_by_link": fmn["mpps_by_link"],
           "sfc_mpps_scraped": fmn["mpps_scraped"], "scrapes": fmn["scrapes"],
           "sfc_mpps_scraped_trials": fmn["mpps_scraped_trials"],
           "sfc_mpps_unscraped_paired": fmn["mpps_unscraped"],
           "sfc_mpps_unscraped_paired_trials": fmn["mpps_unscraped_trials"],
           "scraped_vs_unscraped": fmn["scraped_vs_unscraped"],
           "scraped_vs_unscraped_pairs": fmn["scraped_vs_unscraped_pairs"],
           "latency_us": {"p50": fmn["latency_us"]["p50"], "p99": fmn["latency_us"]["p99"],
                          "p99_9": fmn["latency_us"]["p99_9"]},
           "nf_cycles": fmn["nf_cycles"],
           "latency_link": fmn["latency_link"], "latency_mpps": fmn["latency_mpps"],
           "latency_of_mpps": fmn["latency_of_mpps"],
           "latency_loss": fmn["latency_loss"],
           "latency_overloaded_runs": fmn["latency_overloaded_runs"],
           "latency_scale": fmn["latency_scale"],
           "null_latency_link": null.get("latency_link"),
           "null_latency_loss": null.get("latency_loss"),
           "null_latency_overloaded_runs": null.get("latency_overloaded_runs"),
           "null_sfc_mpps": null["mpps"], "null_sfc_mpps_trials": null["mpps_trials"],
           "null_sfc_mpps_link": null["mpps_link"], "null_sfc_mpps_by_link": null["mpps_by_link"],
           "testpmd_mpps": round(testpmd["mpps"], 3),
           "null_latency_us": {k: null["latency_us"][k] for k in ("p50", "p99", "p99_9")}
           if "latency_us" in null else None,
           "sfc_vs_null": vs_null, "sfc_vs_null_link": vs_null_link,
           "sfc_vs_null_by_link": link_ratios(fmn["mpps_by_link"], null["mpps_by_link"]),
           "link_moved_trials": fmn["mpps_moved"] + null["mpps_moved"]}


def print_table(r: dict):
    print(f"SFC fw->mon->nat on {r['machine']['cpu']} ({r['machine']['cores']} cores), "
          f"{r['params']['flows']} flows, 64 B packets, {r['params']['ports']}")
    print(f"{'sfc Mpps':>10}{'scraped':>10}{'null sfc':>10}{'testpmd':>10}{'p50 us':>9}"
          f"{'p99 us':>9}")
    lat = r["latency_us"]
    print(f"{r['sfc_mpps']:>10.3f}{r['sfc_mpps_scraped']:>10.3f}{r['null_sfc_mpps']:>10.3f}"
          f"{r['testpmd_mpps']:>10.3f}{lat['p50']:>9}{lat['p99']:>9}   (latency at "
          f"{r['latency_mpps']} Mpps, {r['latency_link']})")
    if r["null_latency_us"]:
        print(f"{'':>40}{r['null_latency_us']['p50']:>9}{r['null_latency_us']['p99']:>9}"
              f"   (null sfc at that load, {r['null_latency_link']})")
    # the host's placement of the two CPUs each figure was searched in (bench/search.py)
    for key in ("sfc_mpps", "null_sfc_mpps"):
        print(f"{key} by CPU placement: " + ", ".join(
            f"{link} {f['mpps']}" for link, f in r[f"{key}_by_link"].items())
            + f" (headline: {r[f'{key}_link']})")
    print(f"sfc_vs_null {r['sfc_vs_null']} ({r['sfc_vs_null_link']}); scraped_vs_unscraped "
          f"{r['scraped_vs_unscraped']} (pairs searched in one placement)")
    print("cycles per packet per NF: " + ", ".join(f"{k} {v}" for k, v in r["nf_cycles"].items()))
