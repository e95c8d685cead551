"""The stock monitor NF (nfs/mon): packets in, the same packets out, counters read from the
state tables through the state manager.

MON's tables belong to its NF name and outlive instances for the whole test session: every
test uses its own name (fresh_name()) so it starts from empty tables.
"""
import itertools
import random
import struct
import time
from collections import Counter, defaultdict

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from serpens.agent.process_pool import PoolError
from serpens.agent.state_manager import StateManager
from serpens.nfs import mon
from serpens.nfs.mon import ConfigError, encode_config, read_flows, read_hosts
from serpens.runtime_cy.sfc import NF

from support.harness import NFHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

_names = itertools.count(1)


def fresh_name(what="mon") -> str:
    return f"{what}-{next(_names)}"


# ---- packets and what MON should count for them --------------------------------------------


def tcp(src="10.0.0.1", dst="10.9.9.9", sport=1234, dport=80, payload=b"data"):
    return bytes(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport) / payload)


def udp(src="10.0.0.1", dst="10.9.9.9", sport=1234, dport=53, payload=b"q"):
    return bytes(eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def icmp(src="10.0.0.1", dst="10.9.9.9", id=7, payload=b""):
    return bytes(eth() / IP(src=src, dst=dst) / ICMP(id=id) / payload)


def tcp6(src="2001:db8::1", dst="2001:db8:ffff::9", sport=1234, dport=80, payload=b""):
    return bytes(eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport) / payload)


def udp6(src="2001:db8::1", dst="2001:db8:ffff::9", sport=1234, dport=53, payload=b""):
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def icmp6(src="2001:db8::1", dst="2001:db8::2", id=7, payload=b""):
    return bytes(eth() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=id, data=payload))


def flow_of(frame: bytes):
    """The key read_flows() should report for a frame (independent of the C parser)."""
    p = Ether(frame)
    ip = p[IP] if IP in p else p[IPv6]
    if TCP in p or UDP in p:
        l4 = p[TCP] if TCP in p else p[UDP]
        return (ip.src, ip.dst, 6 if TCP in p else 17, l4.sport, l4.dport)
    if ICMP in p:
        return (ip.src, ip.dst, 1, p[ICMP].id, 0)
    return (ip.src, ip.dst, 58, p[ICMPv6EchoRequest].id, 0)


def src_of(frame: bytes) -> str:
    p = Ether(frame)
    return (p[IP] if IP in p else p[IPv6]).src


def totals(frames, key) -> dict:
    out = defaultdict(lambda: [0, 0])
    for f in frames:
        c = out[key(f)]
        c[0] += 1
        c[1] += len(f)
    return {k: tuple(v) for k, v in out.items()}


def mixed_traffic(seed: int, hosts4, hosts6, sport_base=1000):
    """A shuffled mix of TCP/UDP/ICMP IPv4 and IPv6 flows with different packet counts and
    sizes; repeated flows land in the same batches (the harness pushes up to 256 at once)."""
    rng = random.Random(seed)
    frames = []
    for n, src in enumerate(hosts4):
        for k in range(3):
            sport = sport_base + 10 * n + k
            frames += [tcp(src=src, sport=sport, payload=bytes(rng.randrange(0, 900)))
                       for _ in range(rng.randrange(1, 40))]
            frames += [udp(src=src, sport=sport, dport=5000 + k, payload=bytes(rng.randrange(1, 500)))
                       for _ in range(rng.randrange(1, 40))]
        frames += [icmp(src=src, id=sport_base + n, payload=bytes(rng.randrange(0, 64)))
                   for _ in range(rng.randrange(1, 10))]
    for n, src in enumerate(hosts6):
        for k in range(3):
            sport = sport_base + 10 * n + k
            frames += [tcp6(src=src, sport=sport, payload=bytes(rng.randrange(0, 900)))
                       for _ in range(rng.randrange(1, 40))]
            frames += [udp6(src=src, sport=sport, payload=bytes(rng.randrange(1, 500)))
                       for _ in range(rng.randrange(1, 40))]
        frames += [icmp6(src=src, id=sport_base + n, payload=bytes(rng.randrange(0, 64)))
                   for _ in range(rng.randrange(1, 10))]
    rng.shuffle(frames)
    return frames


