"""The stock NAT NF (nfs/nat, NAPT44): packet in, packet out through real pool processes.

Mappings and the port pool live in state tables named after the NF's name in the SFC; they
outlive instances and the whole test session shares one state directory, so every test uses
an NF name of its own (nat_name()). Checksums are checked by letting scapy recompute them.
The tests of the port pool between instances (two_instances, restart) depend on the RELEASE
consistency of the "ports" table (nf.h: split/merge/trigger, shares given back at sleep/stop).
"""
import ctypes
import ipaddress
import itertools
import random
import struct
import subprocess
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from serpens.agent.state_manager import StateManager
from serpens.nfs import nat, source_path
from serpens.nfs.nat import ConfigError, decode_config, encode_config
from serpens.runtime_cy.builder import NF_INCLUDE
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import NFHarness, PacketHarness
from support.packets import BROADCAST, eth

pytestmark = pytest.mark.dataplane

INTERNAL = "10.0.0.0/8"
EXT = "192.0.2.1"
EXT2 = "192.0.2.2"
REMOTE = "198.51.100.7"
_ids = itertools.count()


def nat_name(tag: str) -> str:
    """An NF name (= state table namespace) no other test uses."""
    return f"nat-{tag}-{next(_ids)}"


def cfg(**kw):
    c = {"internal": INTERNAL, "external_ips": [EXT], "port_range": "1024-65535",
         "idle_timeout": 300, "max_flows": 4096}
    c.update(kw)
    return c


class Nat(NFHarness):
    """One NAT instance in a harness: .run(frames) -> list of Result; .counters."""

    def __init__(self, pool, build_stock, name, copy=0, **kw):
        super().__init__(pool, NF(build_stock("nat", copy), config=encode_config(cfg(**kw)),
                                  name=name))

    def run(self, frames):
        return super().run([bytes(f) for f in frames])

    def wait_asleep(self, timeout=5.0):
        """Until the instance sleeps: it has then given its pool shares back."""
        deadline = time.monotonic() + timeout
        while not self.process.ctl.sleeping:
            assert time.monotonic() < deadline, "the instance does not go to sleep"
            time.sleep(0.001)

    @property
    def counters(self):
        c = super().counters
        return {k: c.get(k, 0) for k in ("translated_out", "translated_in", "no_mapping",
                                         "pool_exhausted", "expired", "malformed",
                                         "not_internal", "passthrough", "unsupported",
                                         "table_full")}


# ---- packets ----------------------------------------------------------------------------------


def tcp(src="10.0.0.5", dst=REMOTE, sport=40000, dport=80, payload=b"hello", flags="S"):
    return bytes(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                     seq=12345) / payload)


def udp(src="10.0.0.5", dst=REMOTE, sport=40000, dport=53, payload=b"query", chksum=None):
    u = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport,
                                                                 chksum=chksum)
    return bytes(eth() / IP(src=src, dst=dst) / u / payload)


def icmp(src="10.0.0.5", dst=REMOTE, ident=777, type=8, payload=b"ping"):
    return bytes(eth() / IP(src=src, dst=dst) / ICMP(type=type, id=ident, seq=1) / payload)


def l4(p):
    for layer in (TCP, UDP, ICMP):
        if layer in p:
            return p[layer]
    return None


def assert_checksums(data: bytes):
    """IP and L4 checksums of a frame are what scapy computes from scratch (UDP 0 = none)."""
    p = Ether(data)
    fresh = Ether(data)
    del fresh[IP].chksum
    seg = l4(fresh)
    if seg is not None and not (isinstance(seg, UDP) and p[UDP].chksum == 0):
        del seg.chksum
    fresh = Ether(bytes(fresh))
    assert p[IP].chksum == fresh[IP].chksum, "IP header checksum"
    if seg is not None:
        assert l4(p).chksum == l4(fresh).chksum, f"{type(seg).__name__} checksum"


def pair_of(data: bytes):
    """(source ip, source port or ICMP id) of an outbound translated frame."""
    p = Ether(data)
    s = l4(p)
    return p[IP].src, (s.id if isinstance(s, ICMP) else s.sport)


