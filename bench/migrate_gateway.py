"""The gateway side of `bench migrate` (python -m serpens.bench.migrate_gateway SPEC_JSON), run
in the gateway's network namespace as its own DPDK primary: the gateway and its traffic driver
(bench/native/gwdrive.h: paced arrivals stamped with their time and a sequence number, the
frames back from the servers read off the egress port into a latency log) on the gateway's
core, two servers (bench/multinode_server.py, FW->MON->NAT each) returning the SFC's output
through the gateway. At a steady load, server A's flows (every flow in the Maglev slots A owns:
half of them) move, each time with their per-flow entries of FW, MON and NAT.
Each time B serves every flow (A's were moved to it first, unmeasured) and half of them, those
in A's slots, move from B to A (a scale-out of a loaded server):
- stop_and_copy first (the migration-based systems the paper compares against): every flow
  of the source stops (the gateway holds them all, in two holds: the moving flows and the
  others, a buffer as long as the pause), all of its per-flow state is copied to the
  target, the moving flows' entries are deleted at the source, the moving flows are released
  to the target and the others back to the source;
- serpens then, in waves (controller/moves.py): B reads its tables' keys once; then for each
  wave of Maglev slots the gateway holds those flows (gateway.h "Moving flows") and sends B
  its marker; B waits until it has none of their packets, looks their entries up, puts them
  into A's tables and deletes them; the gateway re-pins them to A and sends what it held
  first. The source's other flows never wait.
Each flow's sequence numbers read at the egress give reordered flows; the driver's counts,
lost packets; latency before and during the move from the stamps. Prints one JSON line."""
from __future__ import annotations

import json
import os
import struct
import sys
import time

from serpens.agent.dataplane import Dataplane, DataplaneConfig
from serpens.runtime_cy import _dataplane as dp

from serpens.controller.moves import WAVE_SLOTS, waves

from .common import cpu_stalls, percentiles
from .multinode_gateway import Multi, Servers, stamped_frames
from .rig import INSTANCE_CPU, ROUTER_CPU, yield_to_instances

LOSS_LIMIT = 0.001
PAUSE_FACTOR = 3.0          # a packet this many times the p99 before (at least 1 ms): paused