# ---- one MON instance in a harness -----------------------------------------------------------


class MON(NFHarness):
    def __init__(self, pool, build_stock, name, cfg=None, copy=0, config=None):
        config = encode_config(cfg or {}) if config is None else config
        super().__init__(pool, NF(build_stock("mon", copy), config=config, name=name))

    def run(self, frames):
        """Push frames; MON must forward every one of them unchanged."""
        results = super().run(frames)
        assert [r.verdict for r in results] == ["out"] * len(frames)
        assert [r.data for r in results] == [bytes(f) for f in frames]
        return results


@pytest.fixture
def sm(dataplane):
    return StateManager(dataplane.config.state_dir)


# ---- per-flow counters ------------------------------------------------------------------------


def test_flow_counters_are_exact(pool, build_stock, sm):
    name = fresh_name()
    frames = mixed_traffic(1, ["10.1.0.1", "10.1.0.2", "192.0.2.77"],
                           ["2001:db8::1", "2001:db8:1::42"])
    with MON(pool, build_stock, name) as m:
        m.run(frames)
        c = m.counters
        flows = read_flows(sm, name)  # per-flow entries are written in place: visible now
    expect = totals(frames, flow_of)
    assert flows == expect
    assert {k[2] for k in flows} == {1, 6, 17, 58}
    assert c["packets"] == len(frames) and c["bytes"] == sum(map(len, frames))
    assert c["new_flows"] == len(expect)
    assert c.get("malformed", 0) == c.get("non_ip", 0) == c.get("flows_full", 0) == 0


def test_a_new_flow_repeated_within_one_batch_counts_every_packet(pool, build_stock, sm):
    name = fresh_name()
    frames = [udp(src="10.2.0.1", sport=4242, payload=b"x" * 10)] * 32 + \
             [tcp6(src="2001:db8::5", sport=4242)] * 5 + [udp(src="10.2.0.1", sport=4242)] * 3
    with MON(pool, build_stock, name) as m:
        m.run(frames)
        assert m.counters["new_flows"] == 2
    assert read_flows(sm, name) == totals(frames, flow_of)


# ---- per-host counters ------------------------------------------------------------------------


def test_host_counters_are_exact_after_the_instance_stops(pool, build_stock, sm):
    name = fresh_name()
    frames = mixed_traffic(2, ["10.3.0.1", "10.3.0.2"], ["2001:db8:3::1", "fe80::1"])
    with MON(pool, build_stock, name) as m:
        m.run(frames[:500])
        m.run(frames[500:])
    # the runtime merged the instance's replica into the shared table when it stopped
    assert read_hosts(sm, name) == totals(frames, src_of)


def test_host_counters_reach_the_shared_table_while_running(pool, build_stock, sm):
    """Readers see merged values within a merge period (or when the instance goes idle)."""
    name = fresh_name()
    frames = [udp(src="10.4.0.1")] * 50 + [icmp6(src="2001:db8:4::1")] * 7
    with MON(pool, build_stock, name, {"merge_period_ms": 20}) as m:
        m.run(frames)
        deadline = time.monotonic() + 3
        while read_hosts(sm, name) != totals(frames, src_of) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_hosts(sm, name) == totals(frames, src_of)


def test_two_instances_totals_are_equal_after_merge(pool, build_stock, sm):
    """Two concurrent instances of one MON (same name: same tables) each count traffic from
    overlapping hosts (their flows differ: the router pins a flow to one instance); once both
    stopped the shared host table holds the sum of both."""
    name = "mon-two"
    shared4, shared6 = ["10.5.0.1", "10.5.0.2"], ["2001:db8:5::1"]
    a_frames = mixed_traffic(3, shared4 + ["10.5.1.1"], shared6, sport_base=1000)
    b_frames = mixed_traffic(4, shared4 + ["10.5.2.1"], shared6 + ["2001:db8:5::2"],
                             sport_base=30000)
    with MON(pool, build_stock, name, copy=1) as a, MON(pool, build_stock, name, copy=2) as b:
        for k in range(0, max(len(a_frames), len(b_frames)), 200):  # interleaved, concurrent
            if a_frames[k:k + 200]:
                a.run(a_frames[k:k + 200])
            if b_frames[k:k + 200]:
                b.run(b_frames[k:k + 200])
    hosts = read_hosts(sm, name)
    assert hosts == totals(a_frames + b_frames, src_of)
    assert hosts["10.5.0.1"][0] > 0 and {"10.5.1.1", "10.5.2.1", "2001:db8:5::2"} <= set(hosts)
    assert read_flows(sm, name) == totals(a_frames + b_frames, flow_of)


