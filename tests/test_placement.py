"""A routed SFC's placement arithmetic (controller/placement.py) and its tag allocation
(controller/routes.py): replicas split over up to `spread` nodes, each at least 1; spread 1
spilling only what the first node's pool cannot hold; the smallest free tag, never the same
one for two SFCs."""
import asyncio

import pytest

from serpens.common.records import RouteRecord
from serpens.controller import placement
from serpens.controller.routes import MAX_TAG, Routes, smallest_free

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

split = placement.split


def test_spread_divides_replicas_evenly_over_the_first_nodes():
    nodes = [("a", None), ("b", None), ("c", None)]
    assert split(4, nodes, 2) == {"a": 2, "b": 2}
    assert split(5, nodes, 2) == {"a": 3, "b": 2}
    assert split(7, nodes, 3) == {"a": 3, "b": 2, "c": 2}
    assert split(2, nodes, 8) == {"a": 1, "b": 1}      # never more nodes than replicas
    assert split(9, nodes[:1], 4) == {"a": 9}          # nor than candidates
    assert list(split(3, [("z", None), ("a", None)], 2)) == ["z", "a"]  # the order given


def test_spread_asks_no_node_for_more_than_its_pool_holds():
    # the one node left of a spread SFC keeps what its pool holds (never more than asked,
    # never less than one: it is placed), however many replicas the record asks for
    assert split(2, [("a", 1)], 2) == {"a": 1}
    assert split(6, [("a", 1), ("b", 5)], 2) == {"a": 1, "b": 3}
    assert split(4, [("a", 0), ("b", None)], 2) == {"a": 1, "b": 2}


def test_spread_one_stays_on_the_first_node_while_its_pool_holds_the_replicas():
    assert split(3, [("a", 3), ("b", 8)], 1) == {"a": 3}
    assert split(3, [("a", None), ("b", 8)], 1) == {"a": 3}    # unknown: as good as enough
    assert split(5, [("a", 2), ("b", 2), ("c", 9)], 1) == {"a": 2, "b": 2, "c": 1}
    assert split(5, [("a", 2), ("b", 0), ("c", 9)], 1) == {"a": 2, "c": 3}   # b has no room
    # what no node holds is asked of none (the SFC runs Degraded with fewer instances)
    assert split(6, [("a", 2), ("b", 1)], 1) == {"a": 2, "b": 1}
    # a full first node still serves one
    assert split(3, [("a", 0), ("b", 5)], 1) == {"a": 1, "b": 2}


def test_no_candidate_no_replicas_and_bad_arguments():
    assert split(3, [], 2) == {}
    assert split(0, [("a", 1), ("b", 1)], 2) == {"a": 0}
    assert placement.weights({"a": 0, "b": 3}) == {"a": 1, "b": 3}
    with pytest.raises(ValueError, match="replicas"):
        split(-1, [("a", 1)], 1)
    with pytest.raises(ValueError, match="spread"):
        split(1, [("a", 1)], 0)


def test_the_worst_phase_of_the_nodes():
    assert placement.worst_phase(["Running", "Running"]) == "Running"
    assert placement.worst_phase(["Running", "Degraded"]) == "Degraded"
    assert placement.worst_phase(["Degraded", "Pending", "Running"]) == "Pending"
    assert placement.worst_phase(["Failed", "Pending"]) == "Failed"


def test_smallest_free_tag():
    assert smallest_free([]) == 1
    assert smallest_free([1, 2, 4]) == 3
    assert smallest_free([2, 3]) == 1
    assert smallest_free(range(1, 100)) == 100
    with pytest.raises(ValueError, match="no free SFC tag"):
        smallest_free(range(1, MAX_TAG + 1))


class _Election:
    """What Routes needs of Election: put_fenced/delete_fenced returning revisions."""

    def __init__(self):
        self.leader_revision, self.revision, self.written = 7, 100, {}

    async def put_fenced(self, key, value, expected):
        await asyncio.sleep(0)  # a real write yields to the other workers
        self.revision += 1
        self.written[key] = value
        return self.revision

    async def delete_fenced(self, key, expected):
        self.revision += 1
        self.written.pop(key, None)
        return self.revision


class _Cache:
    def wrote(self, revision):
        self.revision = revision


def test_tags_are_claimed_without_a_gap_kept_and_freed_with_the_sfc():
    from serpens.common.keys import Keys

    async def go():
        routes = Routes(_Election(), Keys(), _Cache())
        # (distinct VLAN tags: a set of defaults only, the gateway could hold just one)
        routes.load({"old": RouteRecord("old", 1, vlan=1),
                     "other": RouteRecord("other", 3, vlan=3)})
        assert routes.tag("old") == 1          # an SFC keeps the tag of its record

        # many workers at once, each claiming then writing (an await between): all differ
        async def place(sfc):
            tag = routes.tag(sfc)
            await routes.put(RouteRecord(sfc, tag, vlan=tag), 0, 0.0)
            return tag
        tags = await asyncio.gather(*(place(f"s{i}") for i in range(6)))
        assert sorted(tags) == [2, 4, 5, 6, 7, 8]
        assert routes.tag("s0") == tags[0]     # the same SFC: the same tag
        assert [m.tag for m in routes.messages()] == [1, 2, 3, 4, 5, 6, 7, 8]  # by tag

        await routes.delete("other", 5, 0.0)   # deleted with its SFC: 3 is free again
        assert routes.tag("new") == 3
        claimed = routes.tag("another")        # a claim not yet written still holds its tag
        assert claimed == 9 and routes.tag("third") == 10
        await routes.delete("another", 0, 0.0)  # dropped before it was written: freed too
        assert routes.tag("fourth") == 9
        await routes.close()
    asyncio.run(go())


def test_a_route_is_admitted_only_if_the_gateway_can_hold_it_beside_the_others():
    from serpens.common.keys import Keys
    from serpens.common.route_set import MAX_RULES

    async def go():
        routes = Routes(_Election(), Keys(), _Cache())
        routes.ingress = frozenset({"wan"})
        routes.load({"web": RouteRecord("web", 1)})            # the default
        assert "only one SFC may take unmatched" in routes.admit(RouteRecord("dns", 2))
        assert routes.admit(RouteRecord("dns", 2, match=({"port": "wan"},))) is None
        # admitted, not yet written: it counts (two workers never both fit the last room)
        assert routes.admit(RouteRecord("x", 3, vlan=5)) is None
        assert "VLAN 5" in routes.admit(RouteRecord("y", 4, vlan=5))
        assert "'lan' is no gateway's ingress port" in routes.admit(
            RouteRecord("z", 5, match=({"port": "lan"},)))
        many = tuple({"dport": [k, k]} for k in range(MAX_RULES))
        assert "match rules" in routes.admit(RouteRecord("big", 6, match=many))
        for k in range(7, 30):
            routes.admit(RouteRecord(f"s{k}", k, vlan=k))
        assert len(routes._admitted) + len(routes.records) == 16  # gateway.h's SFCs at most
        # a stored set the gateway could not hold is never pushed whole
        routes.load({"a": RouteRecord("a", 1), "b": RouteRecord("b", 2)})
        assert [m.sfc for m in routes.messages()] == ["a"]
        await routes.close()
    asyncio.run(go())
