"""The stock firewall NF (nfs/fw): packet in, verdict out, through a real pool process.

Verdicts are cached per flow in a state table that outlives instances and is shared by every
instance of an NF of the same name (here: the whole test session, the state directory is the
session's): tests that look at cache_hits use flows no other test sends (fresh_net()), and
tests that need another cache capacity use another NF name.
"""
import itertools
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP

from serpens.agent.process_pool import PoolError
from serpens.nfs import fw
from serpens.nfs.fw import ConfigError, encode_config
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import NFHarness, PacketHarness
from support.packets import BROADCAST, eth

pytestmark = pytest.mark.dataplane

_nets = itertools.count(1)


def fresh_net() -> str:
    """A /24 (as 'a.b.c.') that no other test of this session uses."""
    n = next(_nets)
    return f"100.{64 + n // 256}.{n % 256}."


def tcp(src="10.0.0.1", dst="10.9.9.9", sport=1234, dport=80, **kw):
    return bytes(eth() / IP(src=src, dst=dst, **kw) / TCP(sport=sport, dport=dport) / b"data")


def udp(src="10.0.0.1", dst="10.9.9.9", sport=1234, dport=53, **kw):
    return bytes(eth() / IP(src=src, dst=dst, **kw) / UDP(sport=sport, dport=dport) / b"q")


def tcp6(src="2001:db8::1", dst="2001:db8:ffff::9", sport=1234, dport=80):
    return bytes(eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport))


def udp6(src="2001:db8::1", dst="2001:db8:ffff::9", sport=1234, dport=53):
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport))


def icmp(src="10.0.0.1", dst="10.9.9.9"):
    return bytes(eth() / IP(src=src, dst=dst) / ICMP(id=7))


def icmp6(src="2001:db8::1", dst="2001:db8::2"):
    return bytes(eth() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=7))


def arp():
    return bytes(eth(dst=BROADCAST) / ARP(pdst="10.0.0.9"))


class FW(NFHarness):
    """One fw instance in a harness: .run(frames) -> ["out"/"drop", ...]; .counters."""

    def __init__(self, pool, build_stock, cfg, copy=0, name="fw"):
        # tables are per NF name in the SFC: another name, another verdict table
        super().__init__(pool, NF(build_stock("fw", copy), config=encode_config(cfg), name=name))

    def run(self, frames):
        results = super().run(frames)
        for f, r in zip(frames, results):
            if r.verdict == "out":
                assert r.data == f  # the firewall never changes a packet
        return [r.verdict for r in results]


def verdicts(pool, build_stock, cfg, frames):
    with FW(pool, build_stock, cfg) as f:
        return f.run(frames)


# ---- rule semantics ---------------------------------------------------------------------


def test_first_match_wins(pool, build_stock):
    rules = [{"action": "deny", "src": "10.0.0.0/24"}, {"action": "allow", "src": "10.0.0.0/8"}]
    frames = [tcp(src="10.0.0.5"), tcp(src="10.1.0.5"), tcp(src="11.0.0.1")]
    assert verdicts(pool, build_stock, {"rules": rules, "default": "deny"}, frames) == \
        ["drop", "out", "drop"]
    # the same rules the other way round: the /8 allow now shadows the /24 deny
    assert verdicts(pool, build_stock, {"rules": rules[::-1], "default": "deny"}, frames) == \
        ["out", "out", "drop"]


@pytest.mark.parametrize("default,expect", [("deny", "drop"), ("allow", "out")])
def test_default_applies_when_no_rule_matches(pool, build_stock, default, expect):
    cfg = {"rules": [{"action": "allow" if default == "deny" else "deny", "dst": "192.0.2.0/24"}],
           "default": default}
    frames = [tcp(dst="10.1.1.1"), udp6(), icmp(), tcp(dst="192.0.2.7")]
    other = "out" if expect == "drop" else "drop"
    with FW(pool, build_stock, cfg) as f:
        assert f.run(frames) == [expect, expect, expect, other]
        c = f.counters
    assert (c["allowed"], c["denied"]) == ((1, 3) if default == "deny" else (3, 1))


