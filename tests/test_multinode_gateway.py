"""An SFC served by three servers through the gateway, end to end with the real programs
(issue 13's acceptance): etcd and `serpens-controller` on the host, `serpens-gateway` and three
`serpens-agent`s each in its own network namespace of a cli/testbed.py testbed, VXLAN between
them on net_af_packet ports over veths and a bridge. The test feeds the gateway's ingress
and reads its egress through two more veths, and taps the gateway's underlay veth.

Checked: frames on the underlay are RFC 7348 VXLAN as an independent decoder (scapy) reads
them; FW -> MON -> NAT on three servers gives, per flow and in order, what it gives on one
node (`serpensctl replay` of the same frames); adding a server moves no flow, removing one
(from the placement, or killed -9) moves only its flows; a route change reaches the gateway within 200 ms of the controller's
decision; a gateway killed -9 and started again gets its routes back and traffic flows;
unknown tags, bad outer headers and fuzzed VXLAN headers sent over the bridge are counted and
dropped by the gateway and the servers, and nothing crashes; the SFC's usage is the sum of what
its servers metered, to the packet."""
import collections
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap, wrpcap

from serpens.cli import multi
from serpens.cli.testbed import Testbed
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import ROOT, Agent, Controller, Gateway, status, wait_until
from support.etcd import serpensctl_config, start_etcd
from support.packets import eth
from support.taps import Tap

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(420),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

SERVERS = ("s1", "s2", "s3")
SFC = "fw-mon-nat"
MAGIC = 0x5E4B5E4B              # marks the test's frames (in the UDP payload)
NAT_EXTERNAL = ("203.0.113.1", "203.0.113.2")


# ---- traffic ------------------------------------------------------------------------------

def frames(flows, packets: int, first_seq: int = 0) -> list[bytes]:
    """`packets` frames of each flow, interleaved; the payload names the flow and the frame
    (the NAT rewrites the source address and port, so those do not)."""
    return [bytes(eth() / IP(src=f"10.1.{f // 200}.{f % 200 + 1}", dst="198.51.100.7")
                  / UDP(sport=3000 + f, dport=53) / struct.pack("!III", MAGIC, f, s))
            for s in range(first_seq, first_seq + packets) for f in flows]


def mark(frame: bytes):
    """(flow, seq) of a test frame (inner, or VXLAN-encapsulated), None for any other."""
    p = Ether(frame)
    if VXLAN in p:
        p = p[VXLAN].payload
    if UDP not in p:
        return None
    payload = bytes(p[UDP].payload)
    if len(payload) < 12 or struct.unpack("!I", payload[:4])[0] != MAGIC:
        return None
    return struct.unpack("!II", payload[4:12])


def normalized(frame: bytes):
    """((external address, port), the frame with those and the checksums they change zeroed):
    NAT mappings are each server's own, the rest must be what one node gives."""
    p = Ether(frame)
    pair = (p[IP].src, p[UDP].sport)
    p[IP].src, p[UDP].sport, p[IP].chksum, p[UDP].chksum = "0.0.0.0", 0, 0, 0
    return pair, bytes(p)


def per_flow(output) -> dict:
    flows = collections.defaultdict(list)
    for frame in output:
        flows[mark(frame)[0]].append(frame)
    return dict(flows)


# ---- the cluster --------------------------------------------------------------------------

def mac(ns: str, interface: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", interface], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]["address"]


@pytest.fixture(scope="module")
def bed():
    b = Testbed(f"g{os.getpid() % 10000}", [multi.GATEWAY, *SERVERS],
                outside={multi.GATEWAY: 2})   # eth2: its ingress, eth3: its egress
    try:
        b.create()
        yield b
    finally:
        b.remove()


@pytest.fixture(scope="module")
def cluster(bed, tmp_path_factory):
    etcd = start_etcd(host=bed.host)   # the namespaces reach the host at its bridge address
    state = tempfile.TemporaryDirectory(prefix="serpens-gwtest-", dir="/dev/shm")
    files = tmp_path_factory.mktemp("gwtest")
    c = SimpleNamespace(bed=bed, etcd=etcd, agents={}, gateway=None, controller=None,
                        files=files, taps=[])
    try:
        c.controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                                  log_level="info")
        for s in SERVERS:
            path = files / f"{s}.yaml"
            path.write_text(multi.server_node(s, bed.underlay[s], pool=2,
                                              state_dir=os.path.join(state.name, s)))
            c.agents[s] = Agent(etcd.endpoint, str(path), host=bed.address[s], netns=bed.ns[s])
        c.gw_config = files / "gateway.yaml"
        c.gw_config.write_text(multi.gateway_config(
            bed.underlay[multi.GATEWAY], "net_af_packet_in,iface=eth2",
            egress="net_af_packet_out,iface=eth3"))
        c.gateway = start_gateway(c)
        c.ingress, c.egress, c.underlay = (Tap(bed.links[multi.GATEWAY][k])
                                           for k in ("eth2", "eth3", "underlay"))
        c.taps = [c.ingress, c.egress, c.underlay]
        c.gw_mac = mac(bed.ns[multi.GATEWAY], "eth1")
        c.server_mac = {s: mac(bed.ns[s], "eth1") for s in SERVERS}
        c.server_of_ip = {bed.underlay[s]: s for s in SERVERS}
        apply_spread(c, 3)
        yield c
    finally:
        for tap in c.taps:
            tap.close()
        exits = {"gateway": c.gateway.stop()} if c.gateway else {}
        exits.update({s: agent.stop() for s, agent in c.agents.items()})
        if c.controller:
            c.controller.stop()
        etcd.destroy()
        state.cleanup()
    assert all(code == 0 for code in exits.values()), exits  # each stopped cleanly


