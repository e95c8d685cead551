"""State between servers (issue 14 item 2), end to end with the real programs: etcd and
`serpens-controller` on the host, `serpens-gateway` and two `serpens-agent`s each in its own
network namespace (cli/testbed.py), VXLAN between them. FW -> MON -> NAT is scaled from one
server to two and back (placement.spread 1 -> 2 -> 1).

Checked: the new server is seeded from the first (a share of NAT's port pool split off by
NAT's own split op); NAT over two servers never gives one external (ip, port) to two flows and
every mapping made before the scale-out keeps working (the pairs seen at the gateway's
egress); MON's per-host totals read on either server (ReadState, after a delta period), and
so through the API (`serpensctl state dump`), equal the packets sent, exactly; after scale-in the leaving server's pool is back on the first and
every port is free there again once the mappings expired (none lost, none twice). A
restarted agent resends its counts and nothing counts twice."""
import collections
import json
import os
import struct
import time

import grpc
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from serpens.cli import multi
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import status, wait_until
from support.gateway_bed import gateway_cluster
from support.packets import eth

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(400),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

SERVERS = ("s1", "s2")
SFC = "xs-fw-mon-nat"
MAGIC = 0x58535441              # marks the test's frames (in the UDP payload)
EXTERNAL = ("203.0.113.1", "203.0.113.2")
PORTS = range(1024, 1280)       # 256 ports per external IP
HOSTS = 8                       # internal hosts: each one's flows land on both servers


def sfc_spec(servers: int, idle_timeout: float = 300) -> str:
    doc = json.loads(multi.spread_sfc(servers))
    doc["metadata"]["name"] = SFC
    doc["spec"]["nfs"]["nat"]["config"]["port_range"] = f"{PORTS[0]}-{PORTS[-1]}"
    doc["spec"]["nfs"]["nat"]["config"]["idle_timeout"] = idle_timeout
    doc["spec"]["scale"] = {"min": servers, "max": servers}
    return json.dumps(doc)


def frames(flows, packets: int, first_seq: int = 0) -> list[bytes]:
    """`packets` frames of each flow; flow f comes from host f % HOSTS, port 2000 + f."""
    return [bytes(eth() / IP(src=f"10.7.0.{f % HOSTS + 1}", dst="198.51.100.9")
                  / UDP(sport=2000 + f, dport=53) / struct.pack("!III", MAGIC, f, s))
            for s in range(first_seq, first_seq + packets) for f in flows]


def mark(frame: bytes):
    p = Ether(frame)
    if VXLAN in p:
        p = p[VXLAN].payload
    if UDP not in p:
        return None
    payload = bytes(p[UDP].payload)
    if len(payload) < 12 or struct.unpack("!I", payload[:4])[0] != MAGIC:
        return None
    return struct.unpack("!II", payload[4:12])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with gateway_cluster("x", SERVERS, tmp_path_factory.mktemp("xstate"),
                         agent_args=["--delta-period-ms", "100"]) as c:
        yield c


def logs(c) -> str:
    return "\n".join(f"--- {name}\n{a.output()[-3000:]}" for name, a in c.agents.items()) + \
        "\n--- controller\n" + c.controller.output()[-3000:]


def apply(c, servers: int, **kw):
    """Apply the SFC on `servers` servers; wait until exactly those run its generation."""
    c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=sfc_spec(servers, **kw)), timeout=10)

    def runs(s):
        return [a.sfcs()[SFC].generation for a in c.agents.values() if SFC in a.sfcs()] == \
            [s.generation] * servers
    wait_until(lambda: (s := status(c.controller.stub, SFC)).phase == "Running"
               and max(1, len(s.nodes)) == servers and
               (r := c.gateway.status().sfcs.get(SFC)) and len(r.servers) == servers
               and runs(s), 60, lambda: logs(c))


def inbound_noise(n: int, first: int = 0) -> list[bytes]:
    """Replies to pairs nobody maps: NAT drops them ("no_mapping"), and sweeps meanwhile."""
    return [bytes(eth() / IP(src="198.51.100.9", dst=EXTERNAL[i % 2])
                  / UDP(sport=53, dport=PORTS[(first + i) % len(PORTS)])
                  / struct.pack("!III", MAGIC, 900000 + first + i, 0)) for i in range(n)]