def test_default_is_allow_and_no_rules_allows_everything(pool, build_stock):
    frames = [tcp(), udp6(), icmp(), arp()]
    assert verdicts(pool, build_stock, {}, frames) == ["out"] * 4
    assert verdicts(pool, build_stock, {"default": "deny"}, frames) == ["drop"] * 4


def test_ipv4_cidrs(pool, build_stock):
    cfg = {"rules": [{"action": "allow", "src": "10.0.16.0/20", "dst": "192.0.2.128/25"},
                     {"action": "allow", "src": "172.16.5.4/32"}],
           "default": "deny"}
    frames = [tcp(src="10.0.16.0", dst="192.0.2.128"), tcp(src="10.0.31.255", dst="192.0.2.255"),
              tcp(src="10.0.32.0", dst="192.0.2.200"), tcp(src="10.0.15.255", dst="192.0.2.200"),
              tcp(src="10.0.20.1", dst="192.0.2.127"),
              udp(src="172.16.5.4"), udp(src="172.16.5.5")]
    assert verdicts(pool, build_stock, cfg, frames) == \
        ["out", "out", "drop", "drop", "drop", "out", "drop"]


def test_ipv6_cidrs(pool, build_stock):
    cfg = {"rules": [{"action": "deny", "src": "2001:db8:8000::/33"},
                     {"action": "allow", "src": "2001:db8::/32", "dst": "fd00::/8"},
                     {"action": "allow", "dst": "2001:db8:1:2:3:4:5:6/127"}],
           "default": "deny"}
    frames = [tcp6(src="2001:db8::1", dst="fd12::1"),             # allowed by rule 1
              tcp6(src="2001:db8:8000::1", dst="fd12::1"),        # /33 deny first
              tcp6(src="2001:db8:7fff:ffff::1", dst="fd12::1"),   # just below the /33
              tcp6(src="2001:db9::1", dst="fd12::1"),             # outside the /32
              tcp6(src="2001:db8::1", dst="fe00::1"),             # dst outside fd00::/8
              udp6(src="::1", dst="2001:db8:1:2:3:4:5:7"),        # inside the /127
              udp6(src="::1", dst="2001:db8:1:2:3:4:5:8")]        # outside
    assert verdicts(pool, build_stock, cfg, frames) == \
        ["out", "drop", "out", "drop", "drop", "out", "drop"]


def test_rule_family_must_equal_packet_family(pool, build_stock):
    cfg = {"rules": [{"action": "allow", "src": "10.0.0.0/8"},
                     {"action": "allow", "src": "32.1.13.184/32"},  # the bytes 20 01 0d b8
                     {"action": "allow", "src": "::a00:0/104"},     # ::10.0.0.0/104
                     {"action": "deny", "src": "::/0"},             # every IPv6 packet
                     {"action": "allow", "proto": "udp"}],          # family any
           "default": "deny"}
    frames = [tcp(src="10.0.0.1"),
              tcp6(src="::ffff:10.0.0.1"),   # IPv4-mapped: IPv6, so rule 0 does not match it
              tcp6(src="2001:db8::1"),       # starts with the bytes of 32.1.13.184: IPv6 still
              tcp6(src="::10.0.0.1"),        # IPv4-compatible: the IPv6 rule only
              udp6(),                        # denied by ::/0 before the family-any rule
              udp(src="11.0.0.1"),           # family-any rule (not the IPv6 ::/0)
              tcp(src="11.0.0.1")]
    assert verdicts(pool, build_stock, cfg, frames) == \
        ["out", "drop", "drop", "out", "drop", "out", "drop"]


def test_port_ranges(pool, build_stock):
    cfg = {"rules": [{"action": "allow", "proto": "tcp", "dport": "1000-2000"},
                     {"action": "allow", "proto": "udp", "sport": [53, 53], "dport": 5353},
                     {"action": "allow", "sport": "7"}],   # proto any: tcp and udp
           "default": "deny"}
    frames = [tcp(dport=999), tcp(dport=1000), tcp(dport=2000), tcp(dport=2001),
              udp(dport=1500),                                  # rule 0 is tcp only
              udp(sport=53, dport=5353), udp(sport=54, dport=5353), udp(sport=53, dport=5354),
              tcp6(sport=7, dport=9), udp(sport=7), tcp(sport=8, dport=9),
              icmp()]                                           # no ports: no port rule
    assert verdicts(pool, build_stock, cfg, frames) == \
        ["drop", "out", "out", "drop", "drop", "out", "drop", "drop", "out", "out", "drop",
         "drop"]