# ---- state outlives instances -------------------------------------------------------------------


def test_state_survives_stop_and_restart(pool, build_stock, sm):
    name = fresh_name()
    frames = mixed_traffic(5, ["10.6.0.1"], ["2001:db8:6::1"])
    with MON(pool, build_stock, name) as m:
        m.run(frames)
        assert m.counters["new_flows"] == len(totals(frames, flow_of))
    first_flows, first_hosts = read_flows(sm, name), read_hosts(sm, name)
    assert first_flows == totals(frames, flow_of)
    assert first_hosts == totals(frames, src_of)
    more = [udp(src="10.6.0.9", sport=9)] * 4
    with MON(pool, build_stock, name) as m:  # a new instance continues the same counters
        m.run(frames + more)
        assert m.counters.get("new_flows", 0) == 1
    assert read_flows(sm, name) == totals(frames + frames + more, flow_of)
    assert read_hosts(sm, name) == totals(frames + frames + more, src_of)


# ---- frames that are not counted in tables ---------------------------------------------------


def test_non_ip_malformed_and_fragments_are_counted_and_forwarded(pool, build_stock, sm):
    name = fresh_name()
    good = udp(src="10.7.0.1", sport=77, payload=b"z" * 20)
    non_ip = [bytes(eth(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.7.0.9")),
              bytes(eth(type=0x88CC) / (b"\x02\x07" + b"\x00" * 40)),      # LLDP
              bytes(eth() / Dot1Q(vlan=5) / ARP())]
    ip_v5 = bytearray(good)
    ip_v5[14] = 0x55                                                          # IP version 5
    ihl4 = bytearray(good)
    ihl4[14] = 0x44                                                           # IHL < 5
    long_len = bytearray(good)
    long_len[16:18] = (len(good) - 14 + 100).to_bytes(2, "big")               # past the frame
    malformed = [good[:14 + 10],                                             # cut IP header
                 good[:14 + 20 + 4],                                         # cut UDP header
                 tcp(src="10.7.0.1")[:14 + 20 + 12],                         # cut TCP header
                 bytes(ip_v5), bytes(ihl4), bytes(long_len), good[:10]]      # runt frame
    frag = bytes(eth() / IP(src="10.7.0.2", dst="10.9.9.9", proto=17, frag=100) /
                 (b"f" * 40))                                                # non-first fragment
    frames = non_ip + malformed + [good] * 3 + [frag] * 2
    random.Random(6).shuffle(frames)
    with MON(pool, build_stock, name) as m:
        m.run(frames)
        c = m.counters
    assert c["non_ip"] == len(non_ip)
    assert c["malformed"] == len(malformed)
    assert c["fragments"] == 2
    assert c["packets"] == len(frames)
    # only IP packets are in the tables; fragments count for their host and 3-tuple (ports 0)
    assert read_flows(sm, name) == {flow_of(good): (3, 3 * len(good)),
                                    ("10.7.0.2", "10.9.9.9", 17, 0, 0): (2, 2 * len(frag))}
    assert read_hosts(sm, name) == {"10.7.0.1": (3, 3 * len(good)),
                                    "10.7.0.2": (2, 2 * len(frag))}


def test_full_tables_still_forward_and_count(pool, build_stock, sm):
    """flow_capacity 4, host_capacity 2: flows/hosts beyond are forwarded, counted as full.
    One push of < 256 packets and a long merge period: no merge happens before every packet
    was counted, so the hosts replica is exactly the first two hosts."""
    name = fresh_name()
    srcs = ["10.8.0.1", "10.8.0.2", "10.8.0.3"]
    frames = []
    for r in range(5):  # flows in order of first appearance: (src, sport) for src, sport 1..2
        frames += [udp(src=s, sport=p, payload=bytes(r)) for s in srcs for p in (1, 2)]
    first_flows = [flow_of(f) for f in frames[:4]]
    with MON(pool, build_stock, name, {"flow_capacity": 4, "host_capacity": 2,
                                       "merge_period_ms": 60000}) as m:
        m.run(frames)
        c = m.counters
    assert c["flows_full"] == 5 * 2 and c["new_flows"] == 4
    assert c["hosts_full"] == 5 * 2
    flows = read_flows(sm, name)
    assert set(flows) == set(first_flows)
    assert flows == {k: v for k, v in totals(frames, flow_of).items() if k in first_flows}
    assert read_hosts(sm, name) == {k: v for k, v in totals(frames, src_of).items()
                                    if k in srcs[:2]}


# ---- configuration -------------------------------------------------------------------------


def test_encode_config_defaults_and_layout():
    assert encode_config({}) == encode_config() == struct.pack("<IIII", mon.MAGIC, 65536, 4096, 100)
    assert encode_config({"flow_capacity": 1, "host_capacity": 1 << 24, "merge_period_ms": 60000}) \
        == struct.pack("<IIII", mon.MAGIC, 1, 1 << 24, 60000)


@pytest.mark.parametrize("cfg,field", [
    ({"flow_capacity": 0}, "flow_capacity"),
    ({"flow_capacity": (1 << 24) + 1}, "flow_capacity"),
    ({"flow_capacity": "1000"}, "flow_capacity"),
    ({"flow_capacity": True}, "flow_capacity"),
    ({"host_capacity": -1}, "host_capacity"),
    ({"host_capacity": 2.5}, "host_capacity"),
    ({"merge_period_ms": 0}, "merge_period_ms"),
    ({"merge_period_ms": 60001}, "merge_period_ms"),
    ({"merge_period_ms": None}, "merge_period_ms"),
    ({"merge_periods_ms": 10}, "merge_periods_ms"),
    ([("flow_capacity", 1)], "config"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as e:
        encode_config(cfg)
    assert e.value.field == field and str(e.value).startswith(field + ":")
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("config", [
    b"garbage",
    struct.pack("<IIII", 0x12345678, 16, 16, 100),
    struct.pack("<IIII", mon.MAGIC, 0, 16, 100),
    struct.pack("<IIII", mon.MAGIC, 16, (1 << 24) + 1, 100),
    struct.pack("<IIII", mon.MAGIC, 16, 16, 0),
    struct.pack("<IIII", mon.MAGIC, 16, 16, 60001),
    struct.pack("<IIII", mon.MAGIC, 16, 16, 100) + b"\x00",
], ids=["garbage", "bad-magic", "flow-capacity-0", "host-capacity-too-big", "period-0",
        "period-too-long", "trailing-byte"])
def test_init_refuses_garbage(pool, build_stock, dataplane, config):
    name = fresh_name("mon-bad")
    with pytest.raises(PoolError, match="init"):
        MON(pool, build_stock, name, config=config).start()
    assert not [t for t in StateManager(dataplane.config.state_dir).tables() if t[0] == name]


def test_empty_config_means_defaults(pool, build_stock, sm):
    name = fresh_name()
    with MON(pool, build_stock, name, config=b"") as m:
        m.run([tcp(src="10.9.0.1")])
    assert read_flows(sm, name) == {flow_of(tcp(src="10.9.0.1")): (1, len(tcp()))}
    info = {t: sm.open(name, t).info for t in ("flows", "hosts")}
    assert (info["flows"]["capacity"], info["hosts"]["capacity"]) == (65536, 4096)
    assert (info["flows"]["key_size"], info["flows"]["value_size"]) == (40, 16)
    assert (info["hosts"]["key_size"], info["hosts"]["value_size"]) == (20, 16)
