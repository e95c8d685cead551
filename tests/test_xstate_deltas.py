"""Eventual deltas between servers (agent/peer_state.py): the bookkeeping that makes the
cluster-wide totals exact. A push carries the origin table's cumulative values with the
origin agent's (epoch, seq); the receiver replaces per key and refuses anything not newer, so
a retried push, a reply lost after the push was applied, a reordered old push or a restarted
sender never counts twice; ReadState's totals are the table plus each origin's replica."""
import asyncio
import os
import struct
from types import SimpleNamespace

import pytest

from serpens.agent import peer_state
from serpens.agent.state_manager import StateManager
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.runtime_cy import _dataplane as dp

pytestmark = pytest.mark.unit

EV = dp.GLOBAL | dp.WRITE | dp.EVENTUAL
NS = "mon-sfc.mon"


def word(v: int) -> bytes:
    return struct.pack("<Q", v)


def host(i: int) -> bytes:
    return bytes([10, 0, 0, i]).ljust(20, b"\0")


def push(origin, epoch, seq, entries):
    return pb.PushDeltasRequest(node="a", sfc="mon-sfc", nf="mon", table="hosts", origin=origin,
                                epoch=epoch, seq=seq, key_size=20, value_size=8, capacity=64,
                                entries=[pb.DeltaEntry(key=k, value=word(v))
                                         for k, v in entries.items()])


def totals(state):
    t = state.open(NS, "hosts")
    try:
        items = peer_state.with_peers(state, NS, "hosts", t.items())
    finally:
        t.close()
    return {k: struct.unpack("<Q", v)[0] for k, v in items}


@pytest.fixture
def state(tmp_path):
    s = StateManager(str(tmp_path / "state"))
    t = dp.StateTable(s.state_dir, NS, "hosts", EV, 20, 8, 64)   # this node's own counts
    t.put(host(1), word(5))
    t.close()
    return s


def test_a_push_applied_twice_or_out_of_order_counts_once(state):
    r = peer_state.Receiver(state.state_dir)
    a = os.urandom(16)
    assert r.apply(NS, "mon-sfc", push(a, 1, 1, {host(1): 3, host(2): 7})) == (True, 2)
    assert r.apply(NS, "mon-sfc", push(a, 1, 1, {host(1): 3, host(2): 7})) == (False, 0)
    assert totals(state) == {host(1): 8, host(2): 7}
    assert r.apply(NS, "mon-sfc", push(a, 1, 3, {host(1): 10})) == (True, 1)
    # seq 2 arrives late (a retry that was delayed): older than what was applied
    assert r.apply(NS, "mon-sfc", push(a, 1, 2, {host(1): 4})) == (False, 0)
    assert totals(state) == {host(1): 15, host(2): 7}
    # the origin agent restarted: a newer epoch, seq from 1 again, everything resent
    assert r.apply(NS, "mon-sfc", push(a, 2, 1, {host(1): 10, host(2): 7})) == (True, 2)
    assert totals(state) == {host(1): 15, host(2): 7}
    # a second origin adds its own; the receiver's restart keeps what was applied
    b = os.urandom(16)
    r2 = peer_state.Receiver(state.state_dir)
    assert r2.apply(NS, "mon-sfc", push(b, 9, 1, {host(2): 1})) == (True, 1)
    assert r2.apply(NS, "mon-sfc", push(a, 2, 1, {host(1): 99})) == (False, 0)
    assert totals(state) == {host(1): 15, host(2): 8}