def test_protocols(pool, build_stock):
    gre = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2", proto=47) / (b"\x00" * 8))
    frames = [tcp(), udp(), icmp(), icmp6(), gre]
    cases = {"tcp": ["out", "drop", "drop", "drop", "drop"],
             "udp": ["drop", "out", "drop", "drop", "drop"],
             "icmp": ["drop", "drop", "out", "out", "drop"],   # ICMP and ICMPv6
             "any": ["out"] * 5}
    for proto, expect in cases.items():
        cfg = {"rules": [{"action": "allow", "proto": proto}], "default": "deny"}
        assert verdicts(pool, build_stock, cfg, frames) == expect, proto


def test_non_ip_follows_the_default_not_the_rules(pool, build_stock):
    allow_all = [{"action": "allow"}]
    deny_all = [{"action": "deny"}]
    assert verdicts(pool, build_stock, {"rules": allow_all, "default": "deny"},
                    [arp(), tcp()]) == ["drop", "out"]
    assert verdicts(pool, build_stock, {"rules": deny_all, "default": "allow"},
                    [arp(), tcp()]) == ["out", "drop"]


def test_non_first_fragments_match_only_rules_without_ports(pool, build_stock):
    frag4 = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2", proto=17, frag=10) / (b"x" * 16))
    first4 = udp(src="10.0.0.1", dst="10.0.0.2", flags="MF")
    frag6 = bytes(eth() / IPv6(src="2001:db8::1") / IPv6ExtHdrFragment(nh=17, offset=3) /
                  (b"x" * 16))
    by_port = {"rules": [{"action": "allow", "proto": "udp", "dport": 53}], "default": "deny"}
    assert verdicts(pool, build_stock, by_port, [frag4, first4, frag6]) == ["drop", "out", "drop"]
    by_addr = {"rules": [{"action": "allow", "proto": "udp", "src": "10.0.0.0/8"},
                         {"action": "allow", "proto": "udp", "src": "2001:db8::/32"}],
               "default": "deny"}
    assert verdicts(pool, build_stock, by_addr, [frag4, first4, frag6]) == ["out", "out", "out"]
    # a port rule is skipped, the next rule without ports decides
    skip = {"rules": [{"action": "deny", "proto": "udp", "dport": "0-100"},
                      {"action": "allow", "proto": "udp"}], "default": "deny"}
    assert verdicts(pool, build_stock, skip, [frag4, first4, frag6]) == ["out", "drop", "out"]


def test_malformed_frames_are_dropped_and_counted(pool, build_stock):
    good = tcp()
    bad = [b"\x00" * 10,                                   # shorter than Ethernet
           good[:14 + 10],                                 # IP header cut
           good[:14 + 20 + 10],                            # TCP header cut
           good[:14] + bytes([0x43]) + good[15:],          # IHL 3
           good[:14] + bytes([0x55]) + good[15:],          # version 5
           bytes(eth() / IP(len=500) / TCP()),           # IP length beyond the frame
           bytes(eth() / IPv6(plen=300) / UDP())]        # IPv6 payload beyond the frame
    cfg = {"rules": [{"action": "allow"}], "default": "allow"}   # malformed beats any allow
    with FW(pool, build_stock, cfg) as f:
        assert f.run(bad + [good]) == ["drop"] * len(bad) + ["out"]
        c = f.counters
    assert c["malformed"] == len(bad)
    assert c["denied"] == 0 and c["allowed"] == 1


