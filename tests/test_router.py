"""The router: flow affinity over several instances, scale-in by draining, idle back-off."""
import os
import struct
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc


def frame(flow: int, seq: int) -> bytes:
    return bytes(Ether() / IP(src=f"10.0.{flow // 256}.{flow % 256}", dst="10.9.9.9")
                 / UDP(sport=1000 + flow, dport=80) / struct.pack("<II", 0, seq))


def decode(data: bytes):
    p = Ether(data)
    inst, seq = struct.unpack("<II", bytes(p[UDP].payload)[:8])
    return p[UDP].sport - 1000, inst, seq


class Node:
    """A port made of two rings, a router on its lcore, and instances of one SFC."""

    def __init__(self, dataplane, pool, sfc, name):
        self.dataplane, self.pool, self.sfc = dataplane, pool, sfc
        self.wire_in = dp.Ring(f"{name}_win", 4096)
        self.wire_out = dp.Ring(f"{name}_wout", 4096)
        port = dp.port_from_rings(f"net_ring_{name}", self.wire_in, self.wire_out,
                                  dataplane.mempool)
        self.router = dp.Router(port, port)
        self.lcore = dataplane.config.router_lcore
        self.instances = {}
        self.name = name

    def add_instance(self, slot):
        rx, tx = dp.Ring(f"{self.name}_rx{slot}", 1024), dp.Ring(f"{self.name}_tx{slot}", 1024)
        proc = self.pool.start_instance(self.sfc, rx, tx)
        self.router.set_instance(slot, rx, tx, proc.ctl, proc.efd)
        self.instances[slot] = (proc, rx, tx)
        return proc

    def retire(self, slot):
        self.router.drain_instance(slot)
        deadline = time.monotonic() + 10
        while not self.router.drained(slot):
            assert time.monotonic() < deadline, "instance never drained"
            time.sleep(0.001)
        proc, rx, tx = self.instances.pop(slot)
        self.pool.stop_instance(proc)
        self.router.clear_instance(slot)
        rx.free()
        tx.free()

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
        for slot in list(self.instances):
            self.retire(slot)
        self.router.stop()


@pytest.fixture
def node(dataplane, pool, build, request):
    n = Node(dataplane, pool, compile_sfc(NF(build("tag.c"))), f"r{abs(hash(request.node.name)) % 10**6}")
    n.router.launch(n.lcore)
    yield n
    n.close()


def test_flows_stay_on_one_instance_and_both_are_used(node):
    a, b = node.add_instance(0), node.add_instance(1)
    frames = [frame(f, s) for s in range(20) for f in range(64)]
    node.send(frames)
    out = [decode(d) for d in node.receive(len(frames))]
    owner, last = {}, {}
    for flow, inst, seq in out:
        assert owner.setdefault(flow, inst) == inst, f"flow {flow} on two instances"
        assert seq > last.get(flow, -1), f"flow {flow} reordered"
        last[flow] = seq
    assert set(owner.values()) == {a.instance_id, b.instance_id}
    assert node.router.stats()["new_flows"] == 64


def test_scale_in_moves_flows_without_loss_or_reordering(node):
    a, b = node.add_instance(0), node.add_instance(1)
    node.send([frame(f, 0) for f in range(64)])
    first = {flow: inst for flow, inst, _ in map(decode, node.receive(64))}
    assert b.instance_id in first.values()
    sender = threading.Thread(target=node.send, args=([frame(f, s) for s in range(1, 40)
                                                       for f in range(64)],))
    sender.start()
    node.retire(1)  # while traffic flows
    sender.join()
    out = [decode(d) for d in node.receive(64 * 39)]
    last = {}
    for flow, inst, seq in out:
        assert seq == last.get(flow, 0) + 1, f"flow {flow}: lost or reordered at {seq}"
        last[flow] = seq
    # After the drain, every flow of the retired instance is on the survivor.
    tail = {flow: inst for flow, inst, seq in out if seq == 39}
    assert set(tail.values()) == {a.instance_id}
    assert node.router.stats()["moved_flows"] > 0


def test_idle_router_uses_almost_no_cpu(node):
    node.add_instance(0)
    time.sleep(0.3)  # let it reach its longest sleep
    t0, c0 = time.monotonic(), time.process_time()
    time.sleep(1.0)
    cpu = (time.process_time() - c0) / (time.monotonic() - t0)
    assert cpu < 0.02, f"idle router used {cpu:.1%} of a core"
