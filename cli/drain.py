"""serpensctl's drain, undrain and move commands (issue 14): the operator's side of moving
SFCs between servers with their flows (controller/drain.py does the moving).

    serpensctl drain node NAME [--wait] [--wait-timeout S]   # cordon, move everything off
    serpensctl undrain node NAME                             # take placements again
    serpensctl move sfc NAME --to NODE [--wait]              # every flow of the SFC to NODE

`--wait` prints a line a second (what the node still runs, each SFC's phase and message)
and ends when the node reports running nothing (drain) or the move is done (the SFC's status
counts it); exit 1 if that has not happened within --wait-timeout, if an SFC has nowhere to
go (every other node cordoned: it stays, its status says so), or if a move is done but some
flows did not move with their state (a source lost mid-move: the status says what
happened). A move is one-off: an SFC spread over several servers (placement.spread) spreads
again afterwards, with new flows only.
"""
from __future__ import annotations

import sys
import time

from serpens.cli.control import EXIT_FAILED, WAIT, _run, sfc_nodes


def register(sub) -> None:
    p = sub.add_parser("drain", help="cordon a node and move every SFC off it, with its flows")
    p.add_argument("kind", choices=("node",))
    p.add_argument("name")
    p.add_argument("--wait", action="store_true",
                   help="until the node runs nothing, showing progress")
    p.add_argument("--wait-timeout", type=WAIT, default=300.0)
    p.set_defaults(func=_run(_drain))
    p = sub.add_parser("undrain", help="let a drained node take placements again")
    p.add_argument("kind", choices=("node",))
    p.add_argument("name")
    p.set_defaults(func=_run(_undrain))
    p = sub.add_parser("move", help="move all of an SFC's flows, with their state, to a node")
    p.add_argument("kind", choices=("sfc",))
    p.add_argument("name")
    p.add_argument("--to", required=True, metavar="NODE")
    p.add_argument("--wait", action="store_true",
                   help="until NODE alone serves it, showing progress")
    p.add_argument("--wait-timeout", type=WAIT, default=300.0)
    p.set_defaults(func=_run(_move))


