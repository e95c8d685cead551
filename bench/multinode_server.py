"""One server of `bench multinode` (python -m serpens.bench.multinode_server SPEC_JSON), run
in its own network namespace: a node (bench/rig.py: its own DPDK primary, router on CPU 1,
instance on CPU 0) whose router takes VXLAN from the gateway on its underlay port and runs
FW->MON->NAT. The SFC's packets leave on the server's own output port (a net_null port, as
the single node's sink: the paper's servers send out, the gateway only steers in) until the
`return` command makes its output the gateway (encapsulated back over the underlay).

Prints one JSON line when its instance runs, then answers commands, one a line on stdin,
each with one JSON line:
- `counts`: the output port's tx and the router's drops, with the (CLOCK_MONOTONIC) time they
  were read (a read this thread was preempted in the middle of is read again);
- `log N`: record the next N packets sent, their arrival time taken from the stamp the
  gateway's traffic driver wrote in the payload (`stamp_off`; one TSC on one host);
- `take`: those records (hex);
- `return`: the SFC's output is the gateway from now on;
- moving flows (bench/migrate.py, agent/peer_moves.py's steps, the other server's state
  files in place of Peer messages): `prepare JSON` ({gateway_sfc}: read the per-flow tables'
  keys for a move in waves, Peer.MoveFlows prepare), `move JSON` ({slots (null: all, or what
  no wave took), gateway_sfc, marker (0: no wait), target_state, everything}: one
  Peer.MoveFlows transfer, _move()).
When stdin closes: its router's counters as a last JSON line."""
from __future__ import annotations

import json
import os
import sys
import time

from serpens.runtime_cy import _dataplane as dp

from serpens.agent import peer_moves
from serpens.agent.state_manager import StateManager

from .rig import Rig, yield_to_instances
from .sfc import fw_mon_nat


def _counts(router, sink: int) -> dict:
    for _ in range(100):
        t0 = time.perf_counter()
        st = router.stats()
        t1 = time.perf_counter()
        if t1 - t0 < 100e-6:
            break
    return {"tx": st["ports"][sink]["tx"], "dropped": st["dropped"], "t": (t0 + t1) / 2}


def _tables(rig):
    state = StateManager(rig.state.name)
    return state, peer_moves.per_flow_tables(state, {ns: ns for ns, _ in state.tables()})


_snapshot: list = []   # the prepared move's peer_moves.Snapshot (Peer.MoveFlows prepare)
_open = peer_moves.OpenTables()   # as the agent's FlowMoves keeps them


def _opening(rig, sid, arg) -> dict:
    """This server's tables and the target's opened and mapped whole before a move (as the
    agents keep them open: OpenTables), so no move pays for that while flows wait."""
    state, tables = _tables(rig)
    for _, namespace, name, info in tables:
        _open.get(json.loads(arg)["target_state"], namespace, name, info)
        _open.get(rig.state.name, namespace, name)
    return {"tables": len(tables)}


def _prepare(rig, sid, arg) -> dict:
    """The snapshot (Peer.MoveFlows prepare)."""
    t0 = time.monotonic()
    state, tables = _tables(rig)
    for snap in _snapshot:
        snap.close()
    _snapshot[:] = [peer_moves.Snapshot(state, tables, json.loads(arg)["gateway_sfc"])]
    return {"entries": _snapshot[0].entries, "ms": (time.monotonic() - t0) * 1000}