class Mover:
    def __init__(self, multi: Multi, servers: Servers, spec: dict, flows: int):
        self.multi, self.servers, self.spec, self.flows = multi, servers, spec, flows
        self.gw, self.driver = multi.gw, multi.driver
        self.sfc = 0
        self.ips = {s["name"]: s["ip"] for s in spec["servers"]}
        self.procs = servers.procs

    def ask(self, name: str, cmd: str) -> dict:
        p = self.procs[name]
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        from .multinode_gateway import _json_line
        out = _json_line(p, 60.0)
        if "error" in out:
            raise RuntimeError(f"server {name}: {out['error']}")
        return out

    def slots_of(self, name: str) -> list[int]:
        index = self.gw.stats()["servers"][self.ips[name]]["index"]
        return [s for s, server in enumerate(self.gw.route_table(self.sfc)) if server == index]

    def _wait_release(self, move: int) -> dict:
        deadline = time.monotonic() + 10
        while self.gw.move_state(move) != "done":
            if time.monotonic() > deadline:
                raise RuntimeError(f"move {move}: the gateway did not release in 10 s")
            time.sleep(0.0002)
        return self.gw.finish_move(move)

    def serpens(self, source: str, target: str, slots: list[int]) -> dict:
        """The flows of `source` in `slots` move as controller/moves.py moves them: the
        source reads its tables' keys first (prepare), then each wave of --wave-slots of
        those slots is held, quieted, copied, deleted and released on its own, so a flow
        waits for its own wave's entries only and the source's other flows never wait."""
        steps = {"hold": 0.0, "move": 0.0, "release": 0.0}
        t = time.monotonic()
        prep = self.ask(source, "prepare " + json.dumps({"gateway_sfc": self.sfc}))
        steps["prepare"] = round((time.monotonic() - t) * 1e3, 3)
        total = {"flows": 0, "held": 0, "held_dropped": 0}
        plan = waves(slots, self.spec.get("wave_slots", WAVE_SLOTS))
        entries, waited, longest, inside = 0, 0.0, 0.0, 0.0
        for wave in plan:
            hold_at = t = time.monotonic()

            def step(name):
                nonlocal t
                now = time.monotonic()
                steps[name] += (now - t) * 1e3
                t = now
            move = self.gw.hold_flows(self.sfc, self.ips[source], self.ips[target], wave)
            step("hold")
            moved = self._move(source, target, move, wave)
            step("move")
            self.gw.release_flows(move, True)   # the driver polls the gateway: wait for it
            longest = max(longest, (time.monotonic() - hold_at) * 1e3)
            c = self._wait_release(move)
            step("release")
            for k in total:
                total[k] += c[k]
            entries += moved["entries"]
            waited += moved["wait_ms"]
            inside += moved["ms"]
        return dict(total, entries=entries, prepared=prep["entries"], waves=len(plan),
                    wait_ms=round(waited, 3), source_ms=round(inside, 3),
                    longest_hold_ms=round(longest, 3),
                    steps_ms={k: round(v, 3) for k, v in steps.items()})

    def _move(self, source: str, target: str, move: int, slots, everything=False) -> dict:
        return self.ask(source, "move " + json.dumps(
            {"slots": slots, "gateway_sfc": self.sfc, "marker": self.gw.move_marker(move),
             "target_state": self.servers.state_dirs[target], "everything": everything}))

    def stop_and_copy(self, source: str, target: str, slots: list[int]) -> dict:
        """The flows of `source` in `slots` move the way a migration-based system moves
        them: every flow of the source stops (the gateway holds all of them: a buffer as long
        as the pause, so the baseline loses nothing), all of its per-flow state is copied,
        the moving flows' entries are deleted here, and then the moving flows go on at the
        target and the others (none when the source serves only the moving flows) where
        they were."""
        rest = sorted(set(range(dp.GW_MAGLEV)) - set(slots))
        moving = self.gw.hold_flows(self.sfc, self.ips[source], self.ips[target], slots)
        staying = self.gw.hold_flows(self.sfc, self.ips[source], self.ips[target], rest)
        # (the marker of `staying` goes after the moving flows' own)
        moved = self._move(source, target, staying, slots, everything=True)
        self.gw.release_flows(moving, True)
        self.gw.release_flows(staying, False)
        c = self._wait_release(moving)
        kept = self._wait_release(staying)
        return dict(c, held=c["held"] + kept["held"],
                    held_dropped=c["held_dropped"] + kept["held_dropped"],
                    entries=moved["entries"], copied=moved["copied"])

    def open_tables(self, source: str, target: str):
        """Both servers' tables mapped whole in the source's process before the load (as
        the agents keep them open): neither approach pays for it while flows wait."""
        self.ask(source, "open " + json.dumps({"target_state": self.servers.state_dirs[target]}))

    def measure(self, how, pps: float, source: str, target: str, slots: list[int]) -> dict:
        """One move under load `pps`: the bench's figures for it. The latency log's room
        (hundreds of MB, written through) is made before the load and the log is read after
        it: on the instances' CPU either would take it from them under load."""
        hz = dp.tsc_hz()
        self.open_tables(source, target)
        before_s, after_s = self.spec["before_s"], self.spec["after_s"]
        records = int(pps * (before_s + after_s + 5.0)) + 100000
        self.driver.log_reserve(records)
        s0, m0, r0 = self.driver.counts()[:3]
        w0 = time.monotonic()
        self.driver.pace(pps)
        time.sleep(self.spec["warmup"])
        self.driver.log_start(records)
        time.sleep(before_s)
        t0 = dp.rdtsc()
        detail = how(source, target, slots)
        t1 = dp.rdtsc()
        time.sleep(after_s)
        te = dp.rdtsc()
        s_end, m_end = self.driver.counts()[:2]
        offered = ((s_end - s0) + (m_end - m0)) / (time.monotonic() - w0)
        self.driver.pace(1)
        time.sleep(0.5)                      # everything in flight comes back
        recs = self.driver.log_take()
        s1, m1, r1 = self.driver.counts()[:3]
        f = figures(recs, self.flows, t0, t1, te, hz)
        # lost by the move: arrived from its start on (a hiccup before it is not its doing;
        # the run's total is lost_packets_run)
        f["lost_packets"] = f["lost_by_arrival"]["during"] + f["lost_by_arrival"]["after"]
        return dict(f,
                    move_ms=round((t1 - t0) / hz * 1e3, 3),
                    # (max: a frame of the idle pace in flight when s0 was read)
                    lost_packets_run=max(0, (s1 - s0) - (r1 - r0)), missed=m1 - m0,
                    offered_mpps=round(offered / 1e6, 4),
                    flows=detail["flows"], entries=detail["entries"], held=detail["held"],
                    held_dropped=detail["held_dropped"],
                    detail={k: v for k, v in detail.items()
                            if k not in ("flows", "entries", "held", "held_dropped")})


