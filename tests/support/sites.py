"""Test nodes made of ring-backed DPDK ports: a Wire is one port (frames pushed on it arrive at
the router, what the router sends on it can be read back); a Site is a one-SFC node on one
wire with the router on its lcore and an instance manager; a GatewaySite is a gateway on
wires, polled by the test."""
import itertools
import time

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp

GW_IP, GW_MAC = "192.168.50.1", "02:00:00:00:50:01"

_TAGS = itertools.count(1)


def unique_tag() -> int:
    """A number no other test of this process got: names of DPDK rings and ports, which
    outlive a test in its EAL (a hash of the test's name, cut to 4 digits, once gave two
    tests the same ring name)."""
    return next(_TAGS)


class Wire:
    def __init__(self, dataplane, name):
        self.dataplane = dataplane
        self.inject = dp.Ring(f"{name}_in", 4096)
        self.sent = dp.Ring(f"{name}_out", 4096)
        self.port = dp.port_from_rings(f"net_ring_{name}", self.inject, self.sent,
                                       dataplane.mempool)

    def send(self, frames, timeout=10.0):
        i, deadline = 0, time.monotonic() + timeout
        while i < len(frames):  # a ring with room for part of a chunk takes that part
            n = dp.push(self.inject, self.dataplane.mempool, frames[i:i + 256])
            i += n
            if not n:
                assert time.monotonic() < deadline, \
                    f"{self.inject.name}: {len(frames) - i} frames found no room in {timeout} s"
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
    def __init__(self, dataplane, pool, sfc, name, warm_s=60.0, crashes=None, stall_us=2000,
                 hold_ms=200):
        self.wire = Wire(dataplane, name)
        self.router = dp.Router(self.wire.port, self.wire.port, stall_us=stall_us,
                                hold_ms=hold_ms)
        self.router.launch(dataplane.config.router_lcore)
        self.manager = InstanceManager(pool, self.router, sfc, warm_s=warm_s,
                                       crashes=crashes).start()

    def instance_ids(self):
        return {i: s.proc.instance_id for i, s in self.manager.instances.items()}

    def send(self, frames):
        self.wire.send(frames)

    def receive(self, n, timeout=10.0):
        return self.wire.receive(n, timeout, self.router)

    def close(self):
        self.manager.close()
        self.router.stop()


class GatewaySite:
    """A gateway on ring-backed ports (`ingress` outside ports in, the first of them
    `outside`; outside out; underlay), driven by poll() from the test's thread: each test
    sees exactly what one pass did."""

    def __init__(self, dataplane, name, mtu=1500, idle_s=30.0, ingress=1, stall_us=2000):
        self.ins = [Wire(dataplane, f"{name}o{k or ''}") for k in range(ingress)]
        self.outside = self.ins[0]
        self.egress = Wire(dataplane, f"{name}e")
        self.underlay = Wire(dataplane, f"{name}u")
        self.gw = dp.Gateway([w.port for w in self.ins], self.underlay.port, self.egress.port,
                             GW_IP, GW_MAC, mtu=mtu, idle_s=idle_s, stall_us=stall_us)

    def pump(self):
        while self.gw.poll():
            pass

    def through(self, wire, frames):
        """Frames in on `wire`; (what left on the underlay, what left on the egress)."""
        for i in range(0, len(frames), 256):
            wire.send(frames[i:i + 256])
            self.pump()
        return ([d for _, d in dp.pull(self.underlay.sent, 512)],
                [d for _, d in dp.pull(self.egress.sent, 512)])

    def encap(self, frames, wire=None):
        """What `frames` in on `wire` (default: outside) became on the underlay."""
        out = []
        for i in range(0, len(frames), 256):
            out += self.through(wire or self.outside, frames[i:i + 256])[0]
        return out

    def close(self):
        for w in (*self.ins, self.egress, self.underlay):
            w.close()
