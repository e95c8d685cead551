"""The gateway's packet loop (gateway/gateway.h) and VXLAN (runtime_cy/src/vxlan.h): frames an
independent decoder (scapy) reads as RFC 7348 VXLAN, flow-affine server choice under route
changes, and frames from the underlay decapsulated, answered or counted and dropped."""
import collections
import random
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.packets import eth, flow_frame, trace, udp
from support.sites import GW_IP, GW_MAC, GatewaySite, Site, Wire, unique_tag

pytestmark = pytest.mark.dataplane

SERVERS = {"192.168.50.11": "02:00:00:00:50:11", "192.168.50.12": "02:00:00:00:50:12",
           "192.168.50.13": "02:00:00:00:50:13"}
TAG, VNI = 0xABCDE, 7


@pytest.fixture
def site(dataplane, request):
    s = GatewaySite(dataplane, f"g{unique_tag()}")
    yield s
    s.close()


def one_sfc(site, servers):
    for ip in SERVERS:
        site.gw.set_server(ip, SERVERS[ip])
    sfc = site.gw.add_sfc(TAG, VNI)
    site.gw.set_route(sfc, servers)
    site.gw.set_default_sfc(sfc)
    return sfc


def server_of(frame):
    return Ether(frame)[IP].dst


def inner_flow(frame):
    return Ether(frame)[VXLAN].payload[UDP].sport - 1000


def test_frames_are_rfc7348_vxlan_with_the_sfc_tag(site):
    one_sfc(site, {"192.168.50.11": 1})
    frames = [flow_frame(f, 0) for f in range(64)]
    out = site.encap(frames)
    assert len(out) == 64
    for sent, wire in zip(frames, out):
        p = Ether(wire)
        assert (p.src, p.dst) == (GW_MAC, SERVERS["192.168.50.11"])
        ip, udp, vx = p[IP], p[UDP], p[VXLAN]
        assert (ip.src, ip.dst, ip.ihl, ip.flags.DF, ip.len) == \
            (GW_IP, "192.168.50.11", 5, True, len(sent) + 36)
        recomputed = IP(bytes(ip))
        del recomputed.chksum
        assert IP(bytes(recomputed)).chksum == ip.chksum, "outer IPv4 checksum wrong"
        assert udp.dport == 4789 and udp.chksum == 0 and udp.len == len(sent) + 16
        assert 49152 <= udp.sport <= 65535
        assert udp.sport == dp.vxlan_sport(dp.flow_hash(sent))
        assert vx.flags == 0x08 and vx.vni == VNI and vx.reserved1 == TAG and vx.reserved2 == 0
        assert bytes(vx.payload) == sent
    assert len({Ether(w)[UDP].sport for w in out}) > 48  # the flows' entropy shows


def test_outer_source_port_is_the_same_for_a_flow_and_its_reverse(site):
    one_sfc(site, {"192.168.50.11": 1})
    there = bytes(eth() / IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=5000, dport=53))
    back = bytes(eth() / IP(src="10.2.2.2", dst="10.1.1.1") / UDP(sport=53, dport=5000))
    a, b = site.encap([there, back])
    assert Ether(a)[UDP].sport == Ether(b)[UDP].sport
    assert server_of(a) == server_of(b)


def test_classification_has_the_routers_semantics_for_ipv4_and_ipv6(site):
    for ip in SERVERS:
        site.gw.set_server(ip, SERVERS[ip])
    tagged, v6net, dns, default = (site.gw.add_sfc(t) for t in (101, 102, 103, 104))
    for sfc in (tagged, v6net, dns, default):
        site.gw.set_route(sfc, {"192.168.50.11": 1})
    site.gw.set_tag(42, tagged)
    site.gw.set_rules([{"sfc": v6net, "dst": "2001:db8:77::/48"},
                       {"sfc": dns, "proto": 17, "dport": (53, 53)}])
    site.gw.set_default_sfc(default)
    v4 = IP(src="1.1.1.1", dst="2.2.2.2")
    frames = [
        bytes(eth() / Dot1Q(vlan=42) / v4 / UDP(dport=53)),                          # tag wins
        bytes(eth() / v4 / UDP(dport=53)),
        bytes(eth() / v4 / UDP(dport=80)),
        bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8:77::2") / UDP(dport=53)),  # first
        bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8:78::2") / UDP(dport=53)),
        bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8:78::2") / UDP(dport=80)),
        bytes(eth(type=0x88B5) / bytes(50)),                                          # not IP
    ]
    tags = [Ether(w)[VXLAN].reserved1 for w in site.encap(frames)]
    assert tags == [101, 103, 104, 102, 103, 104, 104]
    with pytest.raises(ValueError, match="different IP versions"):
        site.gw.set_rules([{"sfc": dns, "src": "10.0.0.0/8", "dst": "2001:db8::/32"}])
    site.gw.set_default_sfc(-1)
    assert site.encap(frames[5:]) == []
    assert site.gw.stats()["drops"]["unmatched"] == 2


