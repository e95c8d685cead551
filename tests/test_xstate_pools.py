"""Release pools between servers in the data plane (docs/state.md "Between servers"): a pool
process splits a share of NAT's port pool off with NAT's own split op (pool_ctl.h
split_req -> `ports@out`), and shares written back as `ports@in<k>` are folded in with NAT's
merge op, by a running instance at a merge request or by the next instance that opens the
table. Never a port in two places, never one lost."""
import itertools
import os
import struct

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent import peer_state
from serpens.agent.process_pool import merge_state, split_state
from serpens.agent.state_manager import StateManager
from serpens.nfs.nat import encode_config
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import NFHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

EXT = "192.0.2.1"
EXT_KEY = bytes([192, 0, 2, 1])
PORTS = range(2000, 2100)   # 100 ports
_ids = itertools.count()


def nat(pool, build_stock, name):
    return NFHarness(pool, NF(build_stock("nat"), name=name, config=encode_config(
        {"internal": "10.0.0.0/8", "external_ips": [EXT],
         "port_range": f"{PORTS[0]}-{PORTS[-1]}", "max_flows": 1024})))


def flows(n, first=0):
    return [bytes(eth() / IP(src="10.0.0.9", dst="198.51.100.7") / UDP(sport=5000 + i, dport=53)
                  / b"x") for i in range(first, first + n)]


def free_ports(state: StateManager, ns: str, table: str) -> set[int]:
    """The ports set in every entry of table `table` (a pool or a share)."""
    t = state.open(ns, table)
    try:
        ports = set()
        for key, bitmap in t.items():
            assert key == EXT_KEY
            words = struct.unpack(f"<{len(bitmap) // 8}Q", bitmap)
            ports |= {w * 64 + b for w, word in enumerate(words) for b in range(64)
                      if word >> b & 1}
        return ports
    finally:
        t.close()


def test_a_split_share_and_its_return_keep_every_port_in_exactly_one_place(
        pool, build_stock, dataplane):
    state = StateManager(dataplane.config.state_dir)
    ns = f"nat-xstate-{os.getpid()}-{next(_ids)}"
    with nat(pool, build_stock, ns) as h:
        out = h.run(flows(10))
        taken = {IP(r.data[14:])[UDP].sport for r in out if r.verdict == "out"}
        assert len(taken) == 10
        split_state(h.process)
        assert ("ports@out",) == tuple(t for n, t in state.tables() if n == ns and "@o" in t)
        share, pool_left = free_ports(state, ns, "ports@out"), free_ports(state, ns, "ports")
        # NAT's split: half of the free ports (rounded up), disjoint from what stays
        assert len(share) == 45 and len(pool_left) == 45 and not share & pool_left
        assert share | pool_left | taken == set(PORTS)

        # the share comes back from "another server" while an instance runs: folded in at
        # the next merge request by NAT's merge op
        data = peer_state.renamed(open(state.path(ns, "ports@out"), "rb").read(), "ports")
        os.unlink(state.path(ns, "ports@out"))
        assert peer_state.install_tables(state, ns, [("ports", data)]) == 1
        assert os.path.exists(state.path(ns, "ports@in0"))
        merge_state([h.process])
        assert not os.path.exists(state.path(ns, "ports@in0"))
        assert free_ports(state, ns, "ports") == set(PORTS) - taken

        # a split that was never shipped goes back into the pool at the next split
        split_state(h.process)
        split_state(h.process)
        assert len(free_ports(state, ns, "ports@out")) == 45
        assert free_ports(state, ns, "ports@out") | free_ports(state, ns, "ports") == \
            set(PORTS) - taken
        data = peer_state.renamed(open(state.path(ns, "ports@out"), "rb").read(), "ports")
        os.unlink(state.path(ns, "ports@out"))

    # returned while no instance runs: the next instance that opens the pool folds it in
    peer_state.install_tables(state, ns, [("ports", data)])
    with nat(pool, build_stock, ns) as h:
        h.run(flows(1, first=10))
        assert not os.path.exists(state.path(ns, "ports@in0"))
    assert len(free_ports(state, ns, "ports")) == 100 - 11


