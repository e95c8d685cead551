"""The instance manager: start on demand, warm period, scale to zero with state kept, scale."""
import struct
import time

import pytest

from serpens.agent.state_manager import StateManager
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.packets import flow_decode, flow_frame
from support.sites import Site

pytestmark = pytest.mark.dataplane


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
        site.send([flow_frame(f, 0) for f in range(8)] * 4)
        assert len(site.receive(32)) == 32          # nothing lost while the instance started
        assert site.manager.starts == 1
        wait_for(lambda: site.manager.count() == 0)  # warm period over: scaled to zero
        site.send([flow_frame(f, 1) for f in range(8)] * 4)
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
            site.send([flow_frame(f, seq) for f in range(32)])
            if seq == 5:
                site.manager.scale(1)
        out = [flow_decode(d) for d in site.receive(320)]
    finally:
        site.close()
    last = {}
    for flow, inst, seq in out:
        assert seq == last.get(flow, -1) + 1, f"flow {flow} lost or reordered at {seq}"
        last[flow] = seq
    assert site.manager.stops == 2  # the scale-in and the close
