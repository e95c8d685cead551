"""A server leaving an SFC without losing its flows (issue 14 items 1 and 3): drain, move,
scale-in across servers.

A routed SFC's server leaves its placement when its node is cordoned (Serpens.DrainNode:
`cordons/<node>`), when a move asks for another node (Serpens.MoveSFC: `moves/<sfc>`), or when
the SFC needs fewer servers (scale-in, the autoscaler: the servers that joined last leave
first). Only a lost node (lease gone, not answering) drops its flows; any other leaving
server hands them over, one leaving server at a time, in this order (the reconciler's
`_reconcile_routed` calls `hand_over` once the servers staying run the SFC and are in its
route):

1. `move_flows` (controller/moves.py): the gateway holds the leaving server's flows, their
   per-flow entries go to the target (the staying server with the most replicas), the
   gateway re-pins them there and sends what it held, in order.
2. The route without the leaving server is written and pushed (new flows stop going there;
   the reconciler does this between the steps).
3. StopSFC on the leaving server with `return_to` the target: its release pools go back and
   its eventual tables' last deltas are flushed (agent/peer_state.py).

A failed move (MoveError: timeout, a peer refusing) leaves the server in the route, serving
the flows it had (the gateway releases the hold to it), the SFC Degraded saying why, and the
reconcile is retried with its back-off. No gateway registered: nothing to hold flows at, so
the server is stopped as before (its flows follow the route).

This module holds the pure choices (which servers leave, in what order, to which target)
and the two agent/gateway calls; the reconciler keeps the records.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc

from serpens.proto.serpens.v1 import serpens_pb2 as pb

from . import moves

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0     # StopSFC with return_to: pools merged, deltas flushed on the target
MOVE_TIMEOUT = 10.0     # one server's flows (move_flows' own timeout)


class HandOverFailed(Exception):
    """The flows of a leaving server could not move (it keeps serving them); str() says why.
    `state_left`: their per-flow state had left it already (moves.StateMoved)."""

    def __init__(self, why: str, state_left: bool = False):
        super().__init__(why)
        self.state_left = state_left


@dataclass
class MoveOutcome:
    """What became of the flows of one MoveSFC's sources (the leader's memory, this term):
    those handed over with their state, and those whose state left without them."""
    asked_at: float
    handed: set = field(default_factory=set)
    damaged: dict = field(default_factory=dict)    # node -> what happened

    def note(self, leaving, unmoved: dict):
        """A hand-over of `leaving` servers ended; `unmoved`: node -> why its flows stay."""
        for node in leaving:
            why = unmoved.get(node)
            if why is None:
                self.handed.add(node)
            elif getattr(why, "state_left", False):
                self.damaged[node] = str(why)

    def error(self, sources, target: str, live) -> str:
        """What the status says of the flows that did not move with their state ("": all
        did): a source whose state left without its flows, a source lost (not `live`)
        before it handed them over (they went with it; new flows go to `target`)."""
        parts = [f"flows of {n} lost their state: {why}" for n, why in
                 sorted(self.damaged.items())]
        lost = sorted(n for n in sources if n != target and n not in live and
                      n not in self.handed and n not in self.damaged)
        if lost:
            parts.append(f"flows of {', '.join(lost)} not moved: lost with the node "
                         f"(new flows go to {target})")
        return "; ".join(parts)


@dataclass(frozen=True)
class Endpoint:
    """A node as a move names it: its Agent/Peer address and underlay IPv4 address."""
    node: str
    address: str
    ip: str


def joined_order(before: tuple[str, ...], serving) -> tuple[str, ...]:
    """The serving nodes in the order they joined: those known before keep their order,
    new ones follow (by name)."""
    serving = set(serving)
    kept = tuple(n for n in before if n in serving)
    return kept + tuple(sorted(serving - set(kept)))


def rank_joined(joined: tuple[str, ...], node: str) -> int:
    """A serving node's rank for keeping it: the earlier it joined, the lower (scale-in
    removes the servers that joined last); unknown nodes after all the known."""
    try:
        return joined.index(node)
    except ValueError:
        return len(joined)


def target_for(source: str, staying: dict[str, int]) -> str | None:
    """Where a leaving server's flows go: the staying server with the most replicas (ties:
    by name), never the source itself; None when none stays."""
    candidates = [(-n, node) for node, n in staying.items() if node != source]
    return min(candidates)[1] if candidates else None


async def move_off(gateway: str, sfc: str, source: Endpoint, target: Endpoint,
                   timeout: float = MOVE_TIMEOUT):
    """Every flow of `sfc` pinned to `source` moves to `target` with its per-flow state
    (the MoveResult); HandOverFailed otherwise (the source keeps those it has: all of them,
    or, when a later wave of the move failed, those the earlier waves did not move)."""
    try:
        result = await moves.move_flows(
            gateway, sfc, moves.Server(source.node, source.address, source.ip),
            moves.Server(target.node, target.address, target.ip), timeout=timeout)
    except moves.MoveError as e:
        raise HandOverFailed(f"moving its flows from {source.node} to {target.node}: "
                             f"{e}", state_left=isinstance(e, moves.StateMoved)) from None
    log.debug("sfc %s: %d flows (%d per-flow entries) moved %s -> %s in %.1f ms, %d packets "
              "held, %d dropped from the hold", sfc, result.flows, result.entries, source.node,
              target.node, result.move_ms, result.held, result.held_dropped)
    return result


async def stop_returning(call, sfc: str, source: str, target: Endpoint,
                         timeout: float = STOP_TIMEOUT) -> None:
    """StopSFC on the leaving server (`call(request, timeout)` sends it there), its state
    handed to `target` (release pools returned, eventual deltas flushed); HandOverFailed if
    the agent says no (NOT_FOUND: it no longer runs it, which is as good)."""
    try:
        await call(pb.StopSFCRequest(
            name=sfc, return_to=pb.PeerRef(node=target.node, address=target.address)),
            timeout)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise HandOverFailed(f"stopping it on {source} (state to {target.node}): "
                                 f"{e.code().name}: {e.details()}") from None
    log.info("sfc %s stopped on node %s, its state returned to %s", sfc, source, target.node)
