"""What a mover and a rebalance read of an instance (Router.owed: packets given, packets done
with): packets its router shed while the instance held its ring back count as done only once
the packets ahead of them in its ring came back. The instance here is the test's hand: it
takes nothing until the test returns the ring's packets."""
import os
import time

import pytest

from serpens.runtime_cy import _dataplane as dp

from support.packets import flow_frame
from support.sites import Wire

pytestmark = pytest.mark.dataplane


def wait_until(probe, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_shed_packets_count_as_done_only_after_the_packets_ahead_of_them(dataplane):
    tag = f"acct{os.getpid() % 100000}"
    wire = Wire(dataplane, tag)
    router = dp.Router(wire.port, wire.port, stall_us=2000, hold_ms=200)
    ctl_fd = os.memfd_create("serpens-test-acct", os.MFD_CLOEXEC)
    os.ftruncate(ctl_fd, dp.CTL_SIZE)
    ctl, efd = dp.PoolCtl(ctl_fd), os.eventfd(0, os.EFD_CLOEXEC)
    rx, tx = dp.Ring(f"{tag}_rx", 64), dp.Ring(f"{tag}_tx", 64)
    slot = router.reserve_index()
    router.set_instance(slot, rx, tx, ctl, efd, 0)
    router.launch(dataplane.config.router_lcore)
    try:
        wire.send([flow_frame(f, 0) for f in range(200)])
        # its ring full and the rest waiting beyond it, then shed after stall_us
        wait_until(lambda: router.stats()["sfcs"][0]["drops"]["instance_stuck"] > 0)
        given, done = router.owed(0)[slot]
        in_ring = rx.count()
        assert given > in_ring > 0 and done == 0   # the shed wait behind the ring's packets
        # the instance gives back all but one of its ring's packets: still not done
        frames = [f for _, f in dp.pull(rx, in_ring - 1)]
        assert dp.push(tx, dataplane.mempool, frames) == len(frames)
        wait_until(lambda: router.owed(0)[slot][1] == len(frames))
        # ... and the last: the shed packets are done with too, all of them
        frames = [f for _, f in dp.pull(rx, 512)]
        assert dp.push(tx, dataplane.mempool, frames) == len(frames)
        wait_until(lambda: router.owed(0)[slot][1] >= given)
        assert router.owed(0)[slot] == (given, given)
    finally:
        router.stop()
        os.close(ctl_fd)
        os.close(efd)
        dp.free_all(rx)
        dp.free_all(tx)
        dp.free_all(wire.sent)
        wire.close()