def _drain(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    reply = stub.DrainNode(pb.DrainNodeRequest(node=args.name), timeout=args.timeout)
    print(f"node/{reply.node} cordoned" + (f"; runs {', '.join(reply.sfcs)}" if reply.sfcs
                                          else "; runs nothing"))
    if reply.sfcs and not _others_take_placements(stub, args, reply.node):
        print(f"serpensctl: warning: no other node takes placements (all cordoned or none "
              f"registered): {', '.join(reply.sfcs)} stay on node/{reply.node} (Degraded) "
              "until one does", file=sys.stderr)
    if not args.wait:
        return 0
    stays: set[str] = set()   # SFCs served from the node's own ports: they cannot move
    stuck: dict[str, str] = {}  # routed SFCs with nowhere to go -> why (their status's word)
    lost = []                   # the node went away meanwhile: nothing is left to wait for

    def drained():
        running = _node_sfcs(stub, args, args.name)
        if running is None:
            lost.append(True)
            return True
        for name in running:
            if name not in stays and not _routed(stub, args, name):
                stays.add(name)
                print(f"  sfc/{name} stays: served from the node's own ports, not through "
                      "the gateway (delete it, or apply it elsewhere)")
        for name in set(running) - stays:
            why = _stuck(stub, args, name)
            if why and name not in stuck:
                print(f"  sfc/{name} stays: {why}")
            if why:
                stuck[name] = why
            else:
                stuck.pop(name, None)
        return set(running) <= stays | set(stuck)

    def finished():
        if lost:
            return f"node/{args.name} is not registered any more"
        if stuck:
            return f"node/{args.name} still runs " + ", ".join(sorted(stays | set(stuck)))
        return f"node/{args.name} drained: it runs " + \
            ("nothing" if not stays else "only " + ", ".join(sorted(stays)))
    code = _until(stub, args, drained, lambda: _drain_progress(stub, args, args.name),
                  finished)
    if code == 0 and lost:
        print(f"serpensctl: node/{args.name} not drained: it was lost (its agent stopped "
              "answering); the flows it served went with it, its SFCs start elsewhere "
              "(from their checkpoints, if they have any)", file=sys.stderr)
        return EXIT_FAILED
    if code == 0 and stuck:
        print(f"serpensctl: node/{args.name} not drained: " + "; ".join(
            f"sfc/{n}: {why}" for n, why in sorted(stuck.items())), file=sys.stderr)
        return EXIT_FAILED
    return code


def _stuck(stub, args, sfc: str) -> str:
    """Why the SFC cannot leave its cordoned servers (no other node can take it), "" none."""
    import grpc

    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    try:
        return stub.GetSFC(pb.GetSFCRequest(name=sfc), timeout=args.timeout).status.stuck
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return ""
        raise


def _routed(stub, args, sfc: str) -> bool:
    """The SFC is served through the gateway (has a route), or is gone (it will stop)."""
    import grpc

    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    try:
        return stub.GetSFC(pb.GetSFCRequest(name=sfc), timeout=args.timeout).HasField("route")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return True
        raise


def _undrain(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    reply = stub.UndrainNode(pb.UndrainNodeRequest(node=args.name), timeout=args.timeout)
    print(f"node/{reply.node} takes placements again")
    return 0


def _move(stub, args) -> int:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    before = stub.GetSFC(pb.GetSFCRequest(name=args.name), timeout=args.timeout).status.moves
    reply = stub.MoveSFC(pb.MoveSFCRequest(sfc=args.name, node=args.to), timeout=args.timeout)
    sources = ", ".join(getattr(reply, "from")) or "-"   # (`from` is a Python keyword)
    print(f"sfc/{reply.sfc} moving to {reply.node} (from {sources})")
    if not args.wait:
        return 0

    outcome = []   # the status that counted the move

    def moved():  # (an SFC spread over servers spreads again, new flows only, once moved)
        st = stub.GetSFC(pb.GetSFCRequest(name=args.name), timeout=args.timeout).status
        if st.moves > before:
            outcome.append(st)
        return st.moves > before

    def progress():
        st = stub.GetSFC(pb.GetSFCRequest(name=args.name), timeout=args.timeout).status
        return f"sfc/{args.name}: {st.phase} on {sfc_nodes(st) or '-'}" + \
            (f" - {st.message}" if st.message else "")
    code = _until(stub, args, moved, progress,
                  lambda: f"sfc/{args.name} " + ("on" if outcome[-1].move_error else
                                                 "moved to") + f" {args.to}")
    if code == 0 and outcome[-1].move_error:
        print(f"serpensctl: sfc/{args.name}: not every flow moved: {outcome[-1].move_error}",
              file=sys.stderr)
        return EXIT_FAILED
    return code


def _others_take_placements(stub, args, node: str) -> bool:
    """Whether a registered node other than `node` is not cordoned."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    return any(n.name != node and not n.cordoned
               for n in stub.ListNodes(pb.ListNodesRequest(), timeout=args.timeout).nodes)


def _node_sfcs(stub, args, node: str) -> list[str] | None:
    """The SFCs `node` reported running at its last report (None: not registered)."""
    from serpens.cli.status import node_records
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    nodes = [n for n in stub.ListNodes(pb.ListNodesRequest(), timeout=args.timeout).nodes
             if n.name == node]
    records = node_records(nodes)
    return sorted(records[node].load.sfcs) if node in records else None


def _drain_progress(stub, args, node: str) -> str:
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    running = _node_sfcs(stub, args, node)
    if running is None:
        return f"node/{node}: not registered"
    sfcs = {s.name: s for s in stub.ListSFCs(pb.ListSFCsRequest(), timeout=args.timeout).sfcs}
    parts = []
    for name in running:
        st = sfcs[name].status if name in sfcs else None
        parts.append(f"{name} ({st.phase} on {sfc_nodes(st) or '-'}"
                     f"{' - ' + st.message if st.message else ''})" if st else name)
    return f"node/{node} runs {len(running)}: " + "; ".join(parts)


def _until(stub, args, done, progress, finished) -> int:
    """Poll `done()` until true (0: prints `finished()`) or --wait-timeout (1), printing
    `progress()` a second."""
    t0 = last = time.monotonic()
    while not done():
        now = time.monotonic()
        if now - t0 > args.wait_timeout:
            print(f"serpensctl: not done after {args.wait_timeout:g} s: {progress()}",
                  file=sys.stderr)
            return EXIT_FAILED
        if now - last >= 1.0:
            last = now
            print(f"  {progress()} ({now - t0:.0f} s)", flush=True)
        time.sleep(0.2)
    print(f"{finished()} ({time.monotonic() - t0:.1f} s)")
    return 0
