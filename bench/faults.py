"""faults: a misbehaving NF beside FW->MON->NAT on one node (issue 11, DESIGN §8).

A node (its own DPDK primary, a pool of real processes) runs two SFCs over one paced input:
`healthy` (FW->MON->NAT, traffic from 10.0.0.0/8, out by port lan) and `faulty` (the
misbehave NF of bench/nfs/misbehave.c, traffic to 192.0.2.0/24, out by port dmz), one packet
in ten for the faulty one. The healthy SFC runs alone first (the baseline), then beside the
faulty one, for the same time at the same load. Kinds of fault: `null` (writes through NULL),
`overread` (reads 1 MiB past its packet), `loop` (never returns: the watchdog), `syscall`
(opens a file with a raw system call: the sandbox), `kill` (a forwarding NF whose busy pool
process is SIGKILLed 20 times), `starve` (the healthy SFC holds every pool process, so the
other, a forwarding NF, gets none: its packets must wait boundedly and be dropped, not stop
the node).

`python -m serpens.bench.faults serve PPS` runs scenarios one after another on one DPDK
primary (Bed), a fresh node and pool each, as the tests do (see serve()).

Figures (`serpensctl bench faults`: the `null` kind, crashing in a loop for 10 s):
- healthy_kept: the healthy SFC's output rate beside the faulty one / alone;
- detect_ms: p50 from a crash (the fault's TSC stamp from the pool process's signal handler,
  the watchdog's kill, or our SIGKILL) to the node reporting it (Node.stats(): what the agent
  answers GetNode with; the controller's status follows within its 1 s report period);
- restart_ms: p50 from a crash to the next instance's first batch (back-off included: 10 ms
  doubling per crash within `window_s`, set to 1 s here); restart_beyond_backoff_ms: the same
  less the back-off the policy chose (the restart machinery itself: a pool process spawned
  when the crash is seen, the start command, the first batch);
- sandbox_cost: FW->MON->NAT Mpps, unpaced, in pool processes with the sandbox / without, in
  one run (alternating, 5 runs each; the best of each, as this VM's interference only slows a
  run down and moves single runs by 10-20%; `sandbox.median_ratio` beside it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from serpens.common.argtypes import positive_float

from .common import cpu_stalls, machine, percentiles, udp_frame
from .rig import write_pcap

MISBEHAVE = os.path.join(os.path.dirname(__file__), "nfs", "misbehave.c")
KINDS = {"null": "N", "overread": "R", "loop": "L", "syscall": "S", "kill": "-", "starve": "-"}

HEALTHY = """
apiVersion: serpens/v1
kind: SFC
metadata: {name: healthy}
spec:
  nfs:
    fw: {stock: fw, config: {default: deny, rules: [{action: allow, src: 10.0.0.0/8}]}}
    mon: {stock: mon}
    nat:
      stock: nat
      config: {internal: 10.0.0.0/8, external_ips: [203.0.113.1], port_range: 1024-65535}
  chain: [fw, mon, nat]
  match: [{src: 10.0.0.0/8}]
  output: lan
"""


def faulty_spec(kind: str, config: bytes, restarts: int, window_s: float) -> str:
    return f"""
apiVersion: serpens/v1
kind: SFC
metadata: {{name: faulty}}
spec:
  nfs:
    bad: {{source: {MISBEHAVE}, config_hex: "{config.hex()}"}}
  chain: [bad]
  match: [{{dst: 192.0.2.0/24}}]
  output: dmz
  faults: {{batch_ms: 10, restarts: {restarts}, window_s: {window_s}}}
"""


def node_spec(pcap: str, state_dir: str, pps: float) -> str:
    return f"""
apiVersion: serpens/v1
kind: Node
metadata: {{name: faults-{os.getpid()}}}
spec:
  ports:
    wan: net_pcap_fwan,rx_pcap={pcap},infinite_rx=1
    lan: net_null_flan,no-rx=1
    dmz: net_null_fdmz,no-rx=1
  input: [wan]
  output: lan
  pool: 4
  cpus: "0"                  # the agent and the instances; the router has CPU 1 to itself
  router_cpu: 1
  warm_s: 600
  pace: {{wan: {pps:g}}}
  state_dir: {state_dir}