def start_gateway(c) -> Gateway:
    return Gateway(c.etcd.endpoint, str(c.gw_config), host=c.bed.address[multi.GATEWAY],
                   netns=c.bed.ns[multi.GATEWAY])


def route(c):
    """The gateway's view of the SFC: (tag, {server: weight}), or None."""
    sfc = c.gateway.status().sfcs.get(SFC)
    return sfc and (sfc.tag, dict(sfc.servers))


def apply_spread(c, n: int):
    """Apply the spread example over `n` servers; wait until it runs on n nodes and the
    gateway's route has n servers."""
    c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=multi.spread_sfc(n)), timeout=10)
    wait_until(lambda: (s := status(c.controller.stub, SFC)).phase == "Running"
               and len(s.nodes) == n and (r := route(c)) and len(r[1]) == n, 60,
               lambda: c.controller.output()[-4000:])


def through(c, sent, seconds=15.0):
    """Send frames into the gateway; (the underlay frames of their flows, both ways; the
    egress frames of their flows)."""
    for tap in c.taps:
        tap.drain()
    flows = {mark(f)[0] for f in sent}
    ours = lambda f: (m := mark(f)) is not None and m[0] in flows  # noqa: E731
    c.ingress.send(sent)
    out = c.egress.collect(ours, until=lambda got: len(got) >= len(sent), seconds=seconds)
    out += c.egress.collect(ours, seconds=0.2)   # a frame twice would show here
    # each frame crossed the underlay twice: to its server and back
    under = c.underlay.collect(ours, until=lambda got: len(got) >= 2 * len(sent), seconds=5)
    return under, out


def servers_of(c, underlay_frames) -> dict:
    """{flow: server} of the frames the gateway sent (each flow to one server only)."""
    chosen = collections.defaultdict(set)
    for frame in underlay_frames:
        p = Ether(frame)
        if p.src == c.gw_mac:
            chosen[mark(frame)[0]].add(c.server_of_ip[p[IP].dst])
    assert all(len(s) == 1 for s in chosen.values()), chosen
    return {flow: s.pop() for flow, s in chosen.items()}


# ---- the tests ----------------------------------------------------------------------------

def check_vxlan(frame: bytes, src: str, dst: str, tag: int):
    p = Ether(frame)
    ip, udp, vx = p[IP], p[UDP], p[VXLAN]
    assert (ip.src, ip.dst, ip.version, ip.ihl, ip.proto) == (src, dst, 4, 5, 17)
    recomputed = IP(bytes(ip))
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == ip.chksum, "outer IPv4 checksum wrong"
    assert udp.dport == 4789 and udp.chksum == 0 and udp.len == ip.len - 20
    assert 49152 <= udp.sport <= 65535
    assert vx.flags == 0x08, "the I flag alone"
    assert (vx.vni, vx.reserved1, vx.reserved2) == (0, tag, 0)


def test_frames_on_the_underlay_are_rfc7348_vxlan_with_the_sfc_tag(cluster):
    c = cluster
    tag, servers = route(c)
    assert tag >= 1 and set(servers) == set(SERVERS)
    sent = frames(range(60), 3)
    under, out = through(c, sent)
    assert len(out) == len(sent)
    there = [f for f in under if Ether(f).src == c.gw_mac]
    back = [f for f in under if Ether(f).dst == c.gw_mac]
    assert len(there) == len(back) == len(sent)
    for frame in there:
        p = Ether(frame)
        server = c.server_of_ip[p[IP].dst]
        assert p.dst == c.server_mac[server]
        check_vxlan(frame, c.bed.underlay[multi.GATEWAY], c.bed.underlay[server], tag)
    for frame in back:  # the servers' routers encapsulate the SFC's output alike
        p = Ether(frame)
        server = c.server_of_ip[p[IP].src]
        assert p.src == c.server_mac[server]
        check_vxlan(frame, c.bed.underlay[server], c.bed.underlay[multi.GATEWAY], tag)
    assert set(servers_of(c, under).values()) == set(SERVERS)  # all three serve it