def reply_to(orig: bytes, translated: bytes, payload=b"answer"):
    """The remote end's answer to a translated outbound frame."""
    t = Ether(translated)
    s = l4(t)
    ip = IP(src=t[IP].dst, dst=t[IP].src)
    if isinstance(s, TCP):
        return bytes(eth() / ip / TCP(sport=s.dport, dport=s.sport, flags="SA") / payload)
    if isinstance(s, UDP):
        return bytes(eth() / ip / UDP(sport=s.dport, dport=s.sport) / payload)
    return bytes(eth() / ip / ICMP(type=0, id=s.id, seq=s.seq) / payload)


def in_range(port, lo=1024, hi=65535):
    return lo <= port <= hi


def free_ports(dataplane, name, ip=EXT):
    """Free ports in the pool of `ip` as the state manager sees it (shares given back)."""
    value = StateManager(dataplane.config.state_dir).open(name, "ports").get(
        ipaddress.IPv4Address(ip).packed)
    bits = int.from_bytes(value, "little")
    return {p for p in range(65536) if bits >> p & 1}


# ---- configuration ----------------------------------------------------------------------------


def test_encode_config_layout_and_round_trip():
    b = encode_config(cfg(external_ips=[EXT, EXT2], port_range=[2000, 2999], idle_timeout=1.5,
                          max_flows=100))
    assert len(b) == 24 + 8
    assert struct.unpack_from("<I", b)[0] == nat.MAGIC
    assert b[4:8] == bytes([10, 0, 0, 0]) and b[8] == 8 and b[9] == 2
    assert struct.unpack_from("<HHHII", b, 10) == (2000, 2999, 0, 1500, 100)
    assert b[24:] == bytes([192, 0, 2, 1, 192, 0, 2, 2])
    assert decode_config(b) == {"internal": INTERNAL, "external_ips": [EXT, EXT2],
                                "port_range": "2000-2999", "idle_timeout": 1.5,
                                "max_flows": 100}
    # defaults
    d = decode_config(encode_config({"internal": "172.16.0.0/12", "external_ips": EXT}))
    assert (d["port_range"], d["idle_timeout"], d["max_flows"]) == ("1024-65535", 300, 65536)


@pytest.mark.parametrize("change,field,text", [
    ({"port_range": "1024-70000"}, "port_range", "70000 is not a port"),
    ({"port_range": "2000-1000"}, "port_range", "empty"),
    ({"port_range": "0-100"}, "port_range", "0 is not a port"),
    ({"port_range": "abc"}, "port_range", "not a range"),
    ({"port_range": [1, 2, 3]}, "port_range", "[lo, hi]"),
    ({"internal": "10.0.0.1/8"}, "internal", "not a valid CIDR"),
    ({"internal": "fd00::/8"}, "internal", "IPv6"),
    ({"internal": 10}, "internal", "not an IPv4 CIDR"),
    ({"external_ips": []}, "external_ips", "need 1 to 16"),
    ({"external_ips": [f"192.0.2.{i}" for i in range(1, 18)]}, "external_ips", "need 1 to 16"),
    ({"external_ips": [EXT, "300.1.1.1"]}, "external_ips[1]", "not an IPv4 address"),
    ({"external_ips": [EXT, EXT]}, "external_ips[1]", "twice"),
    ({"external_ips": ["10.1.2.3"]}, "external_ips[0]", "inside internal"),
    ({"external_ips": ["0.0.0.0"]}, "external_ips[0]", "not an address"),
    ({"external_ips": 5}, "external_ips", "list"),
    ({"idle_timeout": 0}, "idle_timeout", "outside"),
    ({"idle_timeout": -1}, "idle_timeout", "outside"),
    ({"idle_timeout": "10"}, "idle_timeout", "not a number"),
    ({"idle_timeout": float("nan")}, "idle_timeout", "not a number"),
    ({"idle_timeout": 10**7}, "idle_timeout", "outside"),
    ({"max_flows": 0}, "max_flows", "1-"),
    ({"max_flows": True}, "max_flows", "not an integer"),
    ({"bogus": 1}, "bogus", "unknown field"),
])
def test_encode_config_names_the_bad_field(change, field, text):
    with pytest.raises(ConfigError) as e:
        encode_config(cfg(**change))
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")
    assert text in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("missing", ["internal", "external_ips"])