def test_a_flow_keeps_its_server_when_a_server_is_added(site):
    sfc = one_sfc(site, {"192.168.50.11": 1, "192.168.50.12": 1})
    old = {inner_flow(w): server_of(w) for w in site.encap([flow_frame(f, 0) for f in range(400)])}
    assert set(old.values()) == {"192.168.50.11", "192.168.50.12"}
    site.gw.set_route(sfc, {"192.168.50.11": 1, "192.168.50.12": 1, "192.168.50.13": 2})
    again = {inner_flow(w): server_of(w)
             for w in site.encap([flow_frame(f, 1) for f in range(400)])}
    assert again == old, "a live flow changed server when a server was added"
    new = collections.Counter(server_of(w) for w in
                              site.encap([flow_frame(f, 0) for f in range(400, 1400)]))
    # new flows follow the new weights 1:1:2
    assert 0.40 < new["192.168.50.13"] / 1000 < 0.60, new
    assert 0.15 < new["192.168.50.11"] / 1000 < 0.35, new
    assert site.gw.stats()["sfcs"][sfc]["moved_flows"] == 0


def test_removing_a_server_moves_only_its_flows(site):
    sfc = one_sfc(site, {ip: 1 for ip in SERVERS})
    old = {inner_flow(w): server_of(w) for w in site.encap([flow_frame(f, 0) for f in range(600)])}
    gone = "192.168.50.12"
    assert gone in old.values()
    site.gw.set_route(sfc, {"192.168.50.11": 1, "192.168.50.13": 1})
    now = {inner_flow(w): server_of(w) for w in site.encap([flow_frame(f, 1) for f in range(600)])}
    for flow, server in old.items():
        if server == gone:
            assert now[flow] != gone
        else:
            assert now[flow] == server, f"flow {flow} moved off a server that stayed"
    moved = sum(1 for s in old.values() if s == gone)
    assert site.gw.stats()["sfcs"][sfc]["moved_flows"] == moved
    site.gw.set_route(sfc, {})
    assert site.encap([flow_frame(0, 2)]) == []
    assert site.gw.stats()["sfcs"][sfc]["drops"]["no_server"] == 1


def test_maglev_shares_follow_weights_and_a_change_moves_few_slots():
    table = dp.maglev_table({"a": (0, 1), "b": (1, 3)})
    share = collections.Counter(table)
    assert abs(share[1] / len(table) - 0.75) < 0.02 and None not in share
    grown = dp.maglev_table({"a": (0, 1), "b": (1, 3), "c": (2, 4)})
    kept = sum(1 for x, y in zip(table, grown) if x == y)
    assert kept / len(table) > 0.40  # half of the slots go to c; most of the rest stay
    assert dp.maglev_table({}) == [None] * dp.GW_MAGLEV


def vxlan_to_gateway(inner, tag=TAG, vni=VNI, ip=None):
    fields = dict(src="192.168.50.11", dst=GW_IP, flags="DF")
    fields.update(ip or {})
    return bytes(Ether(src=SERVERS["192.168.50.11"], dst=GW_MAC) / IP(**fields)
                 / UDP(sport=50000, dport=4789, chksum=0)
                 / VXLAN(flags=0x08, vni=vni, reserved1=tag) / inner)


def test_frames_from_servers_are_decapsulated_to_the_egress(site):
    one_sfc(site, {"192.168.50.11": 1})
    inner = [flow_frame(f, 9) for f in range(40)]
    under, out = site.through(site.underlay, [vxlan_to_gateway(x) for x in inner])
    assert under == [] and out == inner
    assert site.gw.stats()["sfcs"][0]["back"] == 40


def test_arp_for_the_underlay_address_is_answered(site):
    one_sfc(site, {"192.168.50.11": 1})
    ask = bytes(Ether(src=SERVERS["192.168.50.12"], dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=SERVERS["192.168.50.12"], psrc="192.168.50.12",
                      pdst=GW_IP))
    other = bytes(Ether(src=SERVERS["192.168.50.12"], dst="ff:ff:ff:ff:ff:ff")
                  / ARP(op=1, hwsrc=SERVERS["192.168.50.12"], psrc="192.168.50.12",
                        pdst="192.168.50.99"))
    under, out = site.through(site.underlay, [ask, other])
    assert out == [] and len(under) == 1
    reply = Ether(under[0])
    assert (reply.dst, reply.src) == (SERVERS["192.168.50.12"], GW_MAC)
    assert (reply[ARP].op, reply[ARP].hwsrc, reply[ARP].psrc, reply[ARP].hwdst,
            reply[ARP].pdst) == (2, GW_MAC, GW_IP, SERVERS["192.168.50.12"], "192.168.50.12")
    st = site.gw.stats()
    assert st["arp_replies"] == 1 and st["drops"]["not_ours"] == 1


