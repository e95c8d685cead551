"""migrate: moving half of the flows between two servers with their state, vs stop-and-copy.

Three DPDK processes in network namespaces, as `bench multinode` (bench/multinode.py Testbed:
memif or af_packet links): the gateway with its traffic driver (bench/migrate_gateway.py) and
two servers running FW->MON->NAT (per-flow tables: FW's verdicts, MON's flow counters, NAT's
mappings and reverse mappings; MON's eventual per-host counters and NAT's release port pool
stay where they are), the output back through the gateway. A load of --pps over --flows
flows (or, when this VM carries less with under 0.1% loss in a short trial, --headroom times
what it carried: `offered_mpps` says what was offered) runs while server B, which serves
every flow, moves half of them (those in the Maglev slots A owns) to A with their per-flow
entries: first the stop-and-copy way (every flow of B stops, held at the gateway so that
nothing is lost; all of B's per-flow state is copied; the moving flows go on at A, the
others at B), then Serpens' way (controller/moves.py's steps: a snapshot of B's keys, then
waves of --wave-slots Maglev slots, each held, quieted, copied and released on its own:
docs/moves.md), in turns, --trials times each (between moves the flows go back to B,
unmeasured). Figures, for each from its median trial by during_p99_us (losses and disorder
summed over the trials): move_ms (request to the last moved flow's held packets sent on),
lost_packets (into the gateway, never out, of those that arrived from the move's start on;
lost_packets_run: of the whole run, warm-up and the time before the move included),
reordered_flows (a flow whose sequence numbers came out of order), paused_flows_max (flows
with a packet delayed beyond max(1 ms, 3 x the p99 before), during the move), before_p99_us
and during_p99_us (arrival at the gateway to departure from it, for packets that arrived
before / during the move; a packet lost counts as delayed to the load's end),
during_p99_delivered_us (the packets that came out only: a lost packet would otherwise
decide a p99), during_max_delivered_us (a flow's worst wait). Serpens' go at the top level,
the baseline's under stop_and_copy; `flows` is how many moved;
during_p99_vs_stop_and_copy is issue 14's figure (<= 0.2), and
during_p99_delivered_vs_stop_and_copy the same over delivered packets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from serpens.common.argtypes import non_negative_float, positive_float, positive_int
from serpens.controller.moves import WAVE_SLOTS

from .common import BenchError, machine
from .multinode import GATEWAY, GATEWAY_CPU, TAG, UNDERLAYS, Testbed

KEYS = ("move_ms", "lost_packets", "reordered_flows", "paused_flows_max", "before_p99_us",
        "during_p99_us", "during_p99_delivered_us", "during_max_delivered_us",
        "lost_packets_run")


def add_arguments(p):
    p.add_argument("--pps", type=float, default=1e6, help="the load offered during moves")
    p.add_argument("--flows", type=positive_int, default=10000)
    p.add_argument("--seconds", type=positive_float, default=0.5,
                   help="measuring time of the trial that checks the load is carried")
    p.add_argument("--warmup", type=non_negative_float, default=0.5,
                   help="seconds at the load before a move's measurement starts")
    p.add_argument("--before", type=float, default=0.5, help="seconds measured before a move")
    p.add_argument("--after", type=float, default=0.5, help="seconds measured after a move")
    p.add_argument("--headroom", type=float, default=0.5,
                   help="moves run at this fraction of the load a trial carried")
    p.add_argument("--trials", type=int, default=3,
                   help="moves of each approach, in turns: figures of the median one (by "
                        "during_p99_us), losses summed")
    p.add_argument("--wave-slots", type=int, default=WAVE_SLOTS,
                   help="Maglev slots per wave of Serpens' move (0: one hold for all flows)")
    p.add_argument("--underlay", choices=UNDERLAYS, default="memif")
    p.add_argument("--gateway-cpu", type=int, choices=(0, 1), default=GATEWAY_CPU)


def run(args) -> dict:
    if args.wave_slots < 0:
        raise BenchError(f"--wave-slots {args.wave_slots}: 0 (one hold) or more slots a wave")
    if not 1 <= args.trials <= 20:
        raise BenchError(f"--trials {args.trials}: 1..20")
    if os.geteuid() != 0:
        raise BenchError("bench migrate makes network namespaces: run it as root")
    with tempfile.TemporaryDirectory(prefix="serpens-bench-mig-", dir="/dev/shm") as directory:
        # links of 16384 slots (memif's largest): a release sends the held packets at twice
        # the rate they came, on top of the new arrivals, so the servers' output back to the
        # gateway runs at up to 3 Mpps for a while; 4096 slots (a NIC's RX ring) did not ride
        # out this VM's 2-4 ms stops of the gateway's vCPU then, and the stop-and-copy
        # baseline, which releases everything of the source at once, lost 33-5000 packets in
        # half of its trials
        bed = Testbed(args.underlay, directory, ("a", "b"), link_log2=14)
        try:
            bed.create()
            spec = {"servers": [{k: s[k] for k in ("name", "ns", "ip", "mac", "gw_vdev",
                                                   "server_vdev")} for s in bed.servers],
                    "gateway_ip": GATEWAY["ip"], "gateway_mac": GATEWAY["mac"], "tag": TAG,
                    "flows": args.flows, "seconds": args.seconds, "warmup": args.warmup,
                    "before_s": args.before, "after_s": args.after, "pps": args.pps,
                    "dir": directory, "gateway_cpu": args.gateway_cpu,
                    "headroom": args.headroom, "wave_slots": args.wave_slots,
                    # the servers' routers wait 10 ms for a stopped instance before they
                    # shed (5 ms in the rig: bench/rig.py stall_us_for; a node's 2 ms): this
                    # VM stops a vCPU for 2-10 ms now and then, and the bench measures moves,
                    # not the host
                    "stall_us": 10000, "moves_at_once": True, "trials": args.trials,
                    # the gateway's egress ring as large as the links, for the same reason
                    "egress_slots": 16384}
            p = subprocess.run(["ip", "netns", "exec", bed.gw_ns, sys.executable, "-m",
                                "serpens.bench.migrate_gateway", json.dumps(spec)],
                               capture_output=True, text=True, timeout=1800)
        finally:
            bed.remove()
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    sys.stderr.write(p.stderr)
    if p.returncode or not lines:
        raise BenchError(f"bench migrate: the gateway side failed (exit {p.returncode}): "
                         + (p.stderr.strip().splitlines() or ["no output"])[-1])
    r = json.loads(lines[-1])
    s, sc = r["serpens"], r["stop_and_copy"]
    if not s["flows"] or not sc["flows"]:
        raise BenchError(f"bench migrate: no flow moved: {s}, {sc}")
    return {"machine": dict(machine(), stalls=r["stalls"]),
            "params": {"flows_total": args.flows, "pps_wanted": args.pps,
                       "offered_mpps": s["offered_mpps"],
                       "carried_mpps": round(r["carried_pps"] / 1e6, 3),
                       "headroom": args.headroom, "wave_slots": args.wave_slots,
                       "slots_moved": r["slots"], "trials": args.trials,
                       "load_loss": r["load_trial"]["lost"], "sfc": "fw->mon->nat",
                       "servers": 2, "underlay": args.underlay, "warmup": args.warmup,
                       "before_s": args.before, "after_s": args.after,
                       "moved": "the flows of the Maglev slots server A owns (half of "
                                "all) B->A, B serving every flow: the baseline, then "
                                "Serpens",
                       "paused": "a packet delayed beyond max(1 ms, 3 x the p99 before)"},
            **{k: s[k] for k in KEYS}, "flows": s["flows"], "entries": s["entries"],
            # issue 14's figure, and the same over delivered packets only (a lost packet
            # counts as delayed to the load's end in during_p99_us: a baseline that lost
            # some would flatter the first)
            "during_p99_vs_stop_and_copy": ratio(s["during_p99_us"], sc["during_p99_us"]),
            "during_p99_delivered_vs_stop_and_copy": ratio(s["during_p99_delivered_us"],
                                                           sc["during_p99_delivered_us"]),
            "held": s["held"], "held_dropped": s["held_dropped"],
            "stop_and_copy": dict({k: sc[k] for k in KEYS}, flows=sc["flows"],
                                  entries=sc["entries"], trials=sc["trials"]),
            "trials": s["trials"],
            "detail": {"serpens": s, "stop_and_copy": sc, "gateway": r["gateway"],
                       "servers": r["servers"]}}


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def print_table(r: dict):
    p = r["params"]
    print(f"bench migrate: {p['flows_total']} flows at {p['offered_mpps']} Mpps offered "
          f"(wanted {p['pps_wanted'] / 1e6:g}), {r['flows']} flows moved")
    print(f"{'':26}{'serpens':>12}{'stop&copy':>12}")
    for k in KEYS:
        print(f"{k:26}{r[k]!s:>12}{r['stop_and_copy'][k]!s:>12}")
    print(f"during p99 / stop-and-copy's: {r['during_p99_vs_stop_and_copy']} "
          f"(delivered packets only: {r['during_p99_delivered_vs_stop_and_copy']})")