def _move(rig, sid, arg) -> dict:
    """Peer.MoveFlows' transfer in one call, as the source's agent makes it (agent/
    peer_moves.py FlowMoves): wait for the gateway's marker and the SFC's packets before it,
    read the moving flows' entries (the prepared snapshot's, or the tables whole), put them
    into the target's tables (its state directory: the same shared files its agent would
    write), then delete them here. With `everything`: all of this server's per-flow state
    goes (stop-and-copy), and only the entries of the flows in `slots` are deleted here."""
    req = json.loads(arg)
    t0 = time.monotonic()
    waited = 0.0
    if req["marker"]:
        waited = peer_moves.wait_quiet(rig.router, sid, req["marker"], t0 + 10.0)
    slots = None if req["slots"] is None else sorted(set(req["slots"]))
    state, snap = StateManager(rig.state.name), None
    if req.get("everything"):
        _, tables = _tables(rig)
        moving = peer_moves.export(state, tables, None, req["gateway_sfc"], _open)
    elif _snapshot and _snapshot[0].gateway_sfc == req["gateway_sfc"]:
        snap = _snapshot[0]
        moving = snap.taking(slots)
    else:
        _, tables = _tables(rig)
        moving = peer_moves.export(state, tables, slots, req["gateway_sfc"])
    copied = sum(peer_moves.insert(req["target_state"], namespace, name, info, keys, values,
                                   tables=_open)
                 for _, namespace, name, info, keys, values in moving)
    if req.get("everything"):
        moving = [(nf, ns, name, info,
                   peer_moves.select(req["gateway_sfc"], info, keys, values, slots)[0], b"")
                  for nf, ns, name, info, keys, values in moving]
    deleted = sum(peer_moves.delete(state, namespace, name, keys, _open)
                  for _, namespace, name, _, keys, _ in moving)
    if snap is not None and slots is None:    # the last wave
        _snapshot.pop().close()
    elif snap is not None:
        snap.took(slots)
    return {"entries": deleted, "copied": copied, "wait_ms": waited * 1000,
            "ms": (time.monotonic() - t0) * 1000}


MOVES = {"open": _opening, "prepare": _prepare, "move": _move}


def serve(spec: dict):
    sink_name = f"net_null_mn{spec['name']}out"
    rig = Rig(f"mn{spec['name']}", None, vdevs=(spec["underlay"], f"{sink_name},no-rx=1"),
              stall_us=spec.get("stall_us"))
    images = []
    try:
        mp = rig.dataplane.mempool
        port = dp.port_open(spec["underlay"].split(",", 1)[0], mp)
        sink = dp.port_open(sink_name, mp)
        sfc, images = fw_mon_nat()
        rig.start([sfc], ports=(port, sink))
        yield_to_instances()
        router, sid = rig.router, rig.sfc_ids[0]
        router.pace(port, 0)  # an underlay, not a paced source
        router.set_underlay(port, spec["ip"], spec["mac"], spec.get("mtu", 1500))
        router.set_gateway(spec["gateway_ip"], spec["gateway_mac"])
        router.set_sfc_vxlan(sid, spec["tag"], spec.get("vni", 0), to_gateway=False)
        print(json.dumps({"ready": spec["name"], "state_dir": rig.state.name}), flush=True)

        def waiting():
            """bench migrate: a move's call wakes this thread at once and its work runs at
            the instances' priority, as an agent's would on its own core. Niced on the
            instances' CPU, a wake-up waited for their slice (~1 ms a call), and the work
            did not spare them: once the scheduler picks a niced thread it keeps the CPU
            until the next tick (4 ms at this kernel's HZ=250), so a prepare of 35k keys
            stopped the source's instance for 2-3 ms. Its steps are short instead
            (peer_moves.Snapshot pauses between them)."""
            if spec.get("moves_at_once"):
                os.setpriority(os.PRIO_PROCESS, 0, 0)
        waiting()
        for line in sys.stdin:  # until the gateway's side closes it
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "counts":
                out = _counts(router, sink)
            elif cmd == "log":
                router.log_start(int(arg), stamp_off=spec["stamp_off"])
                out = {"log": int(arg)}
            elif cmd == "take":
                out = {"recs": router.log_take().hex()}
            elif cmd in MOVES:
                if not spec.get("moves_at_once"):
                    yield_to_instances()
                try:
                    out = MOVES[cmd](rig, sid, arg)
                finally:
                    waiting()
            elif cmd == "return":  # between runs, at the idle pace: a frame may be dropped
                router.set_sfc_vxlan(sid, spec["tag"], spec.get("vni", 0), to_gateway=True)
                out = {"return": True}
            else:
                out = {"error": f"unknown command {cmd!r}"}
            print(json.dumps(out), flush=True)
        st = router.stats()
        print(json.dumps(dict({k: st[k] for k in ("rx", "tx", "dropped", "tx_failed", "sleeps",
                                                  "vxlan")}, local_tx=st["ports"][sink]["tx"],
                              nf_dropped=st["sfcs"][sid]["dropped"],
                              drops=st["sfcs"][sid]["drops"])),
              flush=True)
        rig.stop()
        dp.port_close(port)
        dp.port_close(sink)
    finally:
        rig.close()
        for image in images:
            image.close()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
