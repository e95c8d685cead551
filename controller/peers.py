"""The reconciler's part of state between servers (docs/state.md "Between servers"): for a
routed SFC on several nodes, which peers each node exchanges eventual deltas with, which node
seeds a new one (the first server that runs it: it has the state), and which node a leaving
node returns its release pools to. The agents do the rest (agent/peer_state.py)."""
from __future__ import annotations

from serpens.proto.serpens.v1 import serpens_pb2 as pb


class PeerPlan:
    """One reconcile's view: `shares` (node -> replicas, the first node first) of SFC
    `name`; `records` the live nodes' records (address), `views` what each runs."""

    def __init__(self, sent: dict, name: str, shares: dict, records: dict, views: dict,
                 incarnation: int):
        self.sent, self.name = sent, name
        nodes = [n for n in shares if n in records]
        self.refs = [pb.PeerRef(node=n, address=records[n].address) for n in nodes] \
            if len(nodes) > 1 else []
        running = [n for n in nodes if (c := views.get(n, {}).get(name)) is not None and
                   c.incarnation == incarnation]
        self.source = running[0] if running else None
        # a new placement may have no node running the SFC yet (moved to nodes that never
        # ran it): they are seeded from a live node that still runs it (the one leaving)
        elsewhere = [n for n in sorted(views) if n in records and
                     (c := views[n].get(name)) is not None and c.incarnation == incarnation]
        self.seed_source = self.source or (elsewhere[0] if elsewhere else None)
        self.records = records

    def first_alone(self, todo: dict) -> tuple[dict, bool]:
        """(what to run now, whether some of `todo` waits). While no node runs the SFC, one
        node starts it alone and the others wait for the next pass, seeded from it: nodes
        started together would each make the NF's release pools whole (NAT's init() puts the
        full bitmap), and one port would be free on two servers at once."""
        if self.seed_source is not None or len(todo) < 2:
            return todo, False
        node = next(iter(todo))
        return {node: todo[node]}, True

    def key(self) -> tuple:
        return tuple((r.node, r.address) for r in self.refs)

    def changed(self, node: str) -> bool:
        """`node` was not given these peers yet (RunSFC again: applied in place)."""
        return self.sent.get((self.name, node), ()) != self.key()

    def given(self, node: str):
        self.sent[(self.name, node)] = self.key()

    def seed_for(self, node: str) -> pb.PeerRef | None:
        """Where a node that does not run it yet gets its tables from (None: nowhere)."""
        if self.seed_source is None or self.seed_source == node:
            return None
        return pb.PeerRef(node=self.seed_source,
                          address=self.records[self.seed_source].address)

    def return_to(self, keep) -> pb.PeerRef | None:
        """Where a node leaving the SFC returns its state: the first server that stays."""
        staying = [n for n in ([self.source] if self.source else []) + list(keep)
                   if n in self.records]
        if not staying:
            return None
        return pb.PeerRef(node=staying[0], address=self.records[staying[0]].address)

    def forget(self, node: str):
        self.sent.pop((self.name, node), None)