def test_a_server_on_a_port_of_its_own_is_reached_and_answered_there(site, dataplane):
    """Point-to-point underlay links (memif between containers): one port per server. Frames
    for a server leave on its port; what it sends back on that port, VXLAN or ARP, is taken
    there; the other servers stay on the gateway's underlay port."""
    own = Wire(dataplane, f"{site.underlay.port}x")
    try:
        sfc = one_sfc(site, {"192.168.50.11": 1, "192.168.50.12": 1})
        site.gw.set_server("192.168.50.12", SERVERS["192.168.50.12"], port=own.port)
        frames = [flow_frame(f, 0) for f in range(200)]
        for i in range(0, len(frames), 100):
            site.outside.send(frames[i:i + 100])
            site.pump()
        shared = [d for _, d in dp.pull(site.underlay.sent, 512)]
        private = [d for _, d in dp.pull(own.sent, 512)]
        assert {server_of(w) for w in shared} == {"192.168.50.11"}
        assert {server_of(w) for w in private} == {"192.168.50.12"}
        assert len(shared) + len(private) == 200 and len(private) > 40
        st = site.gw.stats()["servers"]
        assert (st["192.168.50.11"]["port"], st["192.168.50.12"]["port"]) == \
            (site.underlay.port, own.port)
        ask = bytes(Ether(src=SERVERS["192.168.50.12"], dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op=1, hwsrc=SERVERS["192.168.50.12"], psrc="192.168.50.12",
                          pdst=GW_IP))
        own.send([vxlan_to_gateway(flow_frame(3, 1), ip={"src": "192.168.50.12"}), ask])
        site.pump()
        assert len(dp.pull(site.egress.sent, 8)) == 1
        reply = [Ether(d) for _, d in dp.pull(own.sent, 8)]
        assert [r[ARP].op for r in reply] == [2] and not dp.pull(site.underlay.sent, 8)
        assert site.gw.stats()["sfcs"][sfc]["back"] == 1
        with pytest.raises(ValueError, match="ingress"):
            site.gw.set_server("192.168.50.13", SERVERS["192.168.50.13"],
                               port=site.outside.port)
    finally:
        own.close()


def test_bad_frames_from_the_underlay_are_counted_by_reason(site):
    one_sfc(site, {"192.168.50.11": 1})
    good = vxlan_to_gateway(flow_frame(1, 1))
    bad_csum = bytearray(good)
    bad_csum[24] ^= 0xFF  # outer IPv4 checksum
    no_i_flag = vxlan_to_gateway(flow_frame(1, 1))
    no_i_flag = no_i_flag[:42] + b"\x00" + no_i_flag[43:]
    udp_len = bytearray(good)
    udp_len[39] ^= 1
    frames = {
        "unknown_tag": [vxlan_to_gateway(flow_frame(1, 1), tag=TAG + 1),
                        vxlan_to_gateway(flow_frame(1, 1), vni=VNI + 1)],  # another tenant
        "bad_outer": [bytes(bad_csum), no_i_flag, bytes(udp_len), good[:48],
                      vxlan_to_gateway(b"\x00" * 10),
                      vxlan_to_gateway(flow_frame(1, 1), ip={"frag": 5, "flags": 0})],
        "over_mtu": [vxlan_to_gateway(flow_frame(1, 1) + bytes(1500))],
        "not_ours": [vxlan_to_gateway(flow_frame(1, 1), ip={"dst": "192.168.50.77"}),
                     bytes(eth() / IP(dst=GW_IP) / UDP(dport=4790)), b"\x01\x02"],
    }
    under, out = site.through(site.underlay, [f for fs in frames.values() for f in fs])
    assert under == [] and out == []
    drops = site.gw.stats()["drops"]
    for reason, fs in frames.items():
        assert drops[reason] == len(fs), (reason, drops)


def test_encapsulation_beyond_the_mtu_is_counted_not_truncated(dataplane):
    s = GatewaySite(dataplane, "gmtu", mtu=300)
    try:
        sfc = one_sfc(s, {"192.168.50.11": 1})
        base = flow_frame(1, 1)
        fits = base + bytes(300 - 36 - len(base))
        out = s.encap([fits, fits + b"\x00"])
        assert len(out) == 1 and len(out[0]) == 300 + 14
        assert s.gw.stats()["sfcs"][sfc]["drops"]["over_mtu"] == 1
    finally:
        s.close()


def test_fuzzed_frames_crash_nothing_and_are_all_accounted_for(site):
    one_sfc(site, {"192.168.50.11": 1})
    rnd = random.Random(13)
    good = vxlan_to_gateway(flow_frame(3, 3))
    frames = []
    for _ in range(3000):
        f = bytearray(good)
        for _ in range(rnd.randint(1, 6)):
            f[rnd.randrange(len(f) if rnd.random() < 0.3 else 52)] = rnd.randrange(256)
        if rnd.random() < 0.3:
            f = f[:rnd.randrange(1, len(f))]
        frames.append(bytes(f))
    before = site.gw.stats()
    under, out = site.through(site.underlay, frames)
    st = site.gw.stats()
    dropped = sum(st["drops"].values()) - sum(before["drops"].values())
    assert len(out) + len(under) + dropped == len(frames)
    assert all(len(d) <= len(good) - 50 for d in out)
    # and from the outside: random bytes are encapsulated or counted, nothing else
    junk = [bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 120))) for _ in range(500)]
    wrapped = site.encap(junk)
    st2 = site.gw.stats()
    assert len(wrapped) + st2["drops"]["unmatched"] - st["drops"]["unmatched"] == 500


