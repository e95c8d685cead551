"""The instance manager: start on demand, warm period, scale to zero with state kept, scale;
a start that fails backs off like a crash."""
import os
import struct
import time

import pytest

from serpens.agent.faults import DEGRADED, FAILED, CrashPolicy
from serpens.agent.state_manager import StateManager
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.mounts import small_fs
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


def test_a_start_that_fails_backs_off_like_a_crash_then_fails_the_sfc(dataplane, pool, build):
    """The NF's state namespace is a full filesystem (an 8 KiB tmpfs), so its init() cannot
    create its tables and every start fails with the pool process alive. Packets keep asking
    for an instance; starts are tried only after each back-off, the SFC is Degraded naming
    the reason, then Failed after the policy's restarts, and then no start is tried at all."""
    namespace = os.path.join(dataplane.config.state_dir, "im-full")
    policy = CrashPolicy(max_restarts=3, first_backoff_s=0.05, max_backoff_s=0.2)
    with small_fs("tmpfs", "8k") as fs:
        os.makedirs(dataplane.config.state_dir, exist_ok=True)
        os.symlink(fs, namespace)
        site = Site(dataplane, pool, compile_sfc(NF(build("stateful.c", copy=21),
                                                    name="im-full")), "imfull", crashes=policy)
        try:
            seen = set()

            def asked_until(cond, timeout=10.0):
                deadline = time.monotonic() + timeout
                while not cond():
                    assert time.monotonic() < deadline, site.manager.health()
                    site.send([flow_frame(f, 0) for f in range(4)])  # an instance, please
                    seen.add(site.manager.health())
                    time.sleep(0.005)

            asked_until(lambda: site.manager.health()[0] == FAILED)
            phase, message = site.manager.health()
            assert "state filesystem full (ENOSPC)" in message, message
            assert "failed to start 4 times" in message, message
            assert any(p == DEGRADED and "instances cannot start" in m and "failed start(s)" in m
                       for p, m in seen), seen
            assert policy.failed_starts == 4 and policy.total == 0  # no process died
            assert site.manager.starts == 0 and site.manager.count() == 0
            faults = list(policy.log)
            assert [f.start for f in faults] == [True] * 4
            assert list(policy.backoffs) == [0.05, 0.1, 0.2, 0.2]
            for before, after, wait in zip(faults, faults[1:], policy.backoffs):
                assert after.at - before.at >= wait  # never sooner than its back-off
            stop = time.monotonic() + 0.5
            asked_until(lambda: time.monotonic() > stop)
            assert policy.failed_starts == 4  # Failed: nothing more is tried
        finally:
            site.close()
            os.unlink(namespace)