def test_a_share_of_another_shape_is_refused_before_anything_is_written(dataplane):
    state = StateManager(dataplane.config.state_dir)
    ns = f"nat-xstate-shape-{os.getpid()}"
    with pytest.raises(peer_state.PeerStateError, match="cut short"):
        peer_state.install_tables(state, ns, [("ports", b"x" * 100)])
    with pytest.raises(peer_state.PeerStateError, match="bad table name"):
        peer_state.install_tables(state, ns, [("../ports", b"x" * 5000)])
    assert [t for n, t in state.tables() if n == ns] == []
    from serpens.runtime_cy import _dataplane as dp
    rel = dp.GLOBAL | dp.WRITE | dp.RELEASE
    dp.StateTable(state.state_dir, ns, "ports", rel, 4, 8, 4).close()
    dp.StateTable(state.state_dir, ns + "-other", "ports", rel, 4, 16, 4).close()
    other = open(state.path(ns + "-other", "ports"), "rb").read()
    with pytest.raises(peer_state.PeerStateError, match="another shape"):
        peer_state.install_tables(state, ns, [("ports", other)])
    broken = bytearray(other)
    struct.pack_into("<I", broken, 36, 4096)   # slot_size: slots past the file's end
    with pytest.raises(peer_state.PeerStateError, match="inconsistent header"):
        peer_state.install_tables(state, ns, [("ports", bytes(broken))])
    assert [t for n, t in state.tables() if n == ns] == ["ports"]   # nothing written


def test_read_tables_are_copied_and_a_leaving_node_returns_every_share(tmp_path):
    """Seed's read tables replace the new node's; a node leaving returns its pool with
    what is not in it yet (an unshipped `@out`, unfolded `@in<k>`, a crashed instance's
    replica), and no empty side table."""
    from types import SimpleNamespace
    from serpens.runtime_cy import _dataplane as dp
    src, dst = StateManager(str(tmp_path / "a")), StateManager(str(tmp_path / "b"))
    ns = "ids-sfc.ids"
    rd = dp.StateTable(src.state_dir, ns, "patterns", dp.GLOBAL | dp.READ, 8, 8, 16)
    rd.put(b"pattern1", b"verdict1")
    rd.close()
    dp.StateTable(dst.state_dir, ns, "patterns", dp.GLOBAL | dp.READ, 8, 8, 16).close()
    peer_state.install_tables(dst, ns, [("patterns", open(src.path(ns, "patterns"), "rb").read())])
    copied = dst.open(ns, "patterns")
    assert copied.items() == [(b"pattern1", b"verdict1")]
    copied.close()

    rel = dp.GLOBAL | dp.WRITE | dp.RELEASE
    for name, value in (("pool", 10), ("pool@out", 3), ("pool@in0", 2), ("pool@r7", 1)):
        t = dp.StateTable(src.state_dir, ns, name, rel, 4, 8, 4)
        t.put(b"key1", struct.pack("<Q", value))
        t.close()
    dp.StateTable(src.state_dir, ns, "pool@r8", rel, 4, 8, 4).close()   # empty: given back
    spec = SimpleNamespace(nfs={"ids": None}, state_namespace=lambda nf: f"ids-sfc.{nf}")
    ((nf, tables),) = peer_state.pools_to_return(src, spec)
    assert nf == "ids" and sorted(t for t, _ in tables) == ["pool"] * 4
    assert peer_state.install_tables(dst, ns, tables) == 4
    shares = sorted(t for n, t in dst.tables() if n == ns and t.startswith("pool"))
    assert shares == ["pool@in0", "pool@in1", "pool@in2", "pool@in3"]
    total = 0
    for t in shares:
        table = dst.open(ns, t)
        total += struct.unpack("<Q", table.get(b"key1"))[0]
        table.close()
    assert total == 16