# ---- gateway -> router (VXLAN over net_ring) -> SFC -> gateway -> egress ------------------

NODE_IP, NODE_MAC = "192.168.50.21", "02:00:00:00:50:21"


def mark_sfc(build):
    return compile_sfc(NF(build("mark.c", copy=31), config=bytes([7, 0]), name="gwmark"))


class Overlay:
    """A gateway (on a thread) and a node's router (on its lcore) joined by one ring pair as
    their underlay: the router's RX is the gateway's TX and the other way round."""

    def __init__(self, dataplane, pool, sfc, name, instances=2):
        self.site = GatewaySite(dataplane, name)
        gw, under = self.site.gw, self.site.underlay
        gw.set_server(NODE_IP, NODE_MAC)
        self.gw_sfc = gw.add_sfc(TAG, VNI)
        gw.set_route(self.gw_sfc, {NODE_IP: 1})
        gw.set_default_sfc(self.gw_sfc)
        self.port = dp.port_from_rings(f"net_ring_{name}r", under.sent, under.inject,
                                       dataplane.mempool)
        self.router = dp.Router(self.port)
        self.sfc = self.router.add_sfc(out_port=self.port)
        self.router.set_underlay(self.port, NODE_IP, NODE_MAC)
        self.router.set_gateway(GW_IP, GW_MAC)
        self.router.set_sfc_vxlan(self.sfc, TAG, VNI, to_gateway=True)
        self.router.launch(dataplane.config.router_lcore)
        self.manager = InstanceManager(pool, self.router, sfc, sfc_id=self.sfc).start()
        self.manager.scale(instances)
        self.thread = threading.Thread(target=gw.run, daemon=True)
        self.thread.start()

    def to_router(self, frames):
        """Frames straight onto the router's underlay (as if from the gateway)."""
        for i in range(0, len(frames), 256):
            while dp.push(self.site.underlay.sent, self.site.outside.dataplane.mempool,
                          frames[i:i + 256]) == 0:
                time.sleep(0.0005)

    def close(self):
        self.site.gw.stop()
        self.thread.join()
        self.manager.close()
        self.router.stop()
        dp.port_close(self.port)
        self.site.close()


def per_flow(frames):
    flows = collections.defaultdict(list)
    for d in frames:
        p = Ether(d)
        flows[(p[IP].src, p[UDP].sport)].append(d)
    return dict(flows)


def traffic():
    return [udp(src=f"10.0.3.{f + 1}", sport=2000 + f, seq=s)
            for s in range(40) for f in range(24)]


def test_an_sfc_behind_the_gateway_gives_what_it_gives_on_a_node(dataplane, pool, build):
    frames = traffic()
    direct = Site(dataplane, pool, mark_sfc(build), "gwdirect")
    try:
        direct.manager.scale(2)
        direct.send(frames)
        expected = per_flow(direct.receive(len(frames)))
    finally:
        direct.close()
    assert all(trace(d) == [7] for fl in expected.values() for d in fl)
    ov = Overlay(dataplane, pool, mark_sfc(build), "gwov")
    try:
        ov.site.outside.send(frames)
        got = per_flow(ov.site.egress.receive(len(frames), router=ov.router))
        assert got == expected  # per flow, in order, byte for byte
        st = ov.router.stats()
        assert st["vxlan"]["rx"] == len(frames) and st["sfcs"][ov.sfc]["out"] == len(frames)
        gst = ov.site.gw.stats()
        assert gst["sfcs"][ov.gw_sfc]["back"] == len(frames)
        assert sum(gst["drops"].values()) == 0
    finally:
        ov.close()


