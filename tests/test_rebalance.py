"""Release pools rebalanced between servers (issue 14 item 2: "rebalanced by trigger/timer
across servers as within one"; docs/state.md "Between servers"), end to end with the real
programs (the cluster of tests/test_xstate.py: etcd, controller, gateway and two agents in
namespaces). NAT has 64 ports on one external IP. The first server maps 40 flows alone, then
the second joins (seeded with half of the 24 left: 12 ports) and the first's mappings expire:
the first holds 52 free ports, the second 12. New flows spread over both; the second runs dry
after 12 and, without rebalancing, would drop every further new flow. Checked: every new flow
gets a mapping (the second's agent got a share of the first's pool: Peer.SharePool), no
(ip, port) is given to two flows, and no port is free or mapped on both servers."""
import json
import struct
import time

import grpc
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from serpens.cli import multi
from serpens.common.bulk import pieces
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.cluster import status, wait_until
from support.packets import eth
import test_xstate as xs
from test_xstate import MAGIC, cluster, frames, logs, mark  # noqa: F401 (cluster: a fixture)

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300)]

SFC = "rb-fw-mon-nat"
EXT = "203.0.113.1"
PORTS = range(1024, 1088)        # 64 ports


def sfc_spec(servers: int, idle_timeout: float, name: str = SFC) -> str:
    doc = json.loads(multi.spread_sfc(servers))
    doc["metadata"]["name"] = name
    nat = doc["spec"]["nfs"]["nat"]["config"]
    nat.update(external_ips=[EXT], port_range=f"{PORTS[0]}-{PORTS[-1]}",
               idle_timeout=idle_timeout)
    doc["spec"]["scale"] = {"min": servers, "max": servers}
    return json.dumps(doc)


def apply(c, servers: int, idle_timeout: float = 300, name: str = SFC):
    c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=sfc_spec(servers, idle_timeout, name)),
                               timeout=10)

    def runs(s):
        return [a.sfcs()[name].generation for a in c.agents.values() if name in a.sfcs()] \
            == [s.generation] * servers
    wait_until(lambda: (s := status(c.controller.stub, name)).phase == "Running"
               and max(1, len(s.nodes)) == servers and
               (r := c.gateway.status().sfcs.get(name)) and len(r.servers) == servers
               and runs(s), 60, lambda: logs(c))


def free_ports(c, node: str, name: str = SFC) -> set[int]:
    """The free ports of the node's NAT pool (its one external address)."""
    return set().union(*xs.free_ports(c, node, name).values())


def mapped_ports(c, node: str, name: str = SFC) -> set[int]:
    return {port for _, port in xs.mapped_ports(c, node, name)}


def until_out(c, flows, seconds: float = 20.0):
    """Send one frame of each flow not out yet, again and again, until every flow came out
    of the gateway's egress: ({flow: (ip, port)}, {flow: server})."""
    pairs, server = {}, {}
    for tap in c.taps:
        tap.drain()
    deadline = time.monotonic() + seconds
    while len(pairs) < len(flows) and time.monotonic() < deadline:
        todo = [f for f in flows if f not in pairs]
        want = set(todo)
        ours = lambda fr: (m := mark(fr)) is not None and m[0] in want  # noqa: E731
        c.ingress.send(frames(todo, 1))
        for fr in c.egress.collect(ours, until=lambda got: len(got) >= len(todo), seconds=0.4):
            p = Ether(fr)
            pair = (p[IP].src, p[UDP].sport)
            assert pairs.setdefault(mark(fr)[0], pair) == pair, "a flow with two pairs"
        for fr in c.underlay.collect(ours, seconds=0.05):
            dst = Ether(fr)[IP].dst
            if dst in c.server_of_ip:
                server[mark(fr)[0]] = c.server_of_ip[dst]
    return pairs, server


def test_a_server_whose_pool_ran_dry_gets_a_share_of_the_other_servers(cluster):
    c = cluster
    apply(c, 1)
    (first,) = [s for s, a in c.agents.items() if SFC in a.sfcs()]
    (second,) = set(c.agents) - {first}
    old, _ = until_out(c, range(0, 40))
    assert len(old) == 40, logs(c)

    apply(c, 2)                          # the second: half of the 24 ports left
    assert len(free_ports(c, second)) == 12 and len(free_ports(c, first)) == 12

    apply(c, 2, idle_timeout=1)          # the first's 40 mappings expire: 52 ports free there
    time.sleep(2.5)
    noise = [bytes(eth() / IP(src="198.51.100.9", dst=EXT)
                   / UDP(sport=53, dport=PORTS[i % len(PORTS)])
                   / struct.pack("!III", MAGIC, 900000 + i, 0)) for i in range(64)]
    wait_until(lambda: c.ingress.send(noise, per_ms=4) or not mapped_ports(c, first), 20,
               lambda: logs(c))
    apply(c, 2)
    rich, poor = free_ports(c, first), free_ports(c, second)
    assert len(rich) == 52 and len(poor) == 12 and not rich & poor

    new, server = until_out(c, range(100, 150))
    on_second = sum(1 for f in new if server.get(f) == second)
    assert len(new) == 50, f"{50 - len(new)} new flows got no mapping\n{logs(c)}"
    assert on_second > 12, f"only {on_second} new flows went to {second}: it never ran dry"
    assert c.agents[second].sfcs()[SFC].pool_shares >= 1, logs(c)
    assert c.agents[first].sfcs()[SFC].pool_shares == 0
    pairs = list(new.values())
    assert len(set(pairs)) == len(pairs), "one external (ip, port) for two flows"
    assert {ip for ip, _ in pairs} == {EXT} and {p for _, p in pairs} <= set(PORTS)
    held = {s: mapped_ports(c, s) for s in (first, second)}
    free = {s: free_ports(c, s) for s in (first, second)}
    assert not held[first] & held[second], "a port mapped on both servers"
    assert not (held[first] | free[first]) & (held[second] | free[second]), \
        "a port in both servers' hands"
    assert held[first] | held[second] | free[first] | free[second] == set(PORTS), \
        "a port lost"


