"""Whom a node whose release pool ran dry asks, and how often (agent/pool_rebalance.py):
peers whose last answer gave something first, then the lowest dry count they reported; at
most one ask per (pool, peer) per period; a peer that had nothing waits EMPTY_BACKOFF
periods."""
import time

import pytest

from serpens.agent import pool_rebalance

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