def test_the_router_counts_and_drops_bad_vxlan_and_keeps_forwarding(dataplane, pool, build):
    ov = Overlay(dataplane, pool, mark_sfc(build), "gwbad", instances=1)
    try:
        def to_node(inner, tag=TAG, vni=VNI, **ip):
            fields = dict(src=GW_IP, dst=NODE_IP, flags="DF")
            fields.update(ip)
            return bytes(Ether(src=GW_MAC, dst=NODE_MAC) / IP(**fields)
                         / UDP(sport=50001, dport=4789, chksum=0)
                         / VXLAN(flags=0x08, vni=vni, reserved1=tag) / inner)
        good = to_node(udp(seq=1))
        bad_csum = bytearray(good)
        bad_csum[24] ^= 0x55
        ask = bytes(Ether(src=GW_MAC, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op=1, hwsrc=GW_MAC, psrc=GW_IP, pdst=NODE_IP))
        bad = {"unknown_tag": [to_node(udp(seq=1), tag=TAG + 5), to_node(udp(seq=1), vni=0)],
               "bad_outer": [bytes(bad_csum), good[:46], to_node(b"\x00" * 8)],
               "over_mtu": [to_node(udp(seq=1) + bytes(1480))],
               "not_ours": [to_node(udp(seq=1), dst="192.168.50.99"), b"\x00" * 20]}
        rnd = random.Random(7)
        fuzz = []
        for _ in range(3000):
            f = bytearray(good)
            for _ in range(rnd.randint(1, 5)):
                f[rnd.randrange(52)] = rnd.randrange(256)
            if rnd.random() < 0.3:
                f = f[:rnd.randrange(1, len(f))]
            fuzz.append(bytes(f))
        ov.to_router([f for fs in bad.values() for f in fs] + [ask])
        deadline = time.monotonic() + 5
        while ov.router.stats()["vxlan"]["arp_replies"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        drops = ov.router.stats()["vxlan"]["drops"]
        for reason, fs in bad.items():
            assert drops[reason] == len(fs), (reason, drops)
        ov.to_router(fuzz)
        # the node still serves the flow through the gateway afterwards
        ov.site.outside.send([udp(sport=4242, seq=s) for s in range(10)])
        # (fuzzed frames that still make valid VXLAN for it come out too: skip those)
        out, deadline = [], time.monotonic() + 10
        while len(out) < 10:
            assert time.monotonic() < deadline, (len(out), ov.router.stats())
            out += [d for _, d in dp.pull(ov.site.egress.sent)
                    if UDP in Ether(d) and Ether(d)[UDP].sport == 4242]
            time.sleep(0.001)
        assert [trace(d) for d in out] == [[7]] * 10
        st = ov.router.stats()
        assert st["rx"] == len(fuzz) + sum(map(len, bad.values())) + 1 + 10
    finally:
        ov.close()


# ---- one SFC on two servers: gateway -> switch -> routers -> switch -> gateway --------------

NODES = {"192.168.50.31": "02:00:00:00:50:31", "192.168.50.32": "02:00:00:00:50:32"}


class Switch:
    """The underlay between the gateway and the nodes: a learning-free L2 switch over rings
    (by destination MAC, broadcast to every node), run on a thread (test plumbing only)."""

    def __init__(self, dataplane, gw_wire, nodes):
        self.mempool, self.gw_wire, self.nodes = dataplane.mempool, gw_wire, nodes
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, ring, frames):
        while frames and dp.push(ring, self.mempool, frames) == 0:
            time.sleep(0.0002)

    def _run(self):
        while not self.stop:
            moved = 0
            frames = [d for _, d in dp.pull(self.gw_wire.sent, 256)]
            for mac, (rx, _) in self.nodes.items():
                self._put(rx, [d for d in frames if d[:6] in (mac, b"\xff" * 6)])
            moved += len(frames)
            for _, tx in self.nodes.values():
                back = [d for _, d in dp.pull(tx, 256)]
                self._put(self.gw_wire.inject, back)
                moved += len(back)
            if not moved:
                time.sleep(0.0002)

    def close(self):
        self.stop = True
        self.thread.join()


class TwoServers:
    def __init__(self, dataplane, pool, sfc, name):
        self.site = GatewaySite(dataplane, name)
        gw = self.site.gw
        self.gw_sfc = gw.add_sfc(TAG, VNI)
        gw.set_default_sfc(self.gw_sfc)
        self.routers, self.managers, self.ports, self.threads, rings = [], [], [], [], {}
        for k, (ip, mac) in enumerate(NODES.items()):
            gw.set_server(ip, mac)
            rx, tx = dp.Ring(f"{name}n{k}rx", 4096), dp.Ring(f"{name}n{k}tx", 4096)
            rings[bytes.fromhex(mac.replace(":", ""))] = (rx, tx)
            port = dp.port_from_rings(f"net_ring_{name}n{k}", rx, tx, dataplane.mempool)
            router = dp.Router(port)
            rsfc = router.add_sfc(out_port=port)
            router.set_underlay(port, ip, mac)
            router.set_gateway(GW_IP, GW_MAC)
            router.set_sfc_vxlan(rsfc, TAG, VNI, to_gateway=True)
            if k == 0:
                router.launch(dataplane.config.router_lcore)
            else:  # one router lcore per process: the second node's router runs on a thread
                t = threading.Thread(target=router.run, daemon=True)
                t.start()
                self.threads.append((router, t))
            manager = InstanceManager(pool, router, sfc, sfc_id=rsfc).start()
            manager.scale(1)
            self.routers.append(router)
            self.managers.append(manager)
            self.ports.append(port)
        self.switch = Switch(dataplane, self.site.underlay, rings)
        self.gw_thread = threading.Thread(target=gw.run, daemon=True)
        self.gw_thread.start()

    def node_rx(self):
        return [r.stats()["vxlan"]["rx"] for r in self.routers]

    def close(self):
        self.site.gw.stop()
        self.gw_thread.join()
        self.switch.close()
        for m in self.managers:
            m.close()
        for r in self.routers:
            r.stop()
        for _, t in self.threads:
            t.join()
        for p in self.ports:
            dp.port_close(p)
        self.site.close()