def test_encode_config_missing_field(missing):
    c = cfg()
    del c[missing]
    with pytest.raises(ConfigError, match=f"^{missing}: missing"):
        encode_config(c)


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],                                   # short
    lambda b: b + b"\x00",                              # long
    lambda b: b"X" + b[1:],                             # magic
    lambda b: b[:4] + bytes([10, 0, 0, 1]) + b[8:],     # host bits in internal
    lambda b: b[:10] + struct.pack("<HH", 0, 100) + b[14:],    # port 0
    lambda b: b[:10] + struct.pack("<HH", 200, 100) + b[14:],  # empty range
    lambda b: b[:16] + struct.pack("<I", 0) + b[20:],   # timeout 0
    lambda b: b[:20] + struct.pack("<I", 0) + b[24:],   # max_flows 0
    lambda b: b[:24] + bytes([10, 9, 9, 9]),            # external ip inside internal
])
def test_init_revalidates_the_bytes(pool, build_stock, mangle):
    bad = mangle(encode_config(cfg()))
    sfc = compile_sfc(NF(build_stock("nat"), config=bad, name=nat_name("bad")))
    with pytest.raises(Exception):
        with PacketHarness(pool, sfc) as h:
            h.run([tcp()])


# ---- translation ------------------------------------------------------------------------------


def test_outbound_translation_and_checksums(pool, build_stock):
    frames = [tcp(payload=bytes(range(200))), udp(sport=5353, payload=b"x" * 33),
              udp(sport=5354, chksum=0), icmp(ident=777), tcp(src="10.200.1.2", sport=1,
                                                              flags="A")]
    with Nat(pool, build_stock, nat_name("out")) as n:
        res = n.run(frames)
        c = n.counters
    assert [r.verdict for r in res] == ["out"] * 5
    pairs = set()
    for f, r in zip(frames, res):
        a, b = Ether(f), Ether(r.data)
        assert b[IP].src == EXT and b[IP].dst == a[IP].dst
        ip, port = pair_of(r.data)
        assert in_range(port)
        pairs.add((ip, port))
        sa, sb = l4(a), l4(b)
        if isinstance(sa, ICMP):
            assert (sb.type, sb.seq, sb.id) == (8, sa.seq, port)
        else:
            assert sb.dport == sa.dport
        assert bytes(sb.payload) == bytes(sa.payload)
        assert len(r.data) == len(f)
        assert_checksums(r.data)
    assert len(pairs) == 5
    assert Ether(res[2].data)[UDP].chksum == 0  # no checksum stays none
    assert Ether(res[1].data)[UDP].chksum != 0
    assert c["translated_out"] == 5 and c["no_mapping"] == 0


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_udp_checksum_that_becomes_zero_is_sent_as_ffff(pool, build_stock):
    # one port only: the translated pair is known in advance, (EXT, 5000). Pick the payload
    # word so that the translated datagram's checksum computes to 0 (-> 0xFFFF, RFC 768).
    sport, dport = 40000, 53
    pseudo = ipaddress.IPv4Address(EXT).packed + ipaddress.IPv4Address(REMOTE).packed + \
        struct.pack("!BBH", 0, 17, 10)
    rest = ones_sum(pseudo + struct.pack("!HHHH", 5000, dport, 10, 0))
    word = 0xFFFF - rest
    frame = udp(sport=sport, dport=dport, payload=struct.pack("!H", word))
    assert Ether(frame)[UDP].chksum not in (0, 0xFFFF)
    with Nat(pool, build_stock, nat_name("ffff"), port_range="5000-5000") as n:
        out = n.run([frame])[0]
    assert out.verdict == "out" and pair_of(out.data) == (EXT, 5000)
    assert Ether(out.data)[UDP].chksum == 0xFFFF
    assert_checksums(out.data)