def test_three_servers_give_per_flow_what_one_node_gives(cluster, tmp_path):
    c = cluster
    sent = frames(range(100, 148), 12)
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in sent])
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "serpensctl"),
                        "--config", serpensctl_config(), "replay",
                        "--sfc", os.path.join(ROOT, "examples", "fw-mon-nat.yaml"),
                        "--in", str(tmp_path / "in.pcap"), "--out", str(tmp_path / "out.pcap")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    expected = per_flow(bytes(p) for p in rdpcap(str(tmp_path / "out.pcap")))
    under, out = through(c, sent)
    got = per_flow(out)
    assert sorted(got) == sorted(expected) and len(expected) == 48
    assert len(set(servers_of(c, under).values())) == 3
    for flow in expected:
        want, have = map(lambda fl: [normalized(f) for f in fl], (expected[flow], got[flow]))
        assert [mark(f)[1] for f in got[flow]] == list(range(12)), f"flow {flow}: order"
        assert [b for _, b in have] == [b for _, b in want], f"flow {flow}: contents"
        pairs = {pair for pair, _ in have}
        assert len(pairs) == 1 and next(iter(pairs))[0] in NAT_EXTERNAL  # one mapping a flow


def test_usage_of_the_sfc_is_the_sum_of_its_servers_to_the_packet(cluster):
    """Serpens.GetUsage (issue 16): each server meters what it processed; the API sums them,
    exactly the frames sent, with the bytes that came back out."""
    c = cluster

    def usage():
        reply = c.controller.stub.GetUsage(pb.GetUsageRequest(sfc=SFC), timeout=10)
        assert not reply.unreachable, reply.unreachable
        (row,) = reply.sfcs
        return row

    before = usage()
    sent = frames(range(400, 460), 3)
    under, out = through(c, sent)
    assert len(out) == len(sent)
    served = set(servers_of(c, under).values())
    packets, nbytes = before.total.packets + len(sent), before.total.bytes + sum(map(len, out))
    after = wait_until(lambda: (u := usage()).total.packets >= packets and u, 10,
                       lambda: str(usage()))
    assert (after.total.packets, after.total.bytes) == (packets, nbytes)
    assert sum(u.packets for u in after.nodes.values()) == after.total.packets
    grew = {n for n, u in after.nodes.items()
            if u.packets > (before.nodes[n].packets if n in before.nodes else 0)}
    assert grew == served and len(served) >= 2
    assert all(after.nodes[n].cpu_seconds > 0 for n in served)


def test_adding_a_server_moves_no_flow_and_removing_one_moves_only_its_flows(cluster):
    c = cluster
    flows = range(200, 296)
    _, before_route = route(c)
    under, out = through(c, frames(flows, 2))
    assert len(out) == 2 * len(flows)
    before = servers_of(c, under)

    apply_spread(c, 2)                        # one server leaves the route
    _, two = route(c)
    (gone,) = set(before_route) - set(two)
    under, out = through(c, frames(flows, 2, first_seq=2))
    assert len(out) == 2 * len(flows)
    after = servers_of(c, under)
    stayed = {f for f in flows if before[f] != gone}
    assert all(after[f] == before[f] for f in stayed), "a flow of a server still there moved"
    assert all(after[f] != gone for f in flows)

    apply_spread(c, 3)                        # and comes back: existing flows stay put
    new_flows = range(300, 396)
    under, out = through(c, frames(flows, 2, first_seq=4) + frames(new_flows, 2))
    assert len(out) == 2 * (len(flows) + len(new_flows))
    again = servers_of(c, under)
    assert all(again[f] == after[f] for f in flows), "an existing flow moved to the new server"
    assert gone in {again[f] for f in new_flows}  # new flows follow the new weights