def test_an_sfc_on_two_servers_keeps_flows_in_order_and_a_new_server_takes_only_new_flows(
        dataplane, pool, build):
    old = [udp(src=f"10.0.4.{f + 1}", sport=3000 + f, seq=s) for s in range(30) for f in range(16)]
    new = [udp(src=f"10.0.5.{f + 1}", sport=5000 + f, seq=s) for s in range(30) for f in range(64)]
    direct = Site(dataplane, pool, mark_sfc(build), "gw2direct")
    try:
        direct.manager.scale(1)
        direct.send(old + new)
        expected = per_flow(direct.receive(len(old + new)))
    finally:
        direct.close()
    two = TwoServers(dataplane, pool, mark_sfc(build), "gw2")
    try:
        first, second = NODES
        egress = two.site.egress
        two.site.gw.set_route(two.gw_sfc, {first: 1})
        two.site.outside.send(old[:len(old) // 2])
        got = egress.receive(len(old) // 2, router=two.routers[0])
        assert two.node_rx() == [len(old) // 2, 0]
        two.site.gw.set_route(two.gw_sfc, {first: 1, second: 1})  # a server joins
        two.site.outside.send(old[len(old) // 2:])
        got += egress.receive(len(old) - len(old) // 2, router=two.routers[0])
        assert two.node_rx() == [len(old), 0], "a live flow moved to the new server"
        two.site.outside.send(new)
        got += egress.receive(len(new), router=two.routers[1])
        assert per_flow(got) == expected  # per flow, in order, byte for byte
        rx = two.node_rx()
        assert rx[1] > 0.25 * len(new) and rx[0] > len(old), rx  # new flows spread 1:1
        two.site.gw.set_route(two.gw_sfc, {second: 1})  # the first server leaves
        before = two.node_rx()
        two.site.outside.send([udp(src=f"10.0.5.{f + 1}", sport=5000 + f, seq=99)
                               for f in range(64)])
        egress.receive(64, router=two.routers[1])
        after = two.node_rx()
        assert after[0] == before[0] and after[1] - before[1] == 64
    finally:
        two.close()


# ---- the flow table's bounds ---------------------------------------------------------------

def test_an_idle_flow_is_forgotten_and_then_follows_the_route(dataplane):
    s = GatewaySite(dataplane, "gidle", idle_s=1.0)  # long beside one encap: no race
    try:
        sfc = one_sfc(s, {"192.168.50.11": 1})
        frames = [flow_frame(f, 0) for f in range(50)]
        assert {server_of(w) for w in s.encap(frames)} == {"192.168.50.11"}
        s.gw.set_route(sfc, {"192.168.50.11": 1, "192.168.50.12": 100})
        assert {server_of(w) for w in s.encap(frames)} == {"192.168.50.11"}  # pinned
        time.sleep(1.5)  # idle past idle_s: the pins are gone
        again = collections.Counter(server_of(w) for w in s.encap(frames))
        assert again["192.168.50.12"] > 40, again
        assert s.gw.stats()["sfcs"][sfc]["new_flows"] == 100
    finally:
        s.close()


def test_a_flow_whose_bucket_is_full_is_sent_unpinned_and_counted(site):
    sfc = one_sfc(site, {"192.168.50.11": 1, "192.168.50.12": 1})
    template = bytearray(flow_frame(0, 0))
    buckets = collections.defaultdict(list)
    for n in range(60000):  # flows differing in their source address (bytes 26..29)
        template[26:30] = (0x0A000000 + n).to_bytes(4, "big")
        key = ((dp.flow_hash(bytes(template)) + sfc * 0x85EBCA6B) & 0xFFFFFFFF) | 1
        bucket = buckets[(key >> 1) % 8192]
        bucket.append(bytes(template))
        if len(bucket) == 9:
            break
    assert len(bucket) == 9
    first = [server_of(w) for w in site.encap(bucket)]
    st = site.gw.stats()["sfcs"][sfc]
    assert (st["new_flows"], st["flow_full"]) == (8, 1)
    # the ninth still goes where the table sends it, and the eight stay pinned
    assert [server_of(w) for w in site.encap(bucket)] == first
    assert site.gw.stats()["sfcs"][sfc]["flow_full"] == 2


def test_a_paced_ingress_port_delivers_only_the_arrivals_due(site):
    one_sfc(site, {"192.168.50.11": 1})
    site.outside.send([flow_frame(f, 0) for f in range(40)])
    site.gw.pace(site.outside.port, 0.5)  # one arrival now, the next in 2 s
    site.pump()
    assert len(dp.pull(site.underlay.sent, 64)) == 1
    site.gw.pace(site.outside.port, 1e6, 4)  # a 4-deep RX ring fed at 1 Mpps
    time.sleep(0.01)
    assert site.gw.poll() == 4  # at most its depth waited; the rest was lost
    assert site.gw.stats()["ports"][site.outside.port]["missed"] > 1000
    site.gw.pace(site.outside.port, 0)
    site.pump()
    assert len(dp.pull(site.underlay.sent, 64)) == 39
    with pytest.raises(ValueError, match="not an ingress port"):
        site.gw.pace(site.underlay.port, 1000)


def test_a_full_server_link_holds_the_ingress_back_then_sheds_after_stall_us(dataplane):
    """A server's link that takes nothing (its TX queue full) stops the gateway reading the
    outside, so arrivals wait in the ingress queue and nothing is dropped; once the link takes
    frames everything flows again, in order. A link that takes nothing for stall_us sheds:
    what waits for it is dropped and counted, and the outside is read again."""
    site = GatewaySite(dataplane, "gbp", stall_us=100_000)
    try:
        one_sfc(site, {"192.168.50.11": 1})
        site.outside.send([flow_frame(f % 500, f // 500) for f in range(4000)])
        site.pump()
        site.outside.send([flow_frame(f % 500, f // 500) for f in range(4000, 4396)])
        site.pump()
        full = site.underlay.sent.count()  # the link's TX queue is full
        assert full >= 4095
        st = site.gw.stats()
        under = st["ports"][site.underlay.port]
        assert st["tx_failed"] == 0 and under["waiting"] > 0 and not under["shedding"]
        waiting_outside = site.outside.inject.count()
        assert waiting_outside >= 4396 - full - 2 * 32
        out = []
        for _ in range(100):  # the link takes frames again: everything flows
            out += [d for _, d in dp.pull(site.underlay.sent, 512)]
            site.pump()
            if len(out) == 4396:
                break
        assert [inner_flow(w) for w in out] == [f % 500 for f in range(4396)]
        assert site.gw.stats()["tx_failed"] == 0 and site.outside.inject.count() == 0

        site.outside.send([flow_frame(f, 0) for f in range(4000)])
        site.pump()
        site.outside.send([flow_frame(f, 0) for f in range(4000, 4296)])
        site.pump()
        assert site.gw.stats()["tx_failed"] == 0
        time.sleep(0.15)  # longer than stall_us: after a few more passes the link sheds
        for _ in range(10):
            site.gw.poll()
        site.pump()  # and the outside is read again
        st = site.gw.stats()
        assert st["ports"][site.underlay.port]["shedding"]
        assert st["tx_failed"] == 4296 - full and site.outside.inject.count() == 0
        while dp.pull(site.underlay.sent, 512):
            pass
        site.outside.send([flow_frame(7, 1)])
        site.pump()  # it takes frames again: no longer shedding
        assert len(dp.pull(site.underlay.sent, 8)) == 1
        assert not site.gw.stats()["ports"][site.underlay.port]["shedding"]
    finally:
        site.close()


def two_links(site, dataplane, name):
    """Server .11 on the gateway's underlay port, .12 on a port of its own (returned)."""
    own = Wire(dataplane, name)
    for ip in SERVERS:
        site.gw.set_server(ip, SERVERS[ip])
    site.gw.set_server("192.168.50.12", SERVERS["192.168.50.12"], port=own.port)
    sfc = site.gw.add_sfc(TAG, VNI)
    site.gw.set_route(sfc, {"192.168.50.11": 1, "192.168.50.12": 1})
    site.gw.set_default_sfc(sfc)
    return sfc, own


def fill_link(site, own):
    """Frames of new flows until the link of server .11 (the underlay port) is full, what
    goes to .12 taken off its link as it comes: (frames sent, frames .12 got)."""
    f = got = 0
    while site.underlay.sent.count() < 4095:
        site.outside.send([flow_frame(f + k, 0) for k in range(200)])
        f += 200
        site.pump()
        got += len(dp.pull(own.sent, 512))
    return f, got


def test_a_slow_link_holds_the_other_server_back_for_about_stall_us_only(dataplane):
    """Server A's link takes one frame a pass, far less than arrives for it: it holds the
    outside back (B gets nothing new) until it has held for stall_us without emptying; then
    it sheds and B's frames flow. Every frame is accounted for."""
    site = GatewaySite(dataplane, "gsl", stall_us=30_000)
    sfc, own = two_links(site, dataplane, "gslb")
    try:
        f, to_b = fill_link(site, own)
        sent, to_a = f, 0
        more = [flow_frame(f + k, 1) for k in range(200)]  # built once: scapy took 40 ms a
        # pass, and a slow pass added to the time the hold took
        start, held_b, shed_at = time.monotonic(), None, None
        while time.monotonic() - start < 1.0:
            if site.outside.inject.count() < 1000:
                site.outside.send(more)
                sent += len(more)
            to_a += len(dp.pull(site.underlay.sent, 1))  # A: one frame a pass
            site.gw.poll()
            got = len(dp.pull(own.sent, 512))
            to_b += got
            if held_b is None and not got:
                held_b = time.monotonic()
            if site.gw.stats()["ports"][site.underlay.port]["shedding"]:
                shed_at = time.monotonic()
                break
        assert shed_at is not None, site.gw.stats()["ports"]
        assert 0.03 <= shed_at - start < 0.5
        b_before = to_b
        for _ in range(20):  # A sheds: the outside is read again, B's frames flow
            to_a += len(dp.pull(site.underlay.sent, 1))
            site.pump()
            to_b += len(dp.pull(own.sent, 512))
        assert to_b > b_before
        while True:
            n = len(dp.pull(site.underlay.sent, 512))
            if not n:
                break
            to_a += n
        site.pump()
        to_b += len(dp.pull(own.sent, 512))
        to_a += len(dp.pull(site.underlay.sent, 512))
        st = site.gw.stats()
        waiting = sum(p["waiting"] for p in st["ports"].values())
        assert to_a + to_b + st["tx_failed"] + waiting + site.outside.inject.count() == sent
        assert st["ports"][site.underlay.port]["tx_failed"] == st["tx_failed"] > 0
    finally:
        own.close()
        site.close()


def test_a_full_egress_holds_back_every_server_link_before_dropping(dataplane):
    """Frames back from two servers in one pass, the egress full: the first link's burst
    fills the egress's queue and the second link is not read (nothing dropped); once the
    egress takes frames, all of them leave."""
    site = GatewaySite(dataplane, "gfe", stall_us=1e6)
    sfc, own = two_links(site, dataplane, "gfeb")
    try:
        back = [vxlan_to_gateway(flow_frame(f % 300, f // 300)) for f in range(4095 + 32)]
        site.underlay.send(back[:4000])
        site.pump()
        site.underlay.send(back[4000:])
        site.pump()
        assert site.egress.sent.count() == 4095  # full, and a burst waits on the port
        site.underlay.send([vxlan_to_gateway(flow_frame(7, 9))] * 32)
        own.send([vxlan_to_gateway(flow_frame(8, 9), ip={"src": "192.168.50.12"})] * 32)
        site.gw.poll()
        assert site.gw.stats()["tx_failed"] == 0
        out = []
        for _ in range(50):
            out += [d for _, d in dp.pull(site.egress.sent, 512)]
            site.pump()
        out += [d for _, d in dp.pull(site.egress.sent, 512)]
        assert len(out) == 4095 + 32 + 64 and site.gw.stats()["tx_failed"] == 0
    finally:
        own.close()
        site.close()


def test_a_moves_marker_waits_for_a_shedding_link_and_is_never_dropped(dataplane):
    site = GatewaySite(dataplane, "gmk", stall_us=10_000)
    site.gw.set_mempool(dataplane.mempool)
    sfc, own = two_links(site, dataplane, "gmkb")
    try:
        f, _ = fill_link(site, own)  # A's link full, and it stays so
        site.outside.send([flow_frame(f + k, 0) for k in range(400)])
        for _ in range(3):  # A's queue fills: it holds the outside back from now on
            site.gw.poll()
        time.sleep(0.02)  # longer than stall_us
        for _ in range(12):
            site.gw.poll()
        assert site.gw.stats()["ports"][site.underlay.port]["shedding"]
        failed = site.gw.stats()["tx_failed"]
        move = site.gw.hold_flows(sfc, "192.168.50.11", "192.168.50.12")
        for _ in range(5):
            site.gw.poll()
        assert site.gw.stats()["tx_failed"] == failed  # the marker waits, never shed
        while dp.pull(site.underlay.sent, 512):
            pass
        site.pump()
        arps = [Ether(d) for _, d in dp.pull(site.underlay.sent, 512)]
        assert [a[ARP].pdst for a in arps if ARP in a] == ["192.168.50.11"]
        assert site.gw.move_marker(move)
    finally:
        own.close()
        site.close()


def test_a_rules_rewrite_never_lets_frames_fall_to_the_default(site):
    """The rules are switched whole (router/classify.h): while the loop runs and they are
    written again and again, no frame a rule takes meets an empty table."""
    gw = site.gw
    for ip in SERVERS:
        gw.set_server(ip, SERVERS[ip])
    ruled, default = gw.add_sfc(1), gw.add_sfc(2)
    gw.set_route(ruled, {"192.168.50.11": 1})
    gw.set_route(default, {"192.168.50.12": 1})
    rules = [{"dport": (1000 + k, 1000 + k), "sfc": ruled} for k in range(63)] + \
        [{"sfc": ruled}]  # the last takes every frame
    gw.set_rules(rules)
    gw.set_default_sfc(default)
    frames = [flow_frame(f, 0) for f in range(256)]
    loop = threading.Thread(target=gw.run)
    loop.start()
    try:
        for _ in range(100):
            site.outside.send(frames)
            for _ in range(10):
                gw.set_rules(rules)
            dp.pull(site.underlay.sent, 4096)
    finally:
        gw.stop()
        loop.join()
    stats = gw.stats()["sfcs"]
    assert stats[ruled]["rx"] > 0
    assert stats[default]["rx"] == 0, "frames fell to the default during a rewrite"
