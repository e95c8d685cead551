"""A release pool that ran dry, in the data plane (docs/state.md "Between servers",
rebalancing): the runtime counts the splits that moved nothing (`serpens_table_hdr.dry`,
without reading NAT's bitmaps), a split request can name one pool, and a share split off
another node's pool (by NAT's split op) and folded in here by NAT's merge op gives new flows
ports again, none of them the other node's."""
import itertools
import os

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent import peer_state, pool_rebalance
from serpens.agent.process_pool import merge_state, split_state
from serpens.agent.state_manager import StateManager

from test_xstate_pools import PORTS, flows, free_ports, nat

pytestmark = pytest.mark.dataplane

_ids = itertools.count()


def ports_out(results) -> set[int]:
    return {IP(r.data[14:])[UDP].sport for r in results if r.verdict == "out"}


def test_a_dry_pool_is_counted_and_a_peers_share_gives_new_flows_ports(
        pool, build_stock, dataplane):
    state = StateManager(dataplane.config.state_dir)
    dry_ns = f"nat-dry-{os.getpid()}-{next(_ids)}"
    rich_ns = f"nat-rich-{os.getpid()}-{next(_ids)}"
    dry = lambda: pool_rebalance.dry_count(state.path(dry_ns, "ports"))  # noqa: E731
    with nat(pool, build_stock, dry_ns) as a:
        first = ports_out(a.run(flows(10)))
        # the rich node is seeded from this one (a share of every pool, as Peer.Seed does)
        split_state(a.process)
        seeded = free_ports(state, dry_ns, "ports@out")
        data = peer_state.renamed(open(state.path(dry_ns, "ports@out"), "rb").read(), "ports")
        os.unlink(state.path(dry_ns, "ports@out"))
        peer_state.install_tables(state, rich_ns, [("ports", data)])
        assert len(seeded) == 45 and not seeded & first

        # every port left handed out by splits that each moved something: none counted dry
        rest = ports_out(a.run(flows(45, first=10)))
        assert rest == set(PORTS) - first - seeded and dry() == 0
        # one flow more: NAT triggers, the split finds the pool empty: counted, dropped
        assert ports_out(a.run(flows(1, first=55))) == set()
        assert dry() >= 1 and a.counters["pool_exhausted"] >= 1
        seen = dry()
        assert ports_out(a.run(flows(1, first=55))) == set()
        assert dry() > seen                      # still dry: counted again
        # its own split has nothing to give: an all-zero share
        split_state(a.process, only=f"{dry_ns}/ports")
        assert pool_rebalance.is_all_zero(state, dry_ns, "ports@out")
        os.unlink(state.path(dry_ns, "ports@out"))

        with nat(pool, build_stock, rich_ns) as b:
            b_taken = ports_out(b.run(flows(10, first=100)))
            assert len(b_taken) == 10 and b_taken <= seeded
            # a split request naming another pool splits nothing; naming this one, it
            split_state(b.process, only=f"{rich_ns}/nothing-of-that-name")
            assert not os.path.exists(state.path(rich_ns, "ports@out"))
            split_state(b.process, only=f"{rich_ns}/ports")
            share = free_ports(state, rich_ns, "ports@out")
            assert len(share) == 18 and share <= seeded - b_taken
            assert not pool_rebalance.is_all_zero(state, rich_ns, "ports@out")
            data = peer_state.renamed(open(state.path(rich_ns, "ports@out"), "rb").read(),
                                      "ports")
            os.unlink(state.path(rich_ns, "ports@out"))

            # the share folded in here (NAT's merge op at a merge request): new flows get
            # ports again, every one from the share, none the rich node kept or gave out
            peer_state.install_tables(state, dry_ns, [("ports", data)])
            merge_state([a.process])
            got = ports_out(a.run(flows(10, first=56)))
            assert len(got) == 10 and got <= share
            assert not got & (free_ports(state, rich_ns, "ports") | b_taken)
            after = dry()
            assert len(ports_out(a.run(flows(5, first=66)))) == 5 and dry() == after