def test_reverse_path_restores_addresses_ports_and_checksums(pool, build_stock):
    frames = [tcp(sport=40001), udp(sport=40002), udp(sport=40003, chksum=0), icmp(ident=4242),
              tcp(src="10.1.1.1", sport=40001)]
    with Nat(pool, build_stock, nat_name("rev"), external_ips=[EXT, EXT2]) as n:
        res = n.run(frames)
        replies = [reply_to(f, r.data) for f, r in zip(frames, res)]
        back = n.run(replies)
        c = n.counters
    assert [r.verdict for r in back] == ["out"] * 5
    for f, reply, r in zip(frames, replies, back):
        a, b = Ether(f), Ether(r.data)
        assert b[IP].dst == a[IP].src and b[IP].src == a[IP].dst
        sa, sb = l4(a), l4(b)
        if isinstance(sa, ICMP):
            assert sb.type == 0 and sb.id == sa.id
        else:
            assert (sb.dport, sb.sport) == (sa.sport, sa.dport)
        assert bytes(sb.payload) == b"answer"
        assert_checksums(r.data)
    assert Ether(back[2].data)[UDP].chksum != 0  # the reply had a checksum: still valid
    assert c["translated_out"] == 5 and c["translated_in"] == 5 and c["no_mapping"] == 0


def test_unknown_inbound_is_dropped_and_counted(pool, build_stock):
    with Nat(pool, build_stock, nat_name("unknown")) as n:
        out = n.run([tcp(sport=40000, dport=443)])[0]
        _, port = pair_of(out.data)
        other = port + 1 if port < 65535 else port - 1
        frames = [
            bytes(eth() / IP(src=REMOTE, dst=EXT) / TCP(sport=443, dport=other)),   # no pair
            bytes(eth() / IP(src="203.0.113.9", dst=EXT) / TCP(sport=443, dport=port)),  # host
            bytes(eth() / IP(src=REMOTE, dst=EXT) / TCP(sport=444, dport=port)),   # port
            bytes(eth() / IP(src=REMOTE, dst=EXT) / UDP(sport=443, dport=port)),   # proto
            bytes(eth() / IP(src=REMOTE, dst=EXT) / ICMP(type=8, id=port)),        # echo req
            bytes(eth() / IP(src=REMOTE, dst=EXT) / ICMP(type=3, code=3)),          # error
            bytes(eth() / IP(src=REMOTE, dst=EXT) / TCP(sport=443, dport=port)),   # the flow
        ]
        res = n.run(frames)
        c = n.counters
    assert [r.verdict for r in res] == ["drop"] * 6 + ["out"]
    assert c["no_mapping"] == 6 and c["translated_in"] == 1


def test_passthrough_malformed_and_unsupported(pool, build_stock):
    arp = bytes(eth(dst=BROADCAST) / ARP(pdst="10.0.0.9"))
    outside = tcp(src="172.16.0.1", dst=REMOTE)
    v6 = bytes(eth() / IPv6(src="fd00::1", dst="2001:db8::1") / UDP())
    truncated = tcp()[:14 + 12]
    frag = bytes(eth() / IP(src="10.0.0.5", dst=REMOTE, frag=10, proto=17) / Raw(b"x" * 16))
    frag_outside = bytes(eth() / IP(src="172.16.0.1", dst=REMOTE, frag=10, proto=17) /
                         Raw(b"x" * 16))
    echo_reply_out = icmp(type=0)
    gre = bytes(eth() / IP(src="10.0.0.5", dst=REMOTE, proto=47) / Raw(b"\0" * 8))
    frames = [arp, outside, v6, truncated, frag, frag_outside, echo_reply_out, gre]
    with Nat(pool, build_stock, nat_name("misc")) as n:
        res = n.run(frames)
        c = n.counters
    assert [r.verdict for r in res] == ["out", "out", "out", "drop", "drop", "out", "drop",
                                        "drop"]
    for k in (0, 1, 2, 5):
        assert res[k].data == frames[k]  # untouched
    assert c["passthrough"] == 4 and c["not_internal"] == 2
    assert c["malformed"] == 2 and c["unsupported"] == 2 and c["translated_out"] == 0