def figures(recs: bytes, flows: int, t0: int, t1: int, te: int, hz: float) -> dict:
    """Latency before and during [t0, t1] (arrival times), reordered and paused flows (te:
    the load's end).
    Sequence numbers follow arrival order, so the packets that arrived during the move and
    never came out are those between the last one seen that arrived before it and the first
    one after it: each makes its flow paused, and counts in during_p99_us as delayed until
    the load's end, te (a lower bound: a lost packet is later than any). Lost packets of the
    measured run are split by when they arrived (before, during, after the move)."""
    us = hz / 1e6
    before, during, last, reordered, slow, seen = [], [], {}, set(), [], set()
    last_before, first_after, lo, hi = -1, None, None, -1
    for rx, tx, _, seq in struct.iter_unpack(dp.LAT_REC_FORMAT, recs):
        flow = seq % flows
        seen.add(seq)
        lo, hi = seq if lo is None else min(lo, seq), max(hi, seq)
        if seq < last.get(flow, -1):
            reordered.add(flow)
        last[flow] = max(seq, last.get(flow, -1))
        lat = (tx - rx) / us
        if rx < t0:
            before.append(lat)
            last_before = max(last_before, seq)
        elif rx <= t1:
            during.append(lat)
            slow.append((lat, flow))
        else:
            first_after = seq if first_after is None else min(first_after, seq)
    p99_before = percentiles(before, 99)["p99"]
    p99_delivered = percentiles(during, 99)["p99"]   # (before the lost join them below)
    max_delivered = round(max(during), 1) if during else None
    threshold = max(1000.0, PAUSE_FACTOR * (p99_before or 0))
    after = hi if first_after is None else first_after
    gone = [q for q in range(last_before + 1, after) if q not in seen]
    span = max(1, after - last_before)
    for q in gone:   # arrived about here in [t0, t1]
        during.append((te - (t0 + (t1 - t0) * (q - last_before) / span)) / us)
    paused = {f for lat, f in slow if lat > threshold} | {q % flows for q in gone}
    lost = lambda a, b: sum(1 for q in range(a, b) if q not in seen)  # noqa: E731
    return {"before_p99_us": p99_before, "during_p99_us": percentiles(during, 99)["p99"],
            "during_p99_delivered_us": p99_delivered, "during_max_delivered_us": max_delivered,
            "reordered_flows": len(reordered), "paused_flows_max": len(paused),
            "lost_by_arrival": {"before": 0 if lo is None else lost(lo, last_before + 1),
                                "during": len(gone), "after": lost(after, hi + 1)},
            "paused_threshold_us": round(threshold, 1),
            "samples": {"before": len(before), "during": len(during) - len(gone)}}


SUMMED = ("lost_packets", "lost_packets_run", "reordered_flows", "held_dropped", "missed")