def test_many_rules_and_full_batches(pool, build_stock):
    """256 rules (the maximum), one per 10.0.x.0/24, alternating allow/deny; 600 packets."""
    rules = [{"action": "allow" if x % 2 else "deny", "dst": f"10.0.{x}.0/24", "proto": "tcp"}
             for x in range(256)]
    rng = random.Random(3)
    xs = [rng.randrange(260) for _ in range(600)]
    frames = [tcp(src=f"10.1.{x % 256}.1", dst=f"10.0.{x % 256}.9" if x < 256 else "10.2.0.1",
                  sport=1000 + i) for i, x in enumerate(xs)]
    with FW(pool, build_stock, {"rules": rules, "default": "allow"}) as f:
        got = f.run(frames)
        c = f.counters
    assert got == ["out" if x >= 256 or x % 2 else "drop" for x in xs]
    assert c["allowed"] + c["denied"] == len(frames)
    assert c["denied"] == got.count("drop")


# ---- the verdict cache (needs state tables) ----------------------------------------------


def test_second_packet_of_a_flow_hits_the_cache(pool, build_stock):
    net = fresh_net()
    cfg = {"rules": [{"action": "deny", "src": f"{net}0/25"}], "default": "allow"}
    allowed_flow, denied_flow = tcp(src=f"{net}200"), tcp(src=f"{net}5")
    with FW(pool, build_stock, cfg) as f:
        assert f.run([allowed_flow, denied_flow]) == ["out", "drop"]
        assert f.counters["cache_hits"] == 0
        assert f.run([allowed_flow, denied_flow]) == ["out", "drop"]   # the cached verdicts
        assert f.counters["cache_hits"] == 2
        assert f.run([tcp(src=f"{net}200", sport=4321)]) == ["out"]    # another flow: a miss
        c = f.counters
    assert c["cache_hits"] == 2
    assert (c["allowed"], c["denied"]) == (3, 2)


def test_the_cache_survives_stop_and_start(pool, build_stock):
    net = fresh_net()
    cfg = {"rules": [{"action": "deny", "src": f"{net}0/24", "proto": "udp"}], "default": "allow"}
    flows = [udp(src=f"{net}1"), tcp(src=f"{net}1")]
    with FW(pool, build_stock, cfg) as f:
        assert f.run(flows) == ["drop", "out"]
        assert f.counters["cache_hits"] == 0
    with FW(pool, build_stock, cfg) as f:   # a new instance: its first packets hit
        assert f.run(flows) == ["drop", "out"]
        assert f.counters["cache_hits"] == 2


def test_a_reconfigured_firewall_ignores_old_verdicts(pool, build_stock):
    net = fresh_net()
    flow = tcp(src=f"{net}1")
    allow = {"rules": [{"action": "allow", "src": f"{net}0/24"}], "default": "deny"}
    deny = {"rules": [{"action": "deny", "src": f"{net}0/24"}], "default": "deny"}
    with FW(pool, build_stock, allow) as f:
        assert f.run([flow]) == ["out"]
        assert f.run([flow]) == ["out"]
        assert f.counters["cache_hits"] == 1
    with FW(pool, build_stock, deny) as f:
        assert f.run([flow]) == ["drop"]
        assert f.run([flow]) == ["drop"]
        assert f.counters["cache_hits"] == 1


def test_a_full_cache_only_stops_caching(pool, build_stock):
    net = fresh_net()
    cfg = {"rules": [{"action": "deny", "src": f"{net}0/26"}], "default": "allow",
           "cache_capacity": 4}
    flows = [tcp(src=f"{net}{i * 8}") for i in range(12)]   # 8 denied, 4 allowed
    expect = ["drop"] * 8 + ["out"] * 4
    with FW(pool, build_stock, cfg, name="fw_small") as f:
        for _ in range(3):
            assert f.run(flows) == expect
        c = f.counters
    assert c["cache_hits"] == 2 * 4              # only 4 flows ever fit
    assert (c["allowed"], c["denied"]) == (12, 24)