"""


def traffic(flows: int = 1000) -> list[bytes]:
    """Nine healthy frames (10.0.0.0/8 out to a server) to one for the faulty SFC."""
    frames = []
    for i in range(flows):
        frames.append(udp_frame(f"10.0.{i // 256}.{i % 256}", "198.51.100.7", 1024 + i, 53))
        if i % 9 == 8:
            frames.append(udp_frame(f"172.16.0.{i % 250 + 1}", "192.0.2.1", 2048 + i, 9,
                                    payload=b"x"))
    return frames


def _p(values: list) -> dict | None:
    return {k: round(v, 3) for k, v in percentiles(values, 50, 99).items()} if values else None


class Bed:
    """What scenarios share: the paced capture, and a DPDK primary with the node's ports.
    Each scenario runs its own Node (router, SFCs, pool of processes) on them, so several run
    one after another in one process without booting DPDK or compiling the NFs again."""

    def __init__(self, pps: float = 100_000):
        from serpens.agent.node import open_ports, start_dataplane
        from serpens.common.node_spec import parse_node
        from serpens.runtime_cy.builder import AreaAllocator

        self.tmp = tempfile.TemporaryDirectory(prefix="serpens-faults-", dir="/dev/shm")
        pcap = os.path.join(self.tmp.name, "traffic.pcap")
        write_pcap(pcap, traffic())
        self.spec = parse_node(node_spec(pcap, os.path.join(self.tmp.name, "state"), pps))
        self.dataplane = None
        self.ports: dict[str, int] = {}
        self.areas = AreaAllocator()
        self.runs = 0
        try:
            self.dataplane = start_dataplane(self.spec)
            open_ports(self.spec, self.dataplane, self.ports)
        except BaseException:
            self.close()
            raise

    def scenario(self) -> Scenario:
        self.runs += 1
        return Scenario(self, os.path.join(self.tmp.name, f"escaped-{self.runs}"))

    def close(self):
        from serpens.runtime_cy import _dataplane as dp

        for port in self.ports.values():
            dp.port_close(port)
        if self.dataplane is not None:
            self.dataplane.close()
        self.tmp.cleanup()


class Scenario:
    """One node running `healthy`, then `faulty` beside it (see the module's text), on a
    Bed's DPDK primary and ports, with a pool of its own and an empty state directory."""

    def __init__(self, bed: Bed, escape: str):
        from serpens.agent.node import Node
        from serpens.common.spec import parse_sfc
        from serpens.runtime_cy import _dataplane as dp

        self.dp, self.parse_sfc, self.escape = dp, parse_sfc, escape
        shutil.rmtree(bed.dataplane.config.state_dir, ignore_errors=True)  # a past scenario's
        os.makedirs(bed.dataplane.config.state_dir, mode=0o700, exist_ok=True)
        self.node = Node(bed.spec, [parse_sfc(HEALTHY)], dataplane=bed.dataplane,
                         ports=bed.ports, areas=bed.areas).start()
        try:
            self.node.scale("healthy", 1)
        except BaseException:
            self.node.close()  # (its router holds the router's lcore)
            raise
        # TSC stamps -> time.monotonic()
        self.hz, self.tsc0, self.mono0 = dp.tsc_hz(), dp.rdtsc(), time.monotonic()

    def mono(self, tsc: int) -> float:
        return self.mono0 + (tsc - self.tsc0) / self.hz

    def close(self):
        self.node.close()

    def _healthy(self) -> tuple[float, int, int, int, int]:
        """(time, the healthy SFC's packets in, lan port out, wan RX missed, the healthy SFC's
        packets lost: dropped by its NFs or by the router for any reason)."""
        st = self.node.stats()
        h = st["sfcs"]["healthy"]
        return (time.monotonic(), h["rx"], st["ports"]["lan"]["tx"],
                st["ports"]["wan"]["missed"], h["dropped"] + sum(h["drops"].values()))

    def run(self, kind: str, seconds: float, restarts: int = 5, window_s: float = 60.0,
            settle: float = 1.0, alone_s: float | None = None) -> dict:
        """The healthy SFC alone for `alone_s` (default: `seconds`) once its packets leave
        and `settle` more seconds passed, then beside the faulty one for `seconds`."""
        escape = self.escape  # the syscall NF's target
        config = KINDS[kind].encode() + (escape.encode() + b"\0" if kind == "syscall" else b"")
        deadline = time.monotonic() + 10
        while self._healthy()[2] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the healthy SFC sent nothing in 10 s")
            time.sleep(0.01)
        time.sleep(settle)
        a = self._healthy()
        time.sleep(seconds if alone_s is None else alone_s)
        b = self._healthy()
        if kind == "starve":  # the healthy SFC takes every pool process
            self.node.scale("healthy", self.node.spec.pool)
        self.node.apply_sfc(self.parse_sfc(faulty_spec(kind, config, restarts, window_s),
                                           base_dir="/"))
        kills: list[float] = []
        killer = None
        if kind == "kill":
            self.node.scale("faulty", 1)
            killer = threading.Thread(target=self._kill_loop, args=(seconds, kills))
            killer.start()
        seen, detected, phases = 0, [], set()
        c = self._healthy()
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the node's reports as the agent answers them
            f = self.node.stats()["sfcs"]["faulty"]
            if f["crashes"] > seen:
                detected += [time.monotonic()] * (f["crashes"] - seen)
                seen = f["crashes"]
            phases.add(f["phase"])
            time.sleep(0.001)
        if killer:
            killer.join()
            # the last kills' processes may still be exiting (the kernel takes up to 300 ms)
            settle_by = time.monotonic() + 3
            while (self.node.managers["faulty"].crashes.total < len(kills)
                   and time.monotonic() < settle_by):
                time.sleep(0.01)
        d = self._healthy()
        manager = self.node.managers["faulty"]
        faults = list(manager.crashes.log)
        st = self.node.stats()
        faulty = st["sfcs"]["faulty"]
        crash_at = [self.mono(f.tsc) if f.tsc else None for f in faults]
        if kind == "kill":
            crash_at = kills[:len(faults)] + [None] * (len(faults) - len(kills))
        detect = [(t - c0) * 1e3 for t, c0 in zip(detected, crash_at) if c0 and t >= c0]
        started = list(manager.started)
        backoffs = list(manager.crashes.backoffs)
        restart, overhead = [], []
        for i, f in enumerate(faults):
            after = next((p for k, p in enumerate(started) if k and started[k - 1].pid == f.pid),
                         None)
            first = after.ctl.first_batch_cycles() if after is not None else 0
            t0 = crash_at[i] if i < len(crash_at) else None
            if first and t0:
                restart.append((self.mono(first) - t0) * 1e3)
                if i < len(backoffs):  # what the restart took beyond the policy's wait
                    overhead.append(restart[-1] - backoffs[i] * 1e3)
        base_rate = (b[2] - a[2]) / (b[0] - a[0])
        rate = (d[2] - c[2]) / (d[0] - c[0])
        return {
            "kind": kind,
            "healthy_kept": round(rate / base_rate, 4) if base_rate else None,
            "healthy_out_pps": {"alone": round(base_rate), "beside_faulty": round(rate)},
            # of what it received meanwhile, what it did not lose (packets still on their way
            # at the end are not lost)
            "healthy_forwarded": round(1 - (d[4] - c[4]) / max(1, d[1] - c[1]), 4),
            "missed": {"alone": b[3] - a[3], "beside_faulty": d[3] - c[3]},
            "crashes": faulty["crashes"], "phases_seen": sorted(phases),
            "phase": faulty["phase"], "message": faulty["message"],
            "drops": faulty["drops"], "detect_ms": _p(detect), "restart_ms": _p(restart),
            "restart_beyond_backoff_ms": _p(overhead),
            "file_written": os.path.exists(escape), "kills": len(kills),
            "router_alive": d[1] > c[1],
        }

    def _kill_loop(self, seconds: float, kills: list, times: int = 20, every: float = 0.25):
        """SIGKILL the faulty SFC's pool process `times` times, each once it is busy again
        and at least `every` seconds after the last (faster, and the crash policy's back-off
        rightly slows the restarts down)."""
        manager = self.node.managers["faulty"]
        end = time.monotonic() + seconds * 0.8
        killed = set()  # a killed process stays listed until its (slow) exit is seen
        while len(kills) < times and time.monotonic() < end:
            procs = [s.proc for s in list(manager.instances.values())
                     if s.proc.pid not in killed and s.proc.ctl.first_batch_cycles()]
            if procs:
                killed.add(procs[0].pid)
                kills.append(time.monotonic())
                os.kill(procs[0].pid, signal.SIGKILL)
                time.sleep(every)
            time.sleep(0.01)


def sandbox_cost(seconds: float, rounds: int = 5) -> dict:
    """FW->MON->NAT unpaced through one router and one instance: pool processes with the
    sandbox vs without, alternating in one dataplane."""
    from serpens import nfs
    from serpens.agent.process_pool import ProcessPool
    from serpens.runtime_cy.builder import AreaAllocator, build_nf
    from serpens.runtime_cy.sfc import NF, chain, compile_sfc

    from .rig import INSTANCE_CPU, Rig, flow_frames
    from .state import NF_CONFIGS

    areas = AreaAllocator()
    images = {n: build_nf(nfs.source(n), areas.allocate(), n) for n in ("fw", "mon", "nat")}
    sfc = compile_sfc(chain(*[NF(images[n], config=NF_CONFIGS[n](), name=n)
                              for n in ("fw", "mon", "nat")]))
    rig = Rig("sandbox", flow_frames(10000))
    bare = ProcessPool(rig.dataplane, 1, sandbox=False).start()
    for proc in bare.processes():
        bare.pin(proc, INSTANCE_CPU)
    sandboxed, pools = rig.pool, {"sandbox": rig.pool, "bare": bare}
    mpps = {"sandbox": [], "bare": []}
    try:
        for _ in range(rounds):
            for name, pool in pools.items():
                rig.pool = pool
                rig.start([sfc])
                try:
                    mpps[name].append(rig.run_at(0, seconds)["mpps"])
                finally:
                    rig.stop()
    finally:
        rig.pool = sandboxed
        bare.close()
        rig.close()
        for image in images.values():
            image.close()
    # This VM's interference only ever slows a run down: the best of each is its capacity
    # (the medians are reported too).
    best = {k: max(v) for k, v in mpps.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in mpps.items()}
    return {"sandbox_mpps": round(best["sandbox"], 3), "bare_mpps": round(best["bare"], 3),
            "runs_mpps": {k: [round(x, 3) for x in v] for k, v in mpps.items()},
            "median_ratio": round(med["sandbox"] / med["bare"], 4) if med["bare"] else None,
            "sandbox_cost": round(best["sandbox"] / best["bare"], 4) if best["bare"] else None}


# ---- serpensctl bench faults ------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=10.0, help="the crash loop's duration")
    p.add_argument("--kind", choices=sorted(KINDS), default="null")
    p.add_argument("--pps", type=float, default=100_000)


def _child(*argv: str) -> dict:
    """Run a part in its own process: each node is a DPDK primary, one per process."""
    out = subprocess.run([sys.executable, "-m", "serpens.bench.faults", *argv],
                         capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"bench faults {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    loop = _child("scenario", args.kind, str(args.seconds), str(args.pps), "1000000", "1")
    cost = _child("sandbox", str(min(args.seconds / 10, 1.0)))
    return {"machine": dict(machine(), stalls=loop.pop("stalls")),
            "params": {"kind": args.kind, "seconds": args.seconds, "pps": args.pps,
                       "faulty_share": 0.1, "batch_ms": 10, "window_s": 1,
                       "healthy": "fw->mon->nat", "detect": "crash to the node's report"},
            "healthy_kept": loop["healthy_kept"],
            "detect_ms": loop["detect_ms"]["p50"] if loop["detect_ms"] else None,
            "restart_ms": loop["restart_ms"]["p50"] if loop["restart_ms"] else None,
            "restart_beyond_backoff_ms": loop["restart_beyond_backoff_ms"]["p50"]
            if loop["restart_beyond_backoff_ms"] else None,
            "sandbox_cost": cost["sandbox_cost"],
            "crashes": loop["crashes"], "scenario": loop, "sandbox": cost}


def print_table(r: dict):
    s = r["scenario"]
    print(f"faults: NF '{r['params']['kind']}' crashing beside fw->mon->nat for "
          f"{r['params']['seconds']:g} s at {r['params']['pps']:g} pps, "
          f"{r['machine']['cpu']} ({r['machine']['cores']} cores)")
    print(f"{'healthy kept':>13}{'crashes':>9}{'detect ms':>11}{'restart ms':>12}"
          f"{'sandbox cost':>14}")
    print(f"{r['healthy_kept']:>13.4f}{r['crashes']:>9}{r['detect_ms'] or 0:>11.2f}"
          f"{r['restart_ms'] or 0:>12.2f}{r['sandbox_cost']:>14.4f}")
    print(f"  restart beyond the back-off: {r['restart_beyond_backoff_ms']} ms (p50)")
    print(f"  faulty SFC: {s['phase']}: {s['message']}")
    print(f"  sandbox on {r['sandbox']['sandbox_mpps']} Mpps, off {r['sandbox']['bare_mpps']} Mpps")


SERVED = "scenario: "  # marks serve()'s answers among whatever else reaches stdout


def serve(pps: float):
    """Scenarios one after another on one Bed (the tests' way: no DPDK boot or NF compile per
    scenario): each stdin line is a JSON object of Scenario.run()'s arguments; each answer
    is one stdout line, SERVED + JSON: the result, or {"error": traceback}. Ends at EOF."""
    import traceback

    bed = Bed(pps)
    try:
        for line in sys.stdin:
            try:
                sc = bed.scenario()
                try:
                    result = sc.run(**json.loads(line))
                finally:
                    sc.close()
            except Exception:
                result = {"error": traceback.format_exc()}
            sys.stdout.write(SERVED + json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        bed.close()


if __name__ == "__main__":  # the parts run in their own processes (see _child)
    part, *rest = sys.argv[1:]
    if part == "scenario":
        kind, seconds, pps, restarts, window = rest
        bed = Bed(float(pps))
        try:
            sc = bed.scenario()
            try:
                result = sc.run(kind, float(seconds), int(restarts), float(window))
            finally:
                sc.close()
        finally:
            bed.close()
        result["stalls"] = cpu_stalls()  # the machine's, with the node gone (TSC known)
        print(json.dumps(result))
    elif part == "serve":
        serve(float(rest[0]))
    else:
        print(json.dumps(sandbox_cost(float(rest[0]))))
