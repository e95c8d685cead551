"""The NF context table: header parsing, checksums (RFC 1071/1624), packet helpers."""
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether

from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

OK, NON_IP, TRUNCATED, BAD, FRAGMENT = range(5)


def b(pkt):
    return bytes(pkt)


@pytest.mark.parametrize("pkt,result,family,l4", [
    (eth() / IP() / TCP() / b"data", OK, 4, 34),
    (eth() / Dot1Q(vlan=5) / IP(options=b"\x01\x01\x01\x01") / UDP(), OK, 4, 42),
    (eth() / IPv6() / IPv6ExtHdrHopByHop() / UDP() / b"x", OK, 6, 62),
    (eth() / IPv6() / ICMPv6EchoRequest(id=7), OK, 6, 54),
    (eth() / IP(flags="MF") / UDP(), OK, 4, 34),
    (eth() / IP(frag=10) / UDP(), FRAGMENT, 4, 0),
    (eth() / IPv6() / IPv6ExtHdrFragment(offset=3) / UDP(), FRAGMENT, 6, 0),
    (eth() / ARP(), NON_IP, 0, 0),
])
def test_parse(pkt, result, family, l4):
    r, h = dp.parse(b(pkt))
    assert r == result
    assert h["family"] == family
    assert h["l4_off"] == l4


def test_parse_refuses_bad_headers():
    good = b(eth() / IP() / TCP())
    assert dp.parse(good[:20])[0] == TRUNCATED
    assert dp.parse(good[:14 + 20 + 10])[0] == TRUNCATED      # TCP header cut
    ihl3 = good[:14] + bytes([0x43]) + good[15:]
    assert dp.parse(ihl3)[0] == BAD
    v5 = good[:14] + bytes([0x55]) + good[15:]
    assert dp.parse(v5)[0] == BAD
    too_long = b(eth() / IP(len=500) / TCP())
    assert dp.parse(too_long)[0] == TRUNCATED
    assert dp.parse(b"")[0] == TRUNCATED


def test_parse_never_reads_past_the_frame():
    rng = random.Random(7)
    base = [b(eth() / IP() / TCP() / (b"x" * 20)), b(eth() / IPv6() / IPv6ExtHdrHopByHop() / UDP()),
            b(eth() / Dot1Q() / Dot1Q() / IP() / ICMP())]
    for _ in range(3000):
        f = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        r, h = dp.parse(bytes(f[:rng.randint(0, len(f))]))
        assert r in range(5)
        if r == OK and h["l4_off"]:
            assert h["payload_off"] + h["payload_len"] <= len(f)


def test_the_common_frames_straight_path_parses_as_the_general_one():
    """Untagged IPv4 UDP/TCP frames take a straight path in serpens_parse: for those and for
    every near miss (options, DF/MF/offsets, TCP data offsets, IP lengths short of or past
    the frame, trailing bytes, other protocols, tags, IPv6) and thousands of mutations of
    their header bytes, the result and every byte of the parsed headers, flow and pads
    included, are the general parser's."""
    udp = IP(src="10.1.2.3", dst="10.9.8.7") / UDP(sport=1234, dport=53) / b"payload!"
    tcp = IP(src="10.1.2.4", dst="10.9.8.7") / TCP(sport=40000, dport=443) / (b"x" * 8)
    kinds = [udp, tcp, IP(flags="DF") / UDP() / b"x", IP(flags="MF") / UDP() / b"x",
             IP(frag=3, proto=17) / (b"x" * 16), IP(options=b"\x01\x01\x01\x00") / UDP(),
             IP() / TCP(options=[("MSS", 1460)]) / b"x", IP() / TCP(dataofs=4),
             IP() / TCP(dataofs=15), IP(len=27) / UDP(), IP(len=28) / UDP(),
             IP(len=39) / TCP(), IP(len=600) / UDP(), IP() / ICMP(id=5), IP(proto=47) / (b"x" * 8),
             IPv6() / UDP() / b"x", IPv6() / TCP()]
    frames = [b(eth() / k) for k in kinds] + [b(eth() / Dot1Q(vlan=7) / udp),
                                              b(eth() / udp) + b"trailer", b(eth() / ARP())]
    rng = random.Random(18)
    for _ in range(4000):
        f = bytearray(rng.choice(frames[:2]))
        for _ in range(rng.randint(1, 3)):
            f[rng.randrange(12, min(len(f), 14 + 40))] = rng.randrange(256)
        frames.append(bytes(f[:rng.randint(30, len(f))]) if rng.random() < 0.2 else bytes(f))
    straight = 0
    for f in frames:
        fast, general = dp.parse(f), dp.parse(f, general=True)
        assert fast == general, f.hex()
        straight += fast[0] == OK and f[12:15] == b"\x08\x00\x45"
    assert straight > 1000  # the straight path was taken, and agreed


def valid(frame: bytes) -> bool:
    """Do the IP and L4 checksums of frame check out (scapy recomputes them)?"""
    pkt = Ether(frame)
    rebuilt = Ether(frame)
    if IP in rebuilt:
        del rebuilt[IP].chksum
    l4 = rebuilt.getlayer(TCP) or rebuilt.getlayer(UDP) or rebuilt.getlayer(ICMP) or \
        rebuilt.getlayer(ICMPv6EchoRequest)
    for field in ("chksum", "cksum"):
        if field in l4.fields:
            delattr(l4, field)
    return bytes(Ether(bytes(rebuilt))) == bytes(pkt)


def test_incremental_checksum_update(pool, build):
    pkts = [eth() / IP(src="10.1.2.3", dst="8.8.8.8") / TCP(sport=5555, dport=80) / b"hello",
            eth() / IP(src="172.16.0.9", dst="1.1.1.1", options=b"\x01" * 4) / UDP(sport=9, dport=53) / (b"q" * 33)]
    with PacketHarness(pool, compile_sfc(NF(build("csum.c"), config=b"\x00"))) as h:
        results = h.run([b(p) for p in pkts])
    for r in results:
        out = Ether(r.data)
        assert out[IP].src == "192.0.2.1"
        assert out.sport == 4242
        assert valid(r.data)


def test_full_checksums(pool, build):
    pkts = [eth() / IP() / TCP() / b"odd", eth() / IP() / UDP() / (b"x" * 100),
            eth() / IP() / ICMP() / b"ping", eth() / IPv6() / UDP() / b"v6",
            eth() / IPv6() / ICMPv6EchoRequest() / b"echo"]
    corrupted = []
    for p in pkts:
        f = bytearray(b(p))
        f[-1] ^= 0xFF  # payload changed: the checksums no longer hold
        corrupted.append(bytes(f))
    with PacketHarness(pool, compile_sfc(NF(build("csum.c"), config=b"\x01"))) as h:
        results = h.run(corrupted)
    assert all(r.verdict == "out" and valid(r.data) for r in results)
