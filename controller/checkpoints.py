"""The controller's part of checkpoints (docs/state.md "Checkpoints"): which node an SFC's
node ships its checkpoints to, and where a lost node's SFC is restored from.

The peer is another live node: the one the status names if it still lives, else the least
loaded usable one. An SFC whose node was lost (its status names a node no longer live) is run
on its new node with `restore_of` (the lost node) and `restore_from` (the peer its status
named, if it lives; without one the agent starts it empty and says so). An SFC spread over
several nodes: each lost node's place is taken by a node of the new placement that does not
run it yet, which restores that node's checkpoint (instead of a seed: the lost node's release
shares come back from its checkpoint, not from another node's pool); when every node of the
new placement runs it already, the status says the checkpoint was not restored and why. A
lost node is remembered (per term) until a RunSFC carrying the restore succeeds, so a failed
attempt restores on the next one.
"""
from __future__ import annotations

from serpens.proto.serpens.v1 import serpens_pb2 as pb


def checkpoint_s(doc: dict) -> int:
    """spec.state.checkpoint_s of an SFC record's document (the API validated it); 0: off."""
    state = (doc.get("spec") or {}).get("state") or {}
    n = state.get("checkpoint_s", 0) if isinstance(state, dict) else 0
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def lost_nodes(status, live) -> dict[str, str]:
    """The nodes `status` says serve the SFC that are not `live` -> the peer each shipped
    its checkpoints to ("" unknown)."""
    if status is None:
        return {}
    peers = dict(status.checkpoint_peers)
    if status.node:
        peers.setdefault(status.node, status.checkpoint_to)
    serving = [n for n, _ in status.nodes] or ([status.node] if status.node else [])
    return {n: peers.get(n, "") for n in serving if n not in live}


def restorers(lost, order, running) -> dict[str, str]:
    """node -> the lost node whose checkpoint it restores: the nodes of the new placement
    (`order`) that do not run the SFC yet (not in `running`) take the lost nodes' places,
    in placement order and by lost node's name. A node that runs it already restores none
    (its tables are its own share: a checkpoint would replace them)."""
    fresh = [n for n in order if n not in running]
    return dict(zip(fresh, sorted(lost)))


class LostNodes:
    """One SFC's lost nodes (the leader's memory, this term): those whose checkpoint waits
    for a restore (node -> its peer), and those settled (restored, or said why not; a node
    live again is forgotten: lost again, it is restored again)."""

    def __init__(self):
        self.pending: dict[str, str] = {}
        self.settled: set[str] = set()

    def note(self, status, live):
        self.settled -= set(live)
        for node, peer in lost_nodes(status, live).items():
            if node not in self.settled:
                self.pending.setdefault(node, peer)

    def settle(self, node: str):
        self.pending.pop(node, None)
        self.settled.add(node)


def not_restored(lost: str, order) -> str:
    """The status's words for a lost node's checkpoint no node could restore."""
    return (f"node {lost} lost; its checkpoint not restored: every node of the new placement "
            f"({', '.join(order) or 'none'}) ran the SFC already (its tables are its own); "
            f"the state of {lost}'s flows is lost")


def pick_peer(node: str, current: str, live: list[str], rank) -> str | None:
    """The checkpoint peer of an SFC on `node`: `current` if still live and not `node`, else
    the live node other than `node` that `rank` puts first; None when there is none."""
    others = [n for n in live if n != node]
    if current in others:
        return current
    return min(others, key=rank) if others else None


# The status's time of the last checkpoint is refreshed this often at most (a node's report
# with a newer one counts as a change then): its age is right within this, without a status
# write per checkpoint.
REFRESH_S = 10


def status_fields(running: pb.AgentSFC) -> dict:
    """SFCStatus fields of what a node reports of the SFC's checkpoints and restore (an
    AgentSFC, or the SFCStatus made of one)."""
    return {"checkpoint_to": running.checkpoint_to, "restored_of": running.restored_of,
            "restored_age_ms": running.restored_age_ms, "restore": running.restore,
            "checkpoint_unix_ms": running.checkpoint_unix_ms,
            "checkpoint_error": running.checkpoint_error}


def spread_fields(first: str, statuses: dict) -> dict:
    """status_fields of an SFC served by several nodes (node -> its SFCStatus, `first` the
    status's node): the first's peer; the restore of the node that restored one; the
    oldest last checkpoint of the nodes taking them, and every node's failure."""
    out = status_fields(statuses[first])
    if len(statuses) > 1:  # each node's peer: where a lost one's checkpoint is
        out["checkpoint_peers"] = tuple(sorted(
            (n, st.checkpoint_to) for n, st in statuses.items() if st.checkpoint_to))
    restoring = [st for _, st in sorted(statuses.items()) if st.restored_of]
    if restoring and not out["restored_of"]:
        st = restoring[0]
        out.update(restored_of=st.restored_of, restored_age_ms=st.restored_age_ms,
                   restore=st.restore)
    taking = [st.checkpoint_unix_ms for st in statuses.values() if st.checkpoint_to]
    out["checkpoint_unix_ms"] = min(taking) if taking else 0
    out["checkpoint_error"] = "; ".join(
        f"node {n}: {st.checkpoint_error}" for n, st in sorted(statuses.items())
        if st.checkpoint_error) if len(statuses) > 1 else out["checkpoint_error"]
    return out


def report_summary(running: pb.AgentSFC) -> tuple:
    """What of a node's report on an SFC's checkpoints makes its status be written again:
    a failure (or its end), and a newer checkpoint once per REFRESH_S."""
    return running.checkpoint_error, running.checkpoint_unix_ms // (REFRESH_S * 1000)


def peer_ref(nodes, name: str) -> pb.PeerRef:
    return pb.PeerRef(node=name, address=nodes.records[name].address)