def summary(trials: list[dict]) -> dict:
    """One approach's figures over its trials: the counts of loss and disorder summed (each
    must be 0), every other figure the median trial's, chosen by during_p99_us (this VM
    stops a vCPU for 1-5 ms several times a second: one such stop inside a move's window
    decides that trial's p99); each trial's own under `trials`."""
    ranked = sorted(trials, key=lambda t: t["during_p99_us"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    for k in SUMMED:
        out[k] = sum(t[k] for t in trials)
    out["trials"] = [{k: t[k] for k in ("move_ms", "lost_packets", "reordered_flows",
                                        "during_p99_us", "during_max_delivered_us",
                                        "before_p99_us")} for t in trials]
    return out


def sustained_pps(multi: Multi, wanted: float, seconds: float) -> tuple[float, dict]:
    """The highest of wanted, wanted/2, ... this VM carries through the servers with under
    LOSS_LIMIT loss (the load the moves run at)."""
    pps, trial = wanted, None
    for _ in range(6):
        trial = multi.run_at(pps, seconds)
        if trial["lost"] <= LOSS_LIMIT:
            return pps, trial
        pps /= 2
    return pps, trial


def run(spec: dict) -> dict:
    frames = stamped_frames(spec["flows"])
    tmp = spec["dir"]
    vdevs = tuple(s["gw_vdev"] for s in spec["servers"])
    dataplane = Dataplane(DataplaneConfig(
        file_prefix=f"serpens-bench-migrate-{os.getpid()}", mbufs=131071, cpus="0-1",
        router_cpus=str(spec.get("gateway_cpu", ROUTER_CPU)), state_dir=tmp,
        vdevs=vdevs)).start()
    os.sched_setaffinity(0, {INSTANCE_CPU})
    under = [dp.port_open(s["gw_vdev"].split(",", 1)[0], dataplane.mempool)
             for s in spec["servers"]]
    servers = Servers(spec)
    yield_to_instances()   # (the servers' processes started at the priority they keep)
    multi = None
    out = {}
    try:
        servers.wait_ready()
        multi = Multi(dataplane, spec, frames, under, servers)
        multi.gw.set_mempool(dataplane.mempool)
        multi.connected()
        multi.to_gateway()
        out["stalls"] = cpu_stalls()
        carried, trial = sustained_pps(multi, spec["pps"], spec["seconds"])
        # moves run below what a short trial carried: on a shared VM a load at the edge
        # collapses into seconds of queueing now and then, whatever moves
        pps = carried if carried == spec["pps"] else carried * spec.get("headroom", 1.0)
        out["carried_pps"], out["offered_pps"], out["load_trial"] = carried, pps, trial
        mover = Mover(multi, servers, spec, spec["flows"])
        a, b = (s["name"] for s in spec["servers"])
        slots = mover.slots_of(a)
        out["slots"] = len(slots)
        # Both move half of the flows of a server that serves all of them (a scale-out),
        # the same half (A's slots), from B to A, in turns, `trials` times each. Between
        # them, unmeasured, the flows go back to B (a move of A's every flow).
        runs = {"stop_and_copy": [], "serpens": []}
        for _ in range(spec.get("trials", 1)):
            for name, how in (("stop_and_copy", mover.stop_and_copy),
                              ("serpens", mover.serpens)):
                mover.serpens(a, b, slots)
                runs[name].append(mover.measure(how, pps, b, a, slots))
        out.update({name: summary(trials) for name, trials in runs.items()})
        st = multi.gw.stats()
        out["gateway"] = {"sfc": st["sfcs"][0], "tx_failed": st["tx_failed"],
                          "drops": st["drops"],
                          "tx_failed_by_port": dict(
                              {f"to {s['name']}": st["ports"][port]["tx_failed"]
                               for port, s in zip(multi.under, spec["servers"])},
                              egress=st["ports"][multi.outside]["tx_failed"])}
    finally:
        if multi is not None:
            multi.close()
        for port in under:
            dp.port_close(port)
        out["servers"] = servers.stop()
        dataplane.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
