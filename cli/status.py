"""serpensctl status / top: what the cluster runs and how fast, from the controller's API.

    serpensctl status                 # SFCs (phase, node, instances, rates) and nodes, once
    serpensctl top [--seconds N]      # the same, refreshed every second (Ctrl-C ends it)

Rates are the ones agents report with their node record (packets/s over their last report
period, usually 1 s). Exit codes as serpensctl's: 3 when the controller cannot be reached.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict

import grpc

from serpens.common.argtypes import number

EXIT_UNREACHABLE = 3


def register(sub) -> None:
    p = sub.add_parser("status", help="the cluster's SFCs and nodes, with their rates")
    p.set_defaults(func=lambda args: _with_target(args, lambda t: show(t, timeout=args.timeout)))
    p = sub.add_parser("top", help="status, refreshed every second")
    p.add_argument("--seconds", type=number(float, 0), default=0,
                   help="stop after this long (0: never)")
    p.set_defaults(func=lambda args: _with_target(
        args, lambda t: top(t, args.seconds, timeout=args.timeout)))


def _with_target(args, run) -> int:
    from serpens.cli.control import EXIT_USAGE, target
    to = target(args)
    return EXIT_USAGE if to is None else run(to)


def snapshot(api, timeout: float = 5.0) -> dict:
    """{"sfcs": [...], "nodes": [...]} as plain data (what status prints); `api` is a
    cli.config.Target."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    with api.channel() as channel:
        stub = serpens_pb2_grpc.SerpensStub(channel)
        sfcs = stub.ListSFCs(pb.ListSFCsRequest(), timeout=timeout).sfcs
        nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=timeout).nodes
    records = node_records(nodes)
    loads = {(node, name): load for node, rec in records.items()
             for name, load in rec.load.sfcs.items()}
    from serpens.cli.control import sfc_nodes

    def rate(s, k):  # an SFC served by several nodes: the sum of theirs
        where = s.status.nodes or [s.status.node]
        return sum(getattr(loads.get((node, s.name)), k, 0) for node in where)
    return {
        "sfcs": [{"name": s.name, "phase": s.status.phase, "node": sfc_nodes(s.status),
                  "generation": s.generation, "replicas": s.scale.replicas,
                  "instances": s.status.instances, "message": s.status.message,
                  **{k: rate(s, k) for k in ("in_pps", "out_pps")}} for s in sfcs],
        "nodes": [{"name": name, "address": rec.address, "sfcs": sorted(rec.load.sfcs),
                   "ports": {port: asdict(load) for port, load in rec.load.ports.items()},
                   "reported_at": rec.reported_at}
                  for name, rec in sorted(records.items())]}


def node_records(nodes) -> dict:
    """{name: NodeRecord} of ListNodes' nodes; one this version cannot read is left out."""
    from serpens.common.records import MalformedRecord, NodeRecord
    out = {}
    for n in nodes:
        try:
            out[n.name] = NodeRecord.decode(n.record_json, n.name)
        except MalformedRecord as e:
            print(f"serpensctl: node {n.name} left out: its record is malformed ({e})",
                  file=sys.stderr)
    return out


def render(snap: dict, now: float | None = None) -> str:
    """The tables status prints; a node's REPORTED is how long ago (by this machine's clock)
    its agent last wrote its record: its rates are of then (a dead agent's stay until its
    lease ends)."""
    now = time.time() if now is None else now
    rows = [("SFC", "PHASE", "NODE", "GEN", "INSTANCES", "IN", "OUT", "MESSAGE")]
    rows += [(s["name"], s["phase"], s["node"] or "-", str(s["generation"]),
              f"{s['instances']}/{s['replicas']}", _pps(s["in_pps"]), _pps(s["out_pps"]),
              s["message"]) for s in snap["sfcs"]]
    out = [_table(rows) if snap["sfcs"] else "no SFCs applied"]
    rows = [("NODE", "ADDRESS", "REPORTED", "SFCS", "PORTS (rx/tx)")]
    rows += [(n["name"], n["address"], _ago(now - n["reported_at"]) if n["reported_at"] else "-",
              ",".join(n["sfcs"]) or "-",
              "  ".join(f"{p} {_pps(c['rx_pps'])}/{_pps(c['tx_pps'])}"
                        for p, c in sorted(n["ports"].items())))
             for n in snap["nodes"]]
    out.append(_table(rows) if snap["nodes"] else "no nodes registered")
    return "\n\n".join(out)


def _ago(seconds: float) -> str:
    return "now" if seconds < 1 else f"{seconds:.0f}s ago"


def show(api, timeout: float = 5.0) -> int:
    try:
        print(render(snapshot(api, timeout)))
    except grpc.RpcError as e:
        print(f"serpensctl: {e.code().name}: {e.details()} ({api.server})", file=sys.stderr)
        return EXIT_UNREACHABLE
    return 0


def top(api, seconds: float, timeout: float = 5.0) -> int:
    end = time.monotonic() + seconds if seconds else None
    tty = sys.stdout.isatty()
    while end is None or time.monotonic() < end:
        try:
            text = render(snapshot(api, timeout))
        except grpc.RpcError as e:
            text = f"controller {api.server}: {e.code().name}: {e.details()}; retrying"
        if tty:
            print("\033[H\033[J", end="")
        print(time.strftime("%H:%M:%S"), api.server)
        print(text, flush=True)
        if not tty:
            print()
        time.sleep(1.0)
    return 0


def _pps(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
