"""The instance manager: start on demand, warm period, scale to zero with state kept, scale."""
import struct
import time

import pytest

from serpens.agent.instance_manager import InstanceManager
from serpens.agent.state_manager import StateManager
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from test_router import decode, frame


class Site:
    def __init__(self, dataplane, pool, sfc, name, warm_s):
        self.dataplane = dataplane
        self.wire_in = dp.Ring(f"{name}_win", 4096)
        self.wire_out = dp.Ring(f"{name}_wout", 4096)
        port = dp.port_from_rings(f"net_ring_{name}", self.wire_in, self.wire_out,
                                  dataplane.mempool)
        self.router = dp.Router(port, port)
        self.router.launch(dataplane.config.router_lcore)
        self.manager = InstanceManager(pool, self.router, sfc, warm_s=warm_s).start()

    def send(self, frames):
        assert dp.push(self.wire_in, self.dataplane.mempool, frames) == len(frames)

    def receive(self, n, timeout=10.0):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            got = dp.pull(self.wire_out)
            out += [data for _, data in got]
            if not got:
                assert time.monotonic() < deadline, f"{len(out)} of {n}: {self.router.stats()}"
                time.sleep(0.0005)
        return out

    def close(self):
        self.manager.close()
        self.router.stop()


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_start_on_demand_scale_to_zero_and_state_kept(dataplane, pool, build):
    sfc = compile_sfc(NF(build("stateful.c", copy=20), name="im-zero"))
    site = Site(dataplane, pool, sfc, "imzero", warm_s=0.2)
    try:
        assert site.manager.count() == 0
        site.send([frame(f, 0) for f in range(8)] * 4)
        assert len(site.receive(32)) == 32          # nothing lost while the instance started
        assert site.manager.starts == 1
        wait_for(lambda: site.manager.count() == 0)  # warm period over: scaled to zero
        site.send([frame(f, 1) for f in range(8)] * 4)
        assert len(site.receive(32)) == 32
        assert site.manager.starts == 2
    finally:
        site.close()
    flows = StateManager(dataplane.config.state_dir).open("im-zero", "flows").items()
    assert sorted(struct.unpack("<Q", v)[0] for _, v in flows) == [8] * 8  # counting went on


def test_scale_out_and_in_keeps_flows_whole(dataplane, pool, build):
    site = Site(dataplane, pool, compile_sfc(NF(build("tag.c"))), "imscale", warm_s=60)
    try:
        site.manager.scale(2)
        for seq in range(10):
            site.send([frame(f, seq) for f in range(32)])
            if seq == 5:
                site.manager.scale(1)
        out = [decode(d) for d in site.receive(320)]
    finally:
        site.close()
    last = {}
    for flow, inst, seq in out:
        assert seq == last.get(flow, -1) + 1, f"flow {flow} lost or reordered at {seq}"
        last[flow] = seq
    assert site.manager.stops == 2  # the scale-in and the close