def test_distinct_flows_never_share_a_pair(pool, build_stock):
    frames = [(tcp if i % 3 == 0 else udp if i % 3 == 1 else icmp)(
        src=f"10.0.{i // 200}.{i % 200 + 1}", **({"ident": 1000 + i % 7} if i % 3 == 2
                                                 else {"sport": 1024 + i % 5}))
        for i in range(1000)]
    with Nat(pool, build_stock, nat_name("many"), external_ips=[EXT, EXT2],
             port_range="20000-29999") as n:
        res = n.run(frames)
        assert [r.verdict for r in res] == ["out"] * 1000
        pairs = [pair_of(r.data) for r in res]
        assert len(set(pairs)) == 1000
        assert all(ip in (EXT, EXT2) and in_range(p, 20000, 29999) for ip, p in pairs)
        assert {ip for ip, _ in pairs} == {EXT, EXT2}  # both addresses are used
        back = n.run([reply_to(f, r.data) for f, r in zip(frames, res)])
        c = n.counters
    assert [r.verdict for r in back] == ["out"] * 1000
    for f, r in zip(frames, back):
        a, b = Ether(f), Ether(r.data)
        assert b[IP].dst == a[IP].src
        sa, sb = l4(a), l4(b)
        assert (sb.id if isinstance(sa, ICMP) else sb.dport) == \
            (sa.id if isinstance(sa, ICMP) else sa.sport)
    assert c["translated_out"] == 1000 and c["translated_in"] == 1000


def test_established_flows_are_rewritten_as_their_first_packets(pool, build_stock, dataplane):
    """A mapping keeps its flow's checksum deltas (out value bytes 12-16): later packets take
    them instead of working them out again, with the same bytes out; a mapping without them
    (made by a build that kept none) is translated alike and gets them."""
    from serpens.runtime_cy import _dataplane as dp
    frames = [tcp(sport=46000, payload=bytes(range(50))), udp(sport=46001, payload=b"x" * 33),
              udp(sport=46002, chksum=0), icmp(ident=46003),
              udp(src="10.255.255.255", sport=65535, payload=b"\xff" * 8)]
    name = nat_name("deltas")
    with Nat(pool, build_stock, name) as n:
        first = n.run(frames)   # new mappings
        again = n.run(frames)   # established: the deltas kept with the mapping
        table = dp.StateTable(dataplane.config.state_dir, name, "out")
        try:
            kept = dict(table.items())
            assert len(kept) == 5 and all(v[12:16] != bytes(4) for v in kept.values())
            for key, value in kept.items():
                table.put(key, value[:12] + bytes(4) + value[16:])
            old = n.run(frames)  # as a build without deltas left them
            assert all(v[12:16] == kept[k][12:16] for k, v in table.items())
        finally:
            table.close()
        c = n.counters
    for r in first:
        assert r.verdict == "out"
        assert_checksums(r.data)
    assert [r.data for r in again] == [r.data for r in old] == [r.data for r in first]
    assert c["translated_out"] == 15 and c["no_mapping"] == 0


def test_mapping_is_reused_by_the_same_flow(pool, build_stock):
    flow = udp(sport=41000)
    other_dst = udp(sport=41000, dst="198.51.100.8")  # another remote: another mapping
    with Nat(pool, build_stock, nat_name("reuse")) as n:
        first = n.run([flow, flow, flow])
        again = n.run([flow])
        other = n.run([other_dst])
        c = n.counters
    pairs = {pair_of(r.data) for r in first + again}
    assert len(pairs) == 1
    assert pair_of(other[0].data) not in pairs
    assert c["translated_out"] == 5


# ---- idle timeout, pool exhaustion ------------------------------------------------------------


def test_idle_mappings_expire_and_their_ports_come_back(pool, build_stock):
    idle, busy_in, busy_out = udp(sport=42000), udp(sport=42001), udp(sport=42002)
    with Nat(pool, build_stock, nat_name("idle"), idle_timeout=0.6,
             port_range="3000-3007") as n:
        r_idle, r_in, r_out = n.run([idle, busy_in, busy_out])
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            # one flow is kept alive by inbound packets only, one by outbound packets only
            r = n.run([reply_to(busy_in, r_in.data), busy_out])
            assert [x.verdict for x in r] == ["out", "out"]
            assert pair_of(r[1].data) == pair_of(r_out.data)  # used: never expires
            time.sleep(0.2)
        late = n.run([reply_to(idle, r_idle.data)])[0]
        assert late.verdict == "drop"  # the idle mapping is gone
        assert n.counters["expired"] == 1 and n.counters["no_mapping"] == 1
        # its port is free again: 6 new flows fit beside the busy ones in 8 ports
        new = n.run([udp(sport=43000 + i) for i in range(6)])
        assert [r.verdict for r in new] == ["out"] * 6
        assert {pair_of(r.data) for r in new} | {pair_of(r_in.data), pair_of(r_out.data)} == \
            {(EXT, p) for p in range(3000, 3008)}
        assert n.run([udp(sport=44000)])[0].verdict == "drop"
        c = n.counters
    assert c["pool_exhausted"] == 1 and c["expired"] == 1