def test_a_table_of_another_capacity_means_no_cache_but_still_verdicts(pool, build_stock):
    net = fresh_net()
    rules = [{"action": "deny", "src": f"{net}0/25"}]
    flows = [tcp(src=f"{net}1"), tcp(src=f"{net}201")]
    with FW(pool, build_stock, {"rules": rules, "cache_capacity": 64}, name="fw_cap") as f:
        assert f.run(flows) == ["drop", "out"]
    # the table "verdicts" of fw_cap exists with capacity 64: this instance runs uncached
    with FW(pool, build_stock, {"rules": rules, "cache_capacity": 128}, name="fw_cap") as f:
        assert f.run(flows) == ["drop", "out"]
        assert f.run(flows) == ["drop", "out"]
        assert f.counters["cache_hits"] == 0
    with FW(pool, build_stock, {"rules": rules, "cache_capacity": 64}, name="fw_cap") as f:
        assert f.run(flows) == ["drop", "out"]
        assert f.counters["cache_hits"] == 2


def test_cache_capacity_0_disables_the_cache(pool, build_stock):
    net = fresh_net()
    flow = tcp(src=f"{net}1")
    with FW(pool, build_stock, {"cache_capacity": 0}, name="fw_nocache") as f:
        assert f.run([flow]) == ["out"]
        assert f.run([flow]) == ["out"]
        assert f.counters["cache_hits"] == 0


# ---- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("cfg,field,message", [
    ({"rules": [{"action": "allow"}, {"action": "allow"}, {"action": "deny", "dport": "90-80"}]},
     "rules[2].dport", "range 90-80 is empty"),
    ({"rules": [{"action": "drop"}]}, "rules[0].action", "'drop' is not one of"),
    ({"rules": [{"src": "10.0.0.0/8"}]}, "rules[0].action", "missing"),
    ({"rules": [{"action": "allow", "src": "10.0.0.1/8"}]}, "rules[0].src", "host bits set"),
    ({"rules": [{"action": "allow", "dst": "10.0.0.0/33"}]}, "rules[0].dst", "not a valid CIDR"),
    ({"rules": [{"action": "allow", "src": "10.0.0.0/8", "dst": "2001:db8::/32"}]},
     "rules[0].dst", "one family"),
    ({"rules": [{"action": "allow", "proto": "sctp"}]}, "rules[0].proto", "not one of"),
    ({"rules": [{"action": "allow", "proto": "icmp", "dport": 80}]}, "rules[0].dport",
     "icmp has no ports"),
    ({"rules": [{"action": "allow", "sport": 65536}]}, "rules[0].sport", "outside 0-65535"),
    ({"rules": [{"action": "allow", "sport": "http"}]}, "rules[0].sport", "not a port number"),
    ({"rules": [{"action": "allow", "sport": [1, 2, 3]}]}, "rules[0].sport", "[lo, hi]"),
    ({"rules": [{"action": "allow", "sport": True}]}, "rules[0].sport", "not a port number"),
    ({"rules": [{"action": "allow", "port": 80}]}, "rules[0].port", "unknown field"),
    ({"rules": ["allow all"]}, "rules[0]", "a rule is a dict"),
    ({"rules": {"action": "allow"}}, "rules", "a list"),
    ({"rules": [{"action": "allow"}] * 257}, "rules", "at most 256"),
    ({"default": "reject"}, "default", "not one of"),
    ({"cache_capacity": -1}, "cache_capacity", "0-16777216"),
    ({"cache_capacity": "big"}, "cache_capacity", "not an integer"),
    ({"rule": []}, "rule", "unknown field"),
    ({"rules": [{"action": "allow", "src": "2001:db8::1/128", "dst": "2001:db8::2/128"}] * 200},
     "rules", "more than an SFC carries"),
])
def test_encode_config_errors_name_the_field(cfg, field, message):
    with pytest.raises(ConfigError) as e:
        encode_config(cfg)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_encode_config_validates_everything_before_packing():
    # an error in the last rule is found although earlier rules are fine
    rules = [{"action": "allow", "dst": f"10.0.{i}.0/24"} for i in range(10)]
    with pytest.raises(ConfigError, match=r"^rules\[10\]\.src"):
        encode_config({"rules": rules + [{"action": "allow", "src": "x"}]})


