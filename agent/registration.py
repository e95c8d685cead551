"""The agent's record in etcd: its node, bound to a lease, with the load it reports (DESIGN §4).

The record `/serpens/v1/nodes/<name>` (common/records.py's NodeRecord) holds the node's
ports, pool size, CPUs, underlay address (where VXLAN frames reach it) and, refreshed every
`report_s`, its load: per SFC the packet rate in and out over the last period and the running
instances, per port the rates. The key is kept under the agent's lease by
common/lease_record.py, so a dead or cut-off agent's node disappears within the lease TTL:
that is how the controller notices agent loss. Losing etcd never touches the data plane.
"""
from __future__ import annotations

import functools
import socket
import time

from serpens.common.keys import Keys
from serpens.common.lease_record import LeasedRecord
from serpens.common.records import NodeLoad, NodeRecord, PortLoad, SFCLoad, Underlay
from serpens.common.store import Store

KEYS = Keys()


def load_report(prev: dict | None, now: dict, seconds: float) -> NodeLoad:
    """Rates (packets/s) from two Node.stats() snapshots `seconds` apart."""
    def rate(cur, old, key):
        if not seconds:
            return 0
        before = (old or {}).get(key, cur[key])
        # a counter that went back was reset (the SFC applied again): it counts from zero
        return round((cur[key] - before if cur[key] >= before else cur[key]) / seconds, 1)
    prev = prev or {"ports": {}, "sfcs": {}}
    sfcs = {name: SFCLoad(in_pps=rate(c, prev["sfcs"].get(name), "rx"),
                          out_pps=rate(c, prev["sfcs"].get(name), "out"),
                          instances=c["instances"]) for name, c in now["sfcs"].items()}
    ports = {name: PortLoad(rx_pps=rate(c, prev["ports"].get(name), "rx"),
                            tx_pps=rate(c, prev["ports"].get(name), "tx"))
             for name, c in now["ports"].items()}
    return NodeLoad(sfcs=sfcs, ports=ports)


class Registration:
    """Keeps the node's record in etcd until close(). `stats` returns Node.stats()."""

    def __init__(self, store: Store, node, stats, *, ttl: int = 5, report_s: float = 1.0,
                 address: str = ""):
        self.node, self.stats = node, stats
        self.address = address or socket.gethostname()
        self._snapshot = None  # (Node.stats(), monotonic time) of the last report
        self._kept = LeasedRecord(store, KEYS.node(node.name), self._next_record, ttl=ttl,
                                  period=report_s, what=f"node {node.name}")

    @property
    def lease(self):
        return self._kept.lease

    @property
    def reports(self):
        return self._kept.reports

    def record(self, load: NodeLoad) -> str:
        return NodeRecord(name=self.node.name, address=self.address,
                          ports=tuple(sorted(self.node.ports)), input=tuple(self.node.input),
                          pool=self.node.pool, cpus=self.node.cpus, reported_at=time.time(),
                          load=load, underlay=self.underlay).encode()

    @functools.cached_property
    def underlay(self) -> Underlay | None:
        """The node's underlay address (spec.underlay) with its port's MAC (Node.stats():
        known once the port is open, as it is before the node registers)."""
        if self.node.underlay is None:
            return None
        u = self.stats()["underlay"]
        return Underlay(ip=u["ip"], mac=u["mac"], mtu=u["mtu"])

    def _next_record(self) -> str:
        """The record with the load since the last one (none yet: zero rates)."""
        now, t = self.stats(), time.monotonic()
        prev, at = self._snapshot or (None, t)
        self._snapshot = (now, t)
        return self.record(load_report(prev, now, t - at))

    async def start(self) -> Registration:
        """Register now (raises StoreUnavailable if etcd cannot be reached), then report."""
        await self._kept.start()
        return self

    async def close(self):
        """Deregister: the record goes at once (a crash leaves it to the lease TTL)."""
        await self._kept.close()
