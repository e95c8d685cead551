"""controller/drain.py's choices, alone: the order servers joined (scale-in removes the last
first), where a leaving server's flows go, and the records drain and move keep in etcd."""
import pytest

from serpens.common.records import (CordonRecord, MalformedRecord, MoveRecord, SFCStatus,
                                    decode)
from serpens.controller import placement
from serpens.controller.drain import joined_order, rank_joined, target_for

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_servers_keep_the_order_they_joined_and_new_ones_follow_by_name():
    assert joined_order((), {"b", "a"}) == ("a", "b")
    assert joined_order(("c", "a"), {"a", "b", "c"}) == ("c", "a", "b")
    assert joined_order(("c", "a", "b"), {"a", "b"}) == ("a", "b")   # c left


def test_scale_in_keeps_the_servers_that_joined_first():
    joined = ("n3", "n1", "n2")               # n2 joined last, n1 before it
    ranked = sorted(["n1", "n2", "n3"], key=lambda n: rank_joined(joined, n))
    assert ranked == ["n3", "n1", "n2"]
    assert rank_joined(joined, "n9") == 3     # one not known yet comes after them all
    # placement.split takes the candidates best first: 3 servers -> 2 drops n2
    shares = placement.split(2, [(n, None) for n in ranked], spread=3)
    assert shares == {"n3": 1, "n1": 1}


def test_a_leaving_servers_flows_go_to_the_staying_server_with_most_replicas():
    assert target_for("s2", {"s1": 2, "s3": 3}) == "s3"
    assert target_for("s2", {"s1": 2, "s3": 2}) == "s1"   # ties: by name
    assert target_for("s2", {"s2": 4, "s1": 1}) == "s1"   # never itself
    assert target_for("s2", {"s2": 4}) is None
    assert target_for("s2", {}) is None


def test_cordon_move_and_status_records_round_trip_and_refuse_what_no_writer_writes():
    c = CordonRecord(node="s2", since=1.5)
    assert decode("cordon", c.encode(), "s2") == c
    with pytest.raises(MalformedRecord, match="node"):
        decode("cordon", c.encode(), "s3")       # under another node's key
    m = MoveRecord(sfc="web", node="s1", asked_at=2.0)
    assert decode("move", m.encode(), "web") == m
    with pytest.raises(MalformedRecord, match="node"):
        decode("move", '{"sfc": "web", "node": "Bad Name"}', "web")
    s = SFCStatus("Running", node="s1", joined=("s1", "s2"), moving_to="s2", moves=3)
    assert SFCStatus.decode(s.encode()) == s
    assert "joined" not in SFCStatus("Running").encode()   # as older versions wrote it
    with pytest.raises(MalformedRecord, match="joined"):
        SFCStatus.decode('{"phase": "Running", "joined": ["Not A Node"]}')


def test_a_moves_outcome_names_the_sources_whose_flows_did_not_move():
    from serpens.controller.drain import HandOverFailed, MoveOutcome
    o = MoveOutcome(asked_at=1.0)
    o.note(["s1"], {"s1": HandOverFailed("source s1: UNAVAILABLE")})   # aborted: retried
    o.note(["s2"], {})                                                  # s2 handed over
    # s1 still live when the move ended: it handed its flows over on a retry, nothing lost
    assert o.error(("s1", "s2"), "s3", live={"s1", "s3"}) == ""
    # s1 lost before it handed them over: they went with it
    assert o.error(("s1", "s2"), "s3", live={"s3"}) == \
        "flows of s1 not moved: lost with the node (new flows go to s3)"
    o.note(["s1"], {"s1": HandOverFailed("gateway gw: commit failed", state_left=True)})
    o.note(["s1"], {})
    assert o.error(("s1", "s2"), "s3", live={"s3"}) == \
        "flows of s1 lost their state: gateway gw: commit failed"


def test_a_move_record_keeps_its_sources():
    m = MoveRecord(sfc="web", node="s3", asked_at=2.0, sources=("s1", "s2"))
    assert decode("move", m.encode(), "web") == m
    assert "sources" not in MoveRecord(sfc="web", node="s3").encode()
    with pytest.raises(MalformedRecord, match="sources"):
        decode("move", '{"sfc": "web", "node": "s3", "sources": ["Bad Name"]}', "web")
    s = SFCStatus("Degraded", node="s1", stuck="cordoned s1 cannot be drained", moves=1,
                  move_error="flows of s2 not moved")
    assert SFCStatus.decode(s.encode()) == s