def test_idle_flow_gets_a_new_mapping_when_it_comes_back(pool, build_stock):
    flow = tcp(sport=45000)
    with Nat(pool, build_stock, nat_name("comeback"), idle_timeout=0.3) as n:
        first = n.run([flow])[0]
        time.sleep(0.6)
        second = n.run([flow])[0]
        stale = n.run([reply_to(flow, first.data)])[0]
        fresh = n.run([reply_to(flow, second.data)])[0]
        c = n.counters
    assert second.verdict == "out" and pair_of(second.data) != pair_of(first.data)
    assert stale.verdict == "drop" and fresh.verdict == "out"
    assert c["expired"] == 1


def test_pool_exhaustion_is_counted(pool, build_stock, dataplane):
    name = nat_name("exhaust")
    frames = [tcp(sport=46000 + i) for i in range(10)]
    with Nat(pool, build_stock, name, port_range="6000-6007") as n:
        res = n.run(frames)
        assert [r.verdict for r in res] == ["out"] * 8 + ["drop"] * 2
        assert {pair_of(r.data) for r in res[:8]} == {(EXT, p) for p in range(6000, 6008)}
        back = n.run([reply_to(f, r.data) for f, r in zip(frames[:8], res[:8])])
        assert [r.verdict for r in back] == ["out"] * 8
        c = n.counters
    assert c["pool_exhausted"] == 2 and c["translated_out"] == 8
    assert free_ports(dataplane, name) == set()  # every port is held by a live mapping


# ---- several instances: the RELEASE pool ------------------------------------------------------


def test_two_instances_rebalance_the_pool(pool, build_stock, dataplane):
    name = nat_name("two")
    ports = set(range(7000, 7008))
    a_frames = [udp(src="10.0.1.1", sport=47000 + i) for i in range(6)]
    b_frames = [udp(src="10.0.2.1", sport=48000 + i) for i in range(3)]
    with Nat(pool, build_stock, name, copy=1, port_range="7000-7007") as a, \
            Nat(pool, build_stock, name, copy=2, port_range="7000-7007") as b:
        ra = a.run(a_frames)
        assert [r.verdict for r in ra] == ["out"] * 6
        a_pairs = {pair_of(r.data) for r in ra}
        # A has gone idle (sleeps): its share is back in the pool, B gets the rest
        a.wait_asleep()
        rb = b.run(b_frames)
        assert [r.verdict for r in rb] == ["out", "out", "drop"]
        b_pairs = {pair_of(r.data) for r in rb[:2]}
        assert len(a_pairs) == 6 and len(b_pairs) == 2 and not a_pairs & b_pairs
        assert a_pairs | b_pairs == {(EXT, p) for p in ports}
        # both live: each translates its own flows back, nothing is handed out twice
        back_a = a.run([reply_to(f, r.data) for f, r in zip(a_frames, ra)])
        back_b = b.run([reply_to(f, r.data) for f, r in zip(b_frames[:2], rb[:2])])
        assert [r.verdict for r in back_a + back_b] == ["out"] * 8
        assert a.run([udp(src="10.0.1.1", sport=49000)])[0].verdict == "drop"
        ca, cb = a.counters, b.counters
    assert cb["pool_exhausted"] == 1 and ca["pool_exhausted"] == 1
    assert free_ports(dataplane, name) == set()