def test_our_own_table_and_bad_pushes_are_refused(state):
    r = peer_state.Receiver(state.state_dir)
    mine = peer_state.origin_of(state.path(NS, "hosts"))
    assert peer_state.origin_of(state.path(NS, "hosts")) == mine   # kept in the header
    assert r.apply(NS, "mon-sfc", push(mine, 1, 1, {host(1): 50})) == (False, 0)
    with pytest.raises(ValueError, match="origin"):
        r.apply(NS, "mon-sfc", push(bytes(16), 1, 1, {}))
    bad = push(os.urandom(16), 1, 1, {host(1): 1})
    bad.entries[0].value = b"short"
    with pytest.raises(ValueError, match="entries"):
        r.apply(NS, "mon-sfc", bad)
    other = push(os.urandom(16), 1, 1, {})
    other.value_size = 16
    with pytest.raises(ValueError, match="here has key 20 value 8"):
        r.apply(NS, "mon-sfc", other)
    assert totals(state) == {host(1): 5}


class LossyPeer:
    """A peer whose replies get lost now and then: the push was applied, the sender sees an
    error and sends again."""

    def __init__(self, receiver, lose):
        self.receiver, self.lose, self.calls = receiver, list(lose), 0

    async def PushDeltas(self, req, timeout):
        self.calls += 1
        self.receiver.apply(NS, req.sfc, req)
        if self.lose and self.lose.pop(0):
            raise ConnectionError("reply lost")
        return pb.PushDeltasResponse(applied=True)


def two_nodes(tmp_path, value_size=8):
    """This node's and a peer's state, each with an eventual `hosts` table of MON's shape."""
    here = StateManager(str(tmp_path / "here"))
    there = StateManager(str(tmp_path / "there"))
    for s in (here, there):
        dp.StateTable(s.state_dir, NS, "hosts", EV, 20, value_size, 64).close()
    return here, there


SPEC = SimpleNamespace(nfs={"mon": None}, state_namespace=lambda nf: f"mon-sfc.{nf}")


def sender_to(here, stubs: dict) -> peer_state.DeltaSender:
    """Node a's sender of mon-sfc's deltas to the peers `stubs` (address -> stub), node
    names their addresses' hosts."""
    node = SimpleNamespace(spec=SimpleNamespace(name="a"), running={}, state=here)
    sender = peer_state.DeltaSender(node, stubs=stubs)
    sender.set_peers("mon-sfc", [pb.PeerRef(node=a.split(":")[0], address=a) for a in stubs])
    sender.ops_cache["mon-sfc"] = {NS: {"merge": False, "split": False}}
    return sender


def test_the_sender_resends_what_was_not_acknowledged_and_the_totals_stay_exact(tmp_path):
    here, there = two_nodes(tmp_path)
    mine = dp.StateTable(here.state_dir, NS, "hosts")
    peer = LossyPeer(peer_state.Receiver(there.state_dir), lose=[True, False, True, True, False])
    node = SimpleNamespace(spec=SimpleNamespace(name="a"), running={}, state=here)
    sender = peer_state.DeltaSender(node, stubs={"b:1": peer})
    sender.set_peers("mon-sfc", [pb.PeerRef(node="b", address="b:1"),
                                 pb.PeerRef(node="a", address="a:1")])   # itself: skipped
    assert sender.peers == {"mon-sfc": [("b", "b:1")]}
    spec = SimpleNamespace(nfs={"mon": None}, state_namespace=lambda nf: f"mon-sfc.{nf}")
    sender.ops_cache["mon-sfc"] = {NS: {"merge": False, "split": False}}

    def counted_there():
        return {k: struct.unpack("<Q", v)[0] for k, v in
                peer_state.with_peers(there, NS, "hosts", [])}

    async def period(expect_ok):
        assert await sender.push_sfc("mon-sfc", spec=spec) is expect_ok

    sent = {}
    for rnd, ok in enumerate([False, True, False, False, True]):
        for i in range(1, 4):   # this node counts more packets of three hosts
            sent[host(i)] = sent.get(host(i), 0) + rnd + i
            mine.put(host(i), word(sent[host(i)]))
        asyncio.run(period(ok))
    assert counted_there() == sent and peer.calls == 5
    assert "push to b failed" not in sender.status("mon-sfc")
    asyncio.run(period(True))      # nothing changed: nothing sent
    assert peer.calls == 5
    mine.close()

    # what the sender remembers of the peers' tables lasts as long as they are its peers
    # and its SFC's: it does not grow with peers gone or SFCs stopped
    assert [k[:2] for k in sender.acked] == [("mon-sfc", "b:1")]
    sender.set_peers("mon-sfc", [pb.PeerRef(node="c", address="c:1")])
    assert not sender.acked
    sender.set_peers("mon-sfc", [pb.PeerRef(node="b", address="b:1")])
    asyncio.run(period(True))      # b is new again: it gets the whole table (a replica's
    assert peer.calls == 6 and counted_there() == sent  # values, taken again: no double)
    sender.forget("mon-sfc")
    assert not sender.acked


