"""The agent's record in etcd: its node, bound to a lease, with the load it reports (DESIGN §4).

The record `/serpens/v1/nodes/<name>` (common/records.py's NodeRecord) holds the node's
ports, pool size, CPUs, underlay address (where VXLAN frames reach it) and, refreshed every
`report_s`, its load: per SFC the packet rate in and out over the last period and the running
instances, per port the rates. The key is
put with the agent's lease, so a dead or cut-off agent's node disappears within the lease
TTL: that is how the controller notices agent loss. Losing etcd never touches the data plane: the loop keeps retrying, and on
a lost lease it takes a new one and writes the record again.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time

from serpens.common.keys import Keys
from serpens.common.records import NodeLoad, NodeRecord, PortLoad, SFCLoad, Underlay
from serpens.common.store import Store, StoreError
from serpens.common.tasks import cancel_until_done

log = logging.getLogger(__name__)

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
        self.store, self.node, self.stats = store, node, stats
        self.ttl, self.report_s = ttl, report_s
        self.address = address or socket.gethostname()
        self.lease = None
        self.reports = 0
        self._task = None
        self._closed = False

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

    async def start(self) -> Registration:
        """Register now (raises StoreUnavailable if etcd cannot be reached), then report."""
        self.lease = await self.store.grant(self.ttl)
        snapshot, at = self.stats(), time.monotonic()
        await self.store.put(KEYS.node(self.node.name), self.record(load_report(None, snapshot, 0)),
                             lease=self.lease)
        self._task = asyncio.get_running_loop().create_task(self._report(snapshot, at))
        return self

    async def _report(self, snapshot, at):
        while not self._closed:
            await asyncio.sleep(self.report_s)
            now, t = self.stats(), time.monotonic()
            load = load_report(snapshot, now, t - at)
            snapshot, at = now, t
            try:
                if self.lease.lost.is_set():  # expired while etcd was away: register again
                    log.warning("node %s: lease lost, registering again", self.node.name)
                    self.lease = await self.store.grant(self.ttl)
                await self.store.put(KEYS.node(self.node.name), self.record(load),
                                     lease=self.lease)
                self.reports += 1
            except StoreError as e:  # etcd away: traffic goes on, the next report retries
                log.warning("node %s: report failed: %s", self.node.name, e)

    async def close(self):
        """Deregister: the record goes at once (a crash leaves it to the lease TTL)."""
        self._closed = True
        if self._task:
            await cancel_until_done(self._task)
        if self.lease is not None:
            try:
                await self.lease.revoke()
            except StoreError as e:
                log.warning("node %s: could not deregister: %s", self.node.name, e)