def test_encode_config_layout():
    out = encode_config({"rules": [{"action": "allow", "src": "10.0.0.0/12", "dst": "any",
                                    "proto": "tcp", "sport": "1000-2000", "dport": [80, 81]}],
                         "default": "deny", "cache_capacity": 1000})
    assert out[:12] == struct.pack("<IBBHI", fw.MAGIC, 0, 0, 1, 1000)
    assert out[12:] == struct.pack("<BBBBBHHHH", 1, 4, 6, 12, 0, 1000, 2000, 80, 81) + \
        bytes([10, 0])
    assert encode_config({}) == struct.pack("<IBBHI", fw.MAGIC, 1, 0, 0, 65536)


def _packed_rule(action=1, family=4, proto=0, slen=8, dlen=0, ports=(0, 65535, 0, 65535),
                 addr=b"\x0a"):
    return struct.pack("<BBBBBHHHH", action, family, proto, slen, dlen, *ports) + addr


def _packed(rules, default=1, n=None, cap=0, magic=fw.MAGIC):
    return struct.pack("<IBBHI", magic, default, 0, len(rules) if n is None else n, cap) + \
        b"".join(rules)


GARBAGE = {
    "empty": b"",
    "short header": _packed([])[:11],
    "bad magic": _packed([], magic=0x12345678),
    "default 2": _packed([], default=2),
    "rule count beyond the bytes": _packed([_packed_rule()], n=2),
    "trailing byte": _packed([_packed_rule()]) + b"\x00",
    "rule cut": _packed([_packed_rule()])[:-1],
    "too many rules": _packed([_packed_rule()] * 257),
    "family 5": _packed([_packed_rule(family=5)]),
    "family any with a prefix": _packed([_packed_rule(family=0)]),
    "ipv4 prefix 33": _packed([_packed_rule(slen=33, addr=b"\x0a" * 5)]),
    "host bits": _packed([_packed_rule(slen=7, addr=b"\x0b")]),
    "action 3": _packed([_packed_rule(action=3)]),
    "proto 47": _packed([_packed_rule(proto=47)]),
    "empty port range": _packed([_packed_rule(ports=(9, 8, 0, 65535))]),
    "icmp with ports": _packed([_packed_rule(proto=1, ports=(0, 65535, 80, 80))]),
    "capacity too big": _packed([], cap=(1 << 24) + 1),
}


def test_init_refuses_garbage_and_the_process_survives(pool, build_stock):
    idle = pool.idle_count()
    for what, config in GARBAGE.items():
        h = PacketHarness(pool, compile_sfc(NF(build_stock("fw"), config=config, name="fw")))
        try:
            with pytest.raises(PoolError, match=r"init\(\) returned -22"):
                h.start()
        finally:
            h.close()
        assert pool.idle_count() == idle, what
    # the hand-packed good config is accepted (so the cases above fail for their one defect)
    good = _packed([_packed_rule(action=0)], default=1, cap=0)
    with PacketHarness(pool, compile_sfc(NF(build_stock("fw"), config=good))) as h:
        assert [r.verdict for r in h.run([tcp(src="10.1.1.1"), tcp(src="11.1.1.1")])] == \
            ["drop", "out"]


def test_init_never_crashes_on_random_configs(pool, build_stock):
    rng = random.Random(11)
    base = encode_config({"rules": [{"action": "allow", "src": "10.0.0.0/8", "dport": "1-9"},
                                    {"action": "deny", "dst": "2001:db8::/32", "proto": "udp"}],
                          "cache_capacity": 0})
    refused = 0
    for _ in range(40):
        cfg = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            cfg[rng.randrange(len(cfg))] = rng.randrange(256)
        cfg[8:12] = bytes(4)  # capacity 0: no table of odd size left for later tests
        cfg = bytes(cfg[:rng.randint(0, len(cfg))]) if rng.random() < 0.3 else bytes(cfg)
        h = PacketHarness(pool, compile_sfc(NF(build_stock("fw"), config=cfg)))
        try:
            h.start()
            assert len(h.run([tcp(), udp6(), arp()])) == 3
        except PoolError as e:
            assert "returned -22" in str(e)
            refused += 1
        finally:
            h.close()
    assert refused > 0