def test_a_share_of_a_pool_that_is_not_there_is_refused_naming_the_field(cluster):
    """Peer.SharePool (the controller's identity may call the Peer service too)."""
    c = cluster
    apply(c, 1)
    (node,) = [s for s, a in c.agents.items() if SFC in a.sfcs()]
    peer = pb_grpc.PeerStub(c.agents[node].channel)
    before = free_ports(c, node)
    for req, code, field in (
            (pb.SharePoolRequest(sfc="no-such-sfc", nf="nat", table="ports"),
             grpc.StatusCode.FAILED_PRECONDITION, "sfc:"),
            (pb.SharePoolRequest(sfc=SFC, nf="no-such-nf", table="ports"),
             grpc.StatusCode.NOT_FOUND, "nf:"),
            (pb.SharePoolRequest(sfc=SFC, nf="nat", table="out"),   # a per-flow table
             grpc.StatusCode.NOT_FOUND, "table:"),
            (pb.SharePoolRequest(sfc=SFC, nf="nat", table="ports@out"),
             grpc.StatusCode.NOT_FOUND, "table:")):
        with pytest.raises(grpc.RpcError) as e:
            peer.SharePool(req, timeout=10)
        assert e.value.code() == code and e.value.details().startswith(field), e.value
    assert free_ports(c, node) == before          # nothing split off
    reply = peer.SharePool(pb.SharePoolRequest(sfc=SFC, nf="nat", table="ports"), timeout=10)
    got = reply.share                             # a real share: gone from the pool
    assert not reply.empty and got.size > 0 and len(free_ports(c, node)) < len(before)
    peer.ReturnState(pieces(pb.ReturnStateRequest(sfc=SFC, node="test", nfs=[
        pb.NFTables(nf="nat", tables=[got])])), timeout=10)
    assert free_ports(c, node) == before          # and back whole

    # askers that go before the answer (their deadline passed while the share was being
    # split off, or is too close to answer safely: agent/service.py SHARE_ANSWER_S) take
    # nothing with them: the share goes back into the pool
    for ms in (1, 2, 5, 10, 20, 40, 80, 160):
        try:
            got = peer.SharePool(pb.SharePoolRequest(sfc=SFC, nf="nat", table="ports"),
                                 timeout=ms / 1000).share
            peer.ReturnState(pieces(pb.ReturnStateRequest(sfc=SFC, node="test", nfs=[
                pb.NFTables(nf="nat", tables=[got])])), timeout=10)   # (answered in time)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    wait_until(lambda: free_ports(c, node) == before, 10, lambda: logs(c))


def each_port_in_one_hand(c, name: str, settle: float = 10.0) -> dict[str, set[int]]:
    """Every port of the pool is free or mapped on exactly one server of SFC `name` (pools
    and NAT's "in" table read through ReadState); {server: ports it maps}. A port on two
    servers fails at once; a port on none is waited for up to `settle` s (a leaving server
    returns its pool after it stopped running the SFC)."""
    deadline = time.monotonic() + settle
    while True:
        nodes = [s for s, a in c.agents.items() if name in a.sfcs()]
        held = {s: mapped_ports(c, s, name) for s in nodes}
        free = {s: free_ports(c, s, name) for s in nodes}
        for s in nodes:
            assert not held[s] & free[s], f"{s}: ports free and mapped {sorted(held[s] & free[s])}"
        for i, a in enumerate(nodes):
            for b in nodes[i + 1:]:
                both = (held[a] | free[a]) & (held[b] | free[b])
                assert not both, f"ports {sorted(both)[:8]}... free or mapped on {a} and {b}"
        lost = set(PORTS) - set().union(*held.values(), *free.values())
        if not lost:
            return held
        assert time.monotonic() < deadline, f"ports lost: {sorted(lost)}\n{logs(c)}"
        time.sleep(0.2)


def test_scaled_out_in_and_out_no_port_is_on_two_servers(cluster):
    """Issue 14 review: a spread SFC started on two servers at once gave each of them NAT's
    whole pool (both ran NAT's init(): nobody had the state to seed them from), so one
    (ip, port) went to two flows. Out (both at once), in, out again: after every step each
    port is in one server's hands, and no two flows share a pair."""
    c = cluster
    gone(c, SFC)                               # the same match: one SFC at a time
    name = "np-fw-mon-nat"                     # never ran: no server has its tables
    flows = range(200, 232)
    apply(c, 2, name=name)
    each_port_in_one_hand(c, name)
    for step in (1, 2):
        pairs, _ = until_out(c, flows)
        assert len(pairs) == len(flows), logs(c)
        assert len(set(pairs.values())) == len(pairs), "one external (ip, port) for two flows"
        held = each_port_in_one_hand(c, name)
        assert sum(len(h) for h in held.values()) >= len(flows)
        apply(c, step, name=name)              # in to one server, then out to two again
        each_port_in_one_hand(c, name)
    pairs, _ = until_out(c, range(200, 248))   # the old flows and new ones over both
    assert len(pairs) == 48 and len(set(pairs.values())) == 48, \
        "one external (ip, port) for two flows"
    each_port_in_one_hand(c, name)
    gone(c, name)


def gone(c, name: str):
    try:
        c.controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=name), timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    wait_until(lambda: name not in c.gateway.status().sfcs and
               not any(name in a.sfcs() for a in c.agents.values()), 60, lambda: logs(c))
