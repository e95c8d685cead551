"""Test nodes made of ring-backed DPDK ports: a Wire is one port (frames pushed on it arrive at
the router, what the router sends on it can be read back); a Site is a one-SFC node on one
wire with the router on its lcore and an instance manager."""
import time

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp


class Wire:
    def __init__(self, dataplane, name):
        self.dataplane = dataplane
        self.inject = dp.Ring(f"{name}_in", 4096)
        self.sent = dp.Ring(f"{name}_out", 4096)
        self.port = dp.port_from_rings(f"net_ring_{name}", self.inject, self.sent,
                                       dataplane.mempool)

    def send(self, frames):
        for i in range(0, len(frames), 256):
            while dp.push(self.inject, self.dataplane.mempool, frames[i:i + 256]) == 0:
                time.sleep(0.0005)

    def receive(self, n, timeout=10.0, router=None):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            got = dp.pull(self.sent)
            out += [data for _, data in got]
            if not got:
                assert time.monotonic() < deadline, f"{len(out)} of {n} packets came out; " \
                    f"router: {router.stats() if router else '?'}"
                time.sleep(0.0005)
        return out

    def close(self):
        dp.port_close(self.port)


class Site:
    def __init__(self, dataplane, pool, sfc, name, warm_s=60.0):
        self.wire = Wire(dataplane, name)
        self.router = dp.Router(self.wire.port, self.wire.port)
        self.router.launch(dataplane.config.router_lcore)
        self.manager = InstanceManager(pool, self.router, sfc, warm_s=warm_s).start()

    def instance_ids(self):
        return {i: s.proc.instance_id for i, s in self.manager.instances.items()}

    def send(self, frames):
        self.wire.send(frames)

    def receive(self, n, timeout=10.0):
        return self.wire.receive(n, timeout, self.router)

    def close(self):
        self.manager.close()
        self.router.stop()
