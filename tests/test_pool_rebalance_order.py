"""Whom a node whose release pool ran dry asks, and how often (agent/pool_rebalance.py):
peers whose last answer gave something first, then the lowest dry count they reported; at
most one ask per (pool, peer) per period; a peer that had nothing, or did not answer, waits
EMPTY_BACKOFF periods and comes after the others."""
import asyncio
import time
from types import SimpleNamespace

import grpc
import pytest

from serpens.agent import pool_rebalance
from serpens.proto.serpens.v1 import serpens_pb2 as pb

pytestmark = pytest.mark.unit

PEERS = [("a", "10.0.0.1:1"), ("b", "10.0.0.2:1"), ("c", "10.0.0.3:1")]


def order(r):
    return [node for node, _ in r._order("sfc", "sfc.nat", "ports", PEERS)]


def test_peers_are_asked_most_promising_first_and_not_too_often():
    r = pool_rebalance.PoolRebalancer(node=None, peers_of=dict, stubs=None, period_s=0.5)
    assert order(r) == ["a", "b", "c"]             # nothing known: as given
    key = lambda address: ("sfc", "sfc.nat", "ports", address)  # noqa: E731
    long_ago = time.monotonic() - 100
    r.hint[key("10.0.0.1:1")] = (True, 0)           # a had nothing
    r.hint[key("10.0.0.2:1")] = (False, 7)          # b gave, often dry itself
    r.hint[key("10.0.0.3:1")] = (False, 2)          # c gave, seldom dry
    for address in ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"):
        r.asked[key(address)] = long_ago
    assert order(r) == ["c", "b", "a"]
    r.asked[key("10.0.0.3:1")] = time.monotonic()    # asked just now: not this period
    assert order(r) == ["b", "a"]
    r.asked[key("10.0.0.1:1")] = time.monotonic() - 2 * 0.5   # empty: waits 10 periods
    assert order(r) == ["b"]
    r.asked[key("10.0.0.1:1")] = time.monotonic() - pool_rebalance.EMPTY_BACKOFF * 0.5 - 0.01
    assert order(r) == ["b", "a"]


class Unanswered(grpc.RpcError):
    """What a stub raises for a peer that is down or hung."""

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self):
        return "Deadline Exceeded"


class Stub:
    def __init__(self, answer):
        self.answer, self.asked = answer, 0

    async def SharePool(self, request, timeout):
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_peer_that_does_not_answer_is_asked_after_the_others_and_not_every_period():
    stubs = {"10.0.0.1:1": Stub(Unanswered()),                                     # a: hung
             "10.0.0.2:1": Stub(pb.SharePoolResponse(empty=True, dry=7))}  # b: nothing now
    r = pool_rebalance.PoolRebalancer(node=SimpleNamespace(spec=SimpleNamespace(name="me")),
                                      peers_of=dict, stubs=stubs, period_s=0.5)
    peers = PEERS[:2]
    key = lambda address: ("sfc", "sfc.nat", "ports", address)  # noqa: E731
    r.hint[key("10.0.0.2:1")] = (False, 7)  # b gave before
    r.hint[key("10.0.0.1:1")] = (False, 0)  # a too, and said it was never dry: first
    assert [n for n, _ in r._order("sfc", "sfc.nat", "ports", peers)] == ["a", "b"]
    assert not asyncio.run(r._ask_peers("sfc", "nat", "sfc.nat", "ports", peers))
    assert [s.asked for s in stubs.values()] == [1, 1]
    assert not asyncio.run(r._ask_peers("sfc", "nat", "sfc.nat", "ports", peers))
    assert [s.asked for s in stubs.values()] == [1, 1]   # neither again this period
    for address in ("10.0.0.1:1", "10.0.0.2:1"):
        r.asked[key(address)] = time.monotonic() - pool_rebalance.EMPTY_BACKOFF * 0.5 - 0.01
    r.hint[key("10.0.0.2:1")] = (False, 7)  # (b gave again meanwhile)
    assert [n for n, _ in r._order("sfc", "sfc.nat", "ports", peers)] == ["b", "a"]