def test_shares_go_back_when_instances_stop(pool, build_stock, dataplane):
    """A stopped instance holds nothing: the pool has every port but the live mappings'."""
    name = nat_name("shares")
    with Nat(pool, build_stock, name, copy=1, port_range="8000-8063") as a:
        ra = a.run([udp(sport=50000 + i) for i in range(5)])
    held = {p for _, p in map(pair_of, (r.data for r in ra))}
    assert free_ports(dataplane, name) == set(range(8000, 8064)) - held
    with Nat(pool, build_stock, name, copy=2, port_range="8000-8063") as b:
        rb = b.run([udp(sport=51000 + i) for i in range(59)] + [udp(sport=52000)])
        assert [r.verdict for r in rb] == ["out"] * 59 + ["drop"]
        assert not {p for _, p in map(pair_of, (r.data for r in rb[:59]))} & held
    assert free_ports(dataplane, name) == set()


def test_mappings_survive_restart_of_every_instance(pool, build_stock, dataplane):
    name = nat_name("restart")
    frames = [tcp(sport=53000), udp(sport=53001), icmp(ident=53002),
              udp(src="10.3.3.3", sport=53003)]
    with Nat(pool, build_stock, name, copy=1, port_range="9000-9015") as a, \
            Nat(pool, build_stock, name, copy=2, port_range="9000-9015") as b:
        ra = a.run(frames[:2])
        rb = b.run(frames[2:])
    res = ra + rb
    pairs = [pair_of(r.data) for r in res]
    assert len(set(pairs)) == 4
    # every instance stopped; new ones (in other pool processes, maybe) continue
    with Nat(pool, build_stock, name, copy=1, port_range="9000-9015") as a2, \
            Nat(pool, build_stock, name, copy=2, port_range="9000-9015") as b2:
        back_a = a2.run([reply_to(f, r.data) for f, r in zip(frames[2:], res[2:])])
        back_b = b2.run([reply_to(f, r.data) for f, r in zip(frames[:2], res[:2])])
        assert [r.verdict for r in back_a + back_b] == ["out"] * 4
        for f, r in zip(frames[2:] + frames[:2], back_a + back_b):
            assert Ether(r.data)[IP].dst == Ether(f)[IP].src
            assert_checksums(r.data)
        again = b2.run(frames)  # the same flows keep their pairs
        assert [pair_of(r.data) for r in again] == pairs
        new = a2.run([udp(sport=54000 + i) for i in range(12)])
        assert [r.verdict for r in new] == ["out"] * 12
        assert not {pair_of(r.data) for r in new} & set(pairs)
        assert a2.run([udp(sport=55000)])[0].verdict == "drop"  # 16 ports, 16 mappings
        assert a2.counters["expired"] == 0 and b2.counters["expired"] == 0


def test_a_stopped_instances_idle_mappings_are_reclaimed(pool, build_stock):
    """A flow whose instance stopped and which never comes back is expired by the sweep of
    another instance after 2 x idle_timeout (not before: it may still come back), so its port
    is not lost."""
    name = nat_name("orphan")
    with Nat(pool, build_stock, name, copy=1, idle_timeout=0.5, port_range="9100-9103") as a:
        assert [r.verdict for r in a.run([udp(sport=56000 + i) for i in range(4)])] == \
            ["out"] * 4
        last = time.monotonic()
    with Nat(pool, build_stock, name, copy=2, idle_timeout=0.5, port_range="9100-9103") as b:
        time.sleep(max(0.0, last + 0.75 - time.monotonic()))
        early = b.run([udp(src="10.9.9.9", sport=57000)])
        assert early[0].verdict == "drop" and b.counters["expired"] == 0  # 1.5 x: kept
        time.sleep(max(0.0, last + 1.5 - time.monotonic()))
        res = b.run([udp(src="10.9.9.9", sport=57000 + i) for i in range(4)])
        c = b.counters
    assert [r.verdict for r in res] == ["out"] * 4
    assert c["expired"] == 4