def through(c, sent, seconds=15.0):
    """Send frames into the gateway; ({flow: server}, {flow: {(ip, port)}} at the egress)."""
    for tap in c.taps:
        tap.drain()
    flows = {mark(f)[0] for f in sent}
    ours = lambda f: (m := mark(f)) is not None and m[0] in flows  # noqa: E731
    c.ingress.send(sent)
    out = c.egress.collect(ours, until=lambda got: len(got) >= len(sent), seconds=seconds)
    out += c.egress.collect(ours, seconds=0.3)
    assert len(out) == len(sent), f"{len(out)} of {len(sent)} frames came out\n{logs(c)}"
    under = c.underlay.collect(ours, until=lambda got: len(got) >= 2 * len(sent), seconds=5)
    server = {}
    for frame in under:
        p = Ether(frame)
        if p[IP].dst in c.server_of_ip:
            assert server.setdefault(mark(frame)[0], c.server_of_ip[p[IP].dst]) == \
                c.server_of_ip[p[IP].dst], "a flow went to two servers"
    pairs = collections.defaultdict(set)
    for frame in out:
        p = Ether(frame)
        pairs[mark(frame)[0]].add((p[IP].src, p[UDP].sport))
    return server, dict(pairs)


def read(c, node: str, nf: str, table: str, name: str = SFC) -> list:
    reply = c.agents[node].stub.ReadState(pb.ReadStateRequest(
        sfc=name, nf=nf, table=table, merge=True, limit=100000), timeout=10)
    (t,) = reply.tables
    return list(t.entries)


def host_totals(c, node: str) -> dict:
    return {json.loads(e.decoded)["host"]: json.loads(e.decoded)["packets"]
            for e in read(c, node, "mon", "hosts")}


def free_ports(c, node: str, name: str = SFC) -> dict:
    """{external ip: {free ports}} of the node's NAT pool."""
    out = {}
    for e in read(c, node, "nat", "ports", name):
        words = struct.unpack(f"<{len(e.value) // 8}Q", e.value)
        out[".".join(map(str, e.key))] = {w * 64 + b for w, word in enumerate(words)
                                          for b in range(64) if word >> b & 1}
    return out


def mapped_ports(c, node: str, name: str = SFC) -> set:
    """{(external ip, port)} the node's live NAT mappings hold ("in": pair -> flow)."""
    return {(".".join(map(str, e.key[:4])), struct.unpack("!H", e.key[4:6])[0])
            for e in read(c, node, "nat", "in", name)}


