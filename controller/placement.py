"""How a routed SFC's replicas are split over the nodes that serve it through the gateway
(DESIGN §7): pure arithmetic, no I/O, so the reconciler's choice can be tested alone.

`split(replicas, candidates, spread)` takes the candidate nodes best first (those already
serving the SFC first, then the least loaded) with the pool processes each has free for it
(None: unknown, as good as enough), and returns node -> replicas there:

* spread N > 1: the first min(N, candidates, replicas) nodes, the replicas divided as evenly
  as they go (the first nodes take the remainder), each at least 1 and at most what its free
  processes hold;
* spread 1: all on the first node, unless its free processes cannot hold them: then it takes
  what it holds and the rest go to the next nodes (each what it holds).

What no node holds is asked of none (an agent asked for more than its pool holds refuses
the scale-out, UNAVAILABLE): the shares then add up to fewer than `replicas`, and the SFC is
Degraded with fewer instances than asked.

Every node placed gets at least one replica (a route server's weight is at least 1), so an
SFC scaled to zero replicas is placed on one node with 0 (its instances start on the first
packet).
"""
from __future__ import annotations


def split(replicas: int, candidates: list[tuple[str, int | None]],
          spread: int) -> dict[str, int]:
    """node -> replicas; empty when there is no candidate."""
    if replicas < 0:
        raise ValueError(f"replicas: must not be negative, got {replicas}")
    if spread < 1:
        raise ValueError(f"spread: at least 1, got {spread}")
    if not candidates:
        return {}
    if replicas == 0:
        return {candidates[0][0]: 0}
    if spread > 1:
        count = min(spread, len(candidates), replicas)
        each, extra = divmod(replicas, count)
        return {node: _capped(each + (1 if i < extra else 0), free)
                for i, (node, free) in enumerate(candidates[:count])}
    first, free = candidates[0]
    if free is None or free >= replicas:
        return {first: replicas}
    shares = {first: _capped(replicas, free)}
    left = replicas - shares[first]
    for node, free in candidates[1:]:
        if left == 0:
            break
        take = left if free is None else min(free, left)
        if take > 0:
            shares[node] = take
            left -= take
    return shares


def _capped(share: int, free: int | None) -> int:
    """A node's share, no more than its free processes hold (at least 1: it is placed)."""
    return share if free is None else max(1, min(share, free))


def weights(shares: dict[str, int]) -> dict[str, int]:
    """A route's server weights: replicas, at least 1."""
    return {node: max(1, n) for node, n in shares.items()}


PHASES = ("Running", "Degraded", "Pending", "Failed")  # better to worse


def worst_phase(phases) -> str:
    """The worst of the nodes' phases (an SFC is only as well as its worst server)."""
    return max(phases, key=PHASES.index, default="Pending")