def test_a_table_the_nf_merges_itself_is_not_exchanged_and_says_so(tmp_path):
    here = StateManager(str(tmp_path / "here"))
    dp.StateTable(here.state_dir, NS, "hosts", EV, 20, 8, 64).close()
    node = SimpleNamespace(spec=SimpleNamespace(name="a"), running={}, state=here)
    sender = peer_state.DeltaSender(node, stubs={})
    spec = SimpleNamespace(nfs={"mon": None}, state_namespace=lambda nf: f"mon-sfc.{nf}")
    sender.ops_cache["mon-sfc"] = {NS: {"merge": True, "split": False}}
    assert sender.tables("mon-sfc", spec) == []
    assert "mon.hosts not exchanged: its NF merges with its own op" in \
        sender.status("mon-sfc")


class HungPeer:
    """A peer that takes every push and never answers (its deadline passes)."""

    def __init__(self):
        self.calls = 0

    async def PushDeltas(self, req, timeout):
        self.calls += 1
        await asyncio.sleep(timeout)
        raise TimeoutError("deadline exceeded")


def test_a_peer_that_does_not_answer_costs_the_others_nothing(tmp_path):
    here, there = two_nodes(tmp_path)
    mine = dp.StateTable(here.state_dir, NS, "hosts")
    mine.put(host(1), word(4))
    mine.close()
    live, hung = LossyPeer(peer_state.Receiver(there.state_dir), lose=[]), HungPeer()
    sender = sender_to(here, {"h:1": hung, "b:1": live})

    async def period():
        push = asyncio.ensure_future(sender.push_sfc("mon-sfc", spec=SPEC))
        await asyncio.sleep(peer_state.PUSH_TIMEOUT_S / 4)
        assert live.calls == 1 and hung.calls == 1 and not push.done()  # b already has it
        assert await push is False
    asyncio.run(period())
    assert sender.reached("mon-sfc", "b:1") and not sender.reached("mon-sfc", "h:1")
    assert "push to h failed" in sender.status("mon-sfc")
    assert {k: struct.unpack("<Q", v)[0] for k, v in
            peer_state.with_peers(there, NS, "hosts", [])} == {host(1): 4}


def test_a_push_carries_at_most_push_bytes_of_entries(tmp_path):
    big = 100_000  # bytes a value: 10 to a push
    here, there = two_nodes(tmp_path, big)
    mine = dp.StateTable(here.state_dir, NS, "hosts")
    for i in range(25):
        mine.put(host(i), word(i).ljust(big, b"\0"))
    mine.close()
    peer = LossyPeer(peer_state.Receiver(there.state_dir), lose=[])
    sizes = []
    apply = peer.receiver.apply

    def measured(ns, sfc, req):
        sizes.append(req.ByteSize())
        return apply(ns, sfc, req)
    peer.receiver.apply = measured
    sender = sender_to(here, {"b:1": peer})
    assert asyncio.run(sender.push_sfc("mon-sfc", spec=SPEC)) is True
    assert peer.calls == 3 and max(sizes) <= peer_state.PUSH_BYTES + 4096, sizes