def test_state_is_split_counted_and_returned_across_two_servers(cluster):
    c = cluster
    apply(c, 1)
    (first,) = [s for s, a in c.agents.items() if SFC in a.sfcs()]
    (second,) = set(SERVERS) - {first}
    sent = collections.Counter()
    old = range(0, 96)
    served, before = through(c, frames(old, 2))
    sent.update(f"10.7.0.{f % HOSTS + 1}" for f in old for _ in range(2))
    assert set(served.values()) == {first}
    assert all(len(p) == 1 for p in before.values())
    full = {ip: set(PORTS) for ip in EXTERNAL}
    free = free_ports(c, first)
    assert set(free) == set(EXTERNAL)
    assert sum(map(len, free.values())) == 2 * len(PORTS) - len(old)

    # scale out: the second server is seeded with a share of the first's pool
    apply(c, 2)
    seeded, kept = free_ports(c, second), free_ports(c, first)
    held = mapped_ports(c, first)
    for ip in EXTERNAL:
        assert not seeded[ip] & kept[ip], f"{ip}: a port free on both servers"
        assert seeded[ip] and kept[ip], f"{ip}: one server got no share"
        assert not (seeded[ip] | kept[ip]) & {p for i, p in held if i == ip}
        assert seeded[ip] | kept[ip] | {p for i, p in held if i == ip} == full[ip]

    new = range(1000, 1240)
    served, after = through(c, frames(old, 2, first_seq=2) + frames(new, 2))
    sent.update(f"10.7.0.{f % HOSTS + 1}" for f in list(old) + list(new) for _ in range(2))
    assert {served[f] for f in old} == {first}, "a flow that existed moved"
    assert {served[f] for f in new} == {first, second}, "new flows did not spread"
    assert all(after[f] == before[f] for f in old), "an existing mapping changed"
    assert all(len(after[f]) == 1 for f in after), "a flow with two external pairs"
    pairs = [next(iter(p)) for p in after.values()]
    assert len(set(pairs)) == len(pairs), "one external (ip, port) for two flows"
    assert {ip for ip, _ in pairs} <= set(EXTERNAL) and {p for _, p in pairs} <= set(PORTS)

    # MON's per-host counts: each server counted its own; either shows the cluster's totals
    def exact(node):
        got = host_totals(c, node)
        assert all(got.get(h, 0) <= n for h, n in sent.items()), (node, got, sent)
        return got == dict(sent)
    for node in SERVERS:
        wait_until(lambda: exact(node), 10, lambda: f"{node}: {host_totals(c, node)} "
                   f"!= {dict(sent)}\n{logs(c)}")
    time.sleep(0.5)   # more periods pass: pushes go on, nothing counts twice
    assert all(host_totals(c, node) == dict(sent) for node in SERVERS)
    dump = c.controller.stub.ReadState(pb.ReadStateRequest(   # `serpensctl state dump`
        sfc=SFC, nf="mon", table="hosts", merge=True), timeout=10)
    assert {json.loads(e.decoded)["host"]: json.loads(e.decoded)["packets"]
            for e in dump.tables[0].entries} == dict(sent)
    for node in SERVERS:   # each server's, by name (`serpensctl state dump --node`)
        dump = c.controller.stub.ReadState(pb.ReadStateRequest(
            sfc=SFC, nf="mon", table="hosts", merge=True, node=node), timeout=10)
        assert dump.node == node and {json.loads(e.decoded)["host"]: json.loads(
            e.decoded)["packets"] for e in dump.tables[0].entries} == dict(sent), node
    with pytest.raises(grpc.RpcError) as e:
        c.controller.stub.ReadState(pb.ReadStateRequest(sfc=SFC, nf="mon", node="elsewhere"),
                                    timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION \
        and "not on 'elsewhere'" in e.value.details(), e.value.details()
    agent_sfc = {s: c.agents[s].sfcs()[SFC] for s in SERVERS}
    assert all(a.deltas_pushed > 0 and a.deltas_applied > 0 and a.peer_state == ""
               for a in agent_sfc.values()), agent_sfc

    # the second agent restarts (its tables stay in its state directory): it resends all
    # its counts in a new epoch, and nothing counts twice
    code = c.agents[second].stop()
    assert code == 0, c.agents[second].output()[-3000:]
    c.start_agent(second)   # the same node file and flags
    wait_until(lambda: SFC in c.agents[second].sfcs() and
               len(c.gateway.status().sfcs[SFC].servers) == 2, 60, lambda: logs(c))
    wait_until(lambda: c.agents[second].sfcs()[SFC].deltas_pushed > 0, 10, lambda: logs(c))
    time.sleep(0.5)
    assert all(host_totals(c, node) == dict(sent) for node in SERVERS)
    mine = c.agents[second].sfcs()[SFC]
    assert mine.peer_state == "", mine

    # every mapping expires (NAT's idle timeout, now 1 s; swept while packets come): each
    # port goes back to its server's pool
    assert mapped_ports(c, second), "no mapping on the second server"
    apply(c, 2, idle_timeout=1)
    time.sleep(2.5)          # mappings of the instances before: idle for 2 x idle_timeout
    noise = 0
    for _ in range(20):
        batch = inbound_noise(64, first=noise)
        for tap in c.taps:
            tap.drain()
        c.ingress.send(batch, per_ms=4)
        noise += len(batch)
        sent["198.51.100.9"] += len(batch)
        if not mapped_ports(c, first) and not mapped_ports(c, second):
            break
    assert not mapped_ports(c, first) and not mapped_ports(c, second), logs(c)
    for node in SERVERS:
        wait_until(lambda: exact(node), 10, lambda: f"{node}: {host_totals(c, node)} "
                   f"!= {dict(sent)}\n{logs(c)}")

    # scale in: the second server leaves; its pool goes back to the first, whole
    apply(c, 1, idle_timeout=1)
    wait_until(lambda: SFC not in c.agents[second].sfcs(), 30, lambda: logs(c))
    back = free_ports(c, first)
    assert back == full, {ip: sorted(full[ip] - back.get(ip, set()))[:20] for ip in full}
    assert not mapped_ports(c, first)
    # the first server's totals keep the second's counts (its last deltas)
    assert host_totals(c, first) == dict(sent)
