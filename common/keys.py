"""Where each record lives in etcd (DESIGN §4): one builder per key, so no other module
spells a key prefix.

    /serpens/v1/nfs/<name>       an NF deployed through the API (controller/api.py)
    /serpens/v1/sfcs/<name>      an SFC's desired state (API, and the autoscaler)
    /serpens/v1/status/<name>    what the leading controller made of it (controller/reconciler.py)
    /serpens/v1/nodes/<name>     an agent's node, under the agent's lease (agent/registration.py)
    /serpens/v1/gateways/<name>  a gateway, under the gateway's lease (gateway/main.py)
    /serpens/v1/routes/<sfc>     an SFC's route through the gateway: tag, servers, weights
                                 (the leader's, fenced; controller/routes.py)
    /serpens/v1/cordons/<node>   a node cordoned by DrainNode (not leased: survives restarts)
    /serpens/v1/moves/<sfc>      a MoveSFC asked for and not done yet (controller/drain.py)
    /serpens/v1/leader           the controllers' election key (common/store.py, Election)

The root is configurable (`serpens-controller --prefix`) so that several clusters, or tests,
can share one etcd.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/serpens/v1/"


@dataclass(frozen=True)
class Keys:
    root: str = DEFAULT_PREFIX

    def __post_init__(self):
        if not self.root.endswith("/"):
            raise ValueError("prefix: must end with '/'")

    @property
    def nfs(self) -> str:
        return self.root + "nfs/"

    @property
    def sfcs(self) -> str:
        return self.root + "sfcs/"

    @property
    def statuses(self) -> str:
        return self.root + "status/"

    @property
    def nodes(self) -> str:
        return self.root + "nodes/"

    @property
    def gateways(self) -> str:
        return self.root + "gateways/"

    @property
    def routes(self) -> str:
        return self.root + "routes/"

    @property
    def cordons(self) -> str:
        return self.root + "cordons/"

    @property
    def moves(self) -> str:
        return self.root + "moves/"

    @property
    def leader(self) -> str:
        return self.root + "leader"

    def nf(self, name: str) -> str:
        return self.nfs + name

    def sfc(self, name: str) -> str:
        return self.sfcs + name

    def status(self, name: str) -> str:
        return self.statuses + name

    def node(self, name: str) -> str:
        return self.nodes + name

    def gateway(self, name: str) -> str:
        return self.gateways + name

    def route(self, sfc: str) -> str:
        return self.routes + sfc

    def cordon(self, node: str) -> str:
        return self.cordons + node

    def move(self, sfc: str) -> str:
        return self.moves + sfc

    def split(self, key: str) -> tuple[str, str] | None:
        """(kind, name) of a record's key, kind one of "nf", "sfc", "status", "node",
        "gateway", "route", "cordon", "move"; None for any other key (the leader's, or one
        written by hand)."""
        for kind, prefix in (("nf", self.nfs), ("sfc", self.sfcs),
                             ("status", self.statuses), ("node", self.nodes),
                             ("gateway", self.gateways), ("route", self.routes),
                             ("cordon", self.cordons), ("move", self.moves)):
            if key.startswith(prefix):
                return kind, key[len(prefix):]
        return None
