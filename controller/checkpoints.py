"""The controller's part of checkpoints (docs/state.md "Checkpoints"): which node an SFC's
node ships its checkpoints to, and where a lost node's SFC is restored from.

The peer is another live node: the one the status names if it still lives, else the least
loaded usable one. An SFC whose node was lost (its status names a node no longer live) is run
on its new node with `restore_of` (the lost node) and `restore_from` (the peer its status
named, if it lives; without one the agent starts it empty and says so). The lost node is
remembered (per term) until a RunSFC carrying the restore succeeds, so a failed attempt
restores on the next one.
"""
from __future__ import annotations

from serpens.proto.serpens.v1 import serpens_pb2 as pb


def checkpoint_s(doc: dict) -> int:
    """spec.state.checkpoint_s of an SFC record's document (the API validated it); 0: off."""
    state = (doc.get("spec") or {}).get("state") or {}
    n = state.get("checkpoint_s", 0) if isinstance(state, dict) else 0
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def pick_peer(node: str, current: str, live: list[str], rank) -> str | None:
    """The checkpoint peer of an SFC on `node`: `current` if still live and not `node`, else
    the live node other than `node` that `rank` puts first; None when there is none."""
    others = [n for n in live if n != node]
    if current in others:
        return current
    return min(others, key=rank) if others else None


def status_fields(running: pb.AgentSFC) -> dict:
    """SFCStatus fields of what a node reports of the SFC's checkpoints and restore (an
    AgentSFC, or the SFCStatus made of one)."""
    return {"checkpoint_to": running.checkpoint_to, "restored_of": running.restored_of,
            "restored_age_ms": running.restored_age_ms, "restore": running.restore}


def peer_ref(nodes, name: str) -> pb.PeerRef:
    return pb.PeerRef(node=name, address=nodes.records[name].address)
