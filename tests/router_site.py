"""A one-SFC node for router tests: a DPDK port made of two rings (the "wire"), the router on
its lcore, and an instance manager. Tests push frames onto the wire and read what comes out."""
import time

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp


class Site:
    def __init__(self, dataplane, pool, sfc, name, warm_s=60.0):
        self.dataplane = dataplane
        self.wire_in = dp.Ring(f"{name}_win", 4096)
        self.wire_out = dp.Ring(f"{name}_wout", 4096)
        port = dp.port_from_rings(f"net_ring_{name}", self.wire_in, self.wire_out,
                                  dataplane.mempool)
        self.router = dp.Router(port, port)
        self.router.launch(dataplane.config.router_lcore)
        self.manager = InstanceManager(pool, self.router, sfc, warm_s=warm_s).start()

    def instance_ids(self):
        return {slot: s.proc.instance_id for slot, s in self.manager.slots.items()}

    def send(self, frames):
        for i in range(0, len(frames), 256):
            while dp.push(self.wire_in, self.dataplane.mempool, frames[i:i + 256]) == 0:
                time.sleep(0.0005)

    def receive(self, n, timeout=10.0):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            got = dp.pull(self.wire_out)
            out += [data for _, data in got]
            if not got:
                assert time.monotonic() < deadline, \
                    f"{len(out)} of {n} packets came out; router: {self.router.stats()}"
                time.sleep(0.0005)
        return out

    def close(self):
        self.manager.close()
        self.router.stop()