def test_a_reset_pool_never_hands_out_a_live_pair(pool, build_stock, dataplane):
    """Should the pool lose track of live mappings (here: overwritten with every port free
    while nothing runs), a new flow still never gets a pair a live mapping holds."""
    name = nat_name("reset")
    flows = [udp(sport=58000 + i) for i in range(4)]
    with Nat(pool, build_stock, name, port_range="9200-9207") as a:
        held = {pair_of(r.data) for r in a.run(flows)}
    full = sum(1 << p for p in range(9200, 9208)).to_bytes(nat.BITMAP_BYTES, "little")
    StateManager(dataplane.config.state_dir).open(name, "ports").put(
        ipaddress.IPv4Address(EXT).packed, full)
    with Nat(pool, build_stock, name, port_range="9200-9207") as b:
        res = b.run([udp(src="10.7.7.7", sport=59000 + i) for i in range(5)])
        assert [r.verdict for r in res] == ["out"] * 4 + ["drop"]
        assert not {pair_of(r.data) for r in res[:4]} & held
        back = b.run([bytes(eth() / IP(src=REMOTE, dst=ip) / UDP(sport=53, dport=port))
                      for ip, port in sorted(held)])
        assert [r.verdict for r in back] == ["out"] * 4  # the old flows are intact


# ---- the pool's bit operations, compiled for the host -------------------------------------

HOST_WRAPPER = r"""
#include "%s"
void t_split(void *pool, void *share) { pool_split(0, 0, 0, pool, share); }
void t_merge(void *into, const void *from) { pool_merge(0, t_ports, 0, into, from); }
void t_range(unsigned lo, unsigned hi)
{
	port_lo = lo;
	port_hi = hi;
	memset(cursor, 0, sizeof(cursor));
}
int t_take(uint64_t *share) { return take_bit(share, 0); }
"""


@pytest.fixture(scope="module")
def host_nat(tmp_path_factory):
    d = tmp_path_factory.mktemp("nat_host")
    (d / "w.c").write_text(HOST_WRAPPER % source_path("nat"))
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-I", str(NF_INCLUDE), "-o",
                    str(d / "w.so"), str(d / "w.c")], check=True)
    lib = ctypes.CDLL(str(d / "w.so"))
    lib.t_take.restype = ctypes.c_int
    return lib


def bitmap(ports=()):
    b = (ctypes.c_uint64 * 1024)()
    for p in ports:
        b[p >> 6] |= 1 << (p & 63)
    return b


def ports_of(b):
    return {w * 64 + i for w in range(1024) if b[w] for i in range(64) if b[w] >> i & 1}


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64, 1000, 30000, 65536])
def test_split_moves_half_of_the_free_ports(host_nat, n):
    rng = random.Random(n)
    orig = set(rng.sample(range(65536), n))
    pool_b, share = bitmap(orig), bitmap()
    host_nat.t_split(pool_b, share)
    p, s = ports_of(pool_b), ports_of(share)
    assert not p & s and p | s == orig
    assert len(s) == (n + 1) // 2
    host_nat.t_merge(pool_b, share)  # and back
    assert ports_of(pool_b) == orig


def test_merge_is_or(host_nat):
    a, b = bitmap({1, 2, 3, 64, 65535}), bitmap({3, 4, 4000})
    host_nat.t_merge(a, b)
    assert ports_of(a) == {1, 2, 3, 4, 64, 4000, 65535}


def test_ports_are_taken_round_robin_inside_the_range(host_nat):
    host_nat.t_range(1000, 1130)
    share = bitmap(set(range(990, 1140)))  # bits outside the range are never handed out
    taken = [host_nat.t_take(share) for _ in range(131)]
    assert taken == list(range(1000, 1131))
    assert host_nat.t_take(share) == -1
    share[1000 >> 6] |= 1 << (1000 & 63)      # 1000 and 1100 come back,
    share[1100 >> 6] |= 1 << (1100 & 63)
    assert host_nat.t_take(share) == 1000     # the cursor wrapped: the lowest comes first
    assert host_nat.t_take(share) == 1100
    assert host_nat.t_take(share) == -1
    assert ports_of(share) == set(range(990, 1000)) | set(range(1131, 1140))
    host_nat.t_range(1, 65535)
    share = bitmap({5, 70, 65535})
    assert [host_nat.t_take(share) for _ in range(4)] == [5, 70, 65535, -1]
    share = bitmap({65535, 3})  # after 65535 the search wraps to the bottom
    assert host_nat.t_take(share) == 3 and host_nat.t_take(share) == 65535