def test_a_server_that_dies_takes_only_its_flows_with_it(cluster):
    c = cluster
    flows = range(600, 696)
    under, out = through(c, frames(flows, 2))
    assert len(out) == 2 * len(flows)
    before = servers_of(c, under)
    dead = before[flows[0]]
    c.agents[dead].proc.kill()                 # kill -9: its lease ends, its node goes
    c.agents[dead].proc.wait()
    wait_until(lambda: (r := route(c)) and set(r[1]) == set(SERVERS) - {dead}, 30,
               lambda: c.controller.output()[-4000:])
    under, out = through(c, frames(flows, 2, first_seq=2))
    assert len(out) == 2 * len(flows)
    after = servers_of(c, under)
    assert all(after[f] == before[f] for f in flows if before[f] != dead)
    assert all(after[f] != dead for f in flows)
    moved = c.gateway.status().sfcs[SFC].moved_flows
    assert moved >= sum(before[f] == dead for f in flows)
    # the server comes back (a new agent on the same node config): the SFC spreads again
    c.agents[dead].stop()
    c.agents[dead] = Agent(c.etcd.endpoint, str(c.files / f"{dead}.yaml"),
                           host=c.bed.address[dead], netns=c.bed.ns[dead])
    wait_until(lambda: (r := route(c)) and set(r[1]) == set(SERVERS), 60,
               lambda: c.controller.output()[-4000:])


def test_a_route_change_reaches_the_gateway_within_200_ms_of_the_decision(cluster):
    c = cluster
    apply_spread(c, 2)
    log_from = len(c.controller.output())
    apply_spread(c, 3)
    pushed = wait_until(lambda: ROUTE_PUSHED.findall(c.controller.output()[log_from:]), 10,
                        lambda: c.controller.output()[-4000:])
    latencies = [float(ms) for ms in pushed]
    assert latencies and max(latencies) <= 200, latencies


# controller/routes.py's line for each push that succeeded
ROUTE_PUSHED = re.compile(r"gateway \S+: \d+ routes pushed \(term \d+\), "
                          r"(\d+(?:\.\d+)?) ms after the decision")


def test_a_gateway_killed_and_started_again_gets_its_routes_back(cluster):
    c = cluster
    tag, servers = route(c)
    c.gateway.kill()
    c.gateway = start_gateway(c)
    wait_until(lambda: route(c) == (tag, servers), 30, lambda: c.controller.output()[-4000:])
    sent = frames(range(400, 430), 3)
    _, out = through(c, sent)
    assert len(out) == len(sent)


def vxlan(src_mac, dst_mac, src_ip, dst_ip, tag, inner=None, **ip_fields) -> bytes:
    inner = inner or frames([999], 1)[0]
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip, flags="DF",
                                                      **ip_fields)
                 / UDP(sport=50000, dport=4789, chksum=0) / VXLAN(flags=0x08, reserved1=tag)
                 / inner)


def node_drops(agent) -> dict:
    node = agent.stub.GetNode(pb.GetNodeRequest(), timeout=5)
    return dict(node.vxlan_drops)


def test_unknown_tags_and_bad_outer_headers_on_the_bridge_are_counted_and_dropped(cluster):
    c = cluster
    tag, _ = route(c)
    bridge = Tap(c.bed.bridges["underlay"])   # frames sent here go over the bridge
    c.taps.append(bridge)
    gw_ip, s1_ip = c.bed.underlay[multi.GATEWAY], c.bed.underlay["s1"]
    stranger = "02:00:00:00:77:01"
    gw_before = dict(c.gateway.status().drops)
    s1_before = node_drops(c.agents["s1"])
    bad = {"unknown_tag": lambda ip, m: vxlan(stranger, m, "10.9.9.9", ip, 0xFFFFF0),
           "bad_outer": lambda ip, m: vxlan(stranger, m, "10.9.9.9", ip, tag, chksum=0x1234)}
    for reason, make in bad.items():
        bridge.send([make(gw_ip, c.gw_mac)] * 20 + [make(s1_ip, c.server_mac["s1"])] * 20)
    # fuzzed headers: random bytes over the outer IPv4/UDP/VXLAN headers of good frames
    rng = random.Random(13)
    fuzzed = []
    for good in (vxlan(stranger, c.gw_mac, "10.9.9.9", gw_ip, tag),
                 vxlan(stranger, c.server_mac["s1"], "10.9.9.9", s1_ip, tag)):
        for _ in range(300):
            f = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                f[rng.randrange(14, 50)] = rng.randrange(256)
            fuzzed.append(bytes(f[:rng.choice((len(f), rng.randrange(14, len(f))))]))
    bridge.send(fuzzed)
    for reason in bad:
        wait_until(lambda: c.gateway.status().drops[reason] >= gw_before.get(reason, 0) + 20,
                   10, c.gateway.output)
        wait_until(lambda: node_drops(c.agents["s1"]).get(reason, 0) >=
                   s1_before.get(reason, 0) + 20, 10, c.agents["s1"].output)
    assert c.gateway.proc.poll() is None and all(a.proc.poll() is None
                                                 for a in c.agents.values())
    sent = frames(range(500, 530), 3)                 # and traffic still flows
    _, out = through(c, sent)
    assert len(out) == len(sent)
