"""controller/peers.py: which node seeds a node joining an SFC, and where a leaving node's
state goes (docs/state.md "Between servers")."""
from types import SimpleNamespace

import pytest

from serpens.controller.peers import PeerPlan

pytestmark = pytest.mark.unit

RECORDS = {n: SimpleNamespace(address=f"10.0.0.{i}:7100") for i, n in enumerate("abc", 1)}


def running(*nodes, incarnation=5):
    return {n: {"sfc": SimpleNamespace(incarnation=incarnation)} for n in nodes}


def test_a_new_node_is_seeded_by_the_first_server_that_runs_it():
    plan = PeerPlan({}, "sfc", {"a": 2, "b": 1}, RECORDS, running("a"), 5)
    assert plan.seed_for("b").node == "a" and plan.seed_for("a") is None
    assert [r.node for r in plan.refs] == ["a", "b"]


def test_a_move_to_nodes_that_never_ran_it_seeds_from_the_node_leaving():
    plan = PeerPlan({}, "sfc", {"b": 1}, RECORDS, running("a"), 5)
    assert plan.seed_for("b").node == "a"
    # ... and the leaving node returns its state to a node that stays, never to itself
    assert plan.return_to(["b"]).node == "b"


def test_an_older_incarnation_seeds_nothing():
    plan = PeerPlan({}, "sfc", {"b": 1}, RECORDS, running("a", incarnation=4), 5)
    assert plan.seed_for("b") is None


def test_while_no_node_runs_it_one_node_starts_alone():
    """Started together, every node's NAT would make the whole port pool its own."""
    plan = PeerPlan({}, "sfc", {"a": 1, "b": 1, "c": 1}, RECORDS, {}, 5)
    assert plan.first_alone({"a": 1, "b": 1, "c": 1}) == ({"a": 1}, True)
    assert plan.first_alone({"b": 1}) == ({"b": 1}, False)
    # once one runs it, the others start together, seeded from it
    plan = PeerPlan({}, "sfc", {"a": 1, "b": 1, "c": 1}, RECORDS, running("a"), 5)
    assert plan.first_alone({"b": 1, "c": 1}) == ({"b": 1, "c": 1}, False)
    assert plan.seed_for("b").node == "a" and plan.seed_for("c").node == "a"
