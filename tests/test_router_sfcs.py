"""Several SFCs behind one router: classification by SFC tag, match table and default SFC,
per-port and per-SFC counters, chained SFCs (local proxy), and the latency log."""
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from serpens.agent.instance_manager import InstanceManager
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.packets import eth, trace, udp
from support.sites import Wire, unique_tag

pytestmark = pytest.mark.dataplane


def mark(build, nf_id):
    return compile_sfc(NF(build("mark.c", copy=10 + nf_id), config=bytes([nf_id, 0]),
                          name=f"mark{nf_id}"))


@pytest.fixture
def wires(dataplane, request):
    tag = unique_tag()
    ws = [Wire(dataplane, f"c{tag}_{i}") for i in range(3)]
    yield ws
    for w in ws:
        w.close()


@pytest.fixture
def running(pool):
    """running(router, [(sfc_id, compiled)]) starts the router and an instance manager per SFC."""
    started = []

    def _run(router, sfcs):
        router.launch(1)
        managers = [InstanceManager(pool, router, sfc, sfc_id=sid).start() for sid, sfc in sfcs]
        started.append((router, managers))
        return managers

    yield _run
    for router, managers in started:
        for m in managers:
            m.close()
        router.stop()


def test_tag_then_rules_then_default_pick_the_sfc(build, wires, running):
    src, out_a, out_b = wires
    router = dp.Router(src.port)
    a, b = router.add_sfc(out_a.port), router.add_sfc(out_b.port)
    router.set_tag(100, a)
    router.set_rules([{"sfc": a, "proto": 17, "dport": (53, 53)},
                      {"sfc": b, "src": "10.1.0.0/16"},
                      {"sfc": a, "dport": (80, 80)}])
    router.set_default_sfc(b)
    running(router, [(a, mark(build, 1)), (b, mark(build, 2))])

    to_a = [udp(dport=53), udp(dport=53, src="10.1.2.3"),  # rule 1 (first match wins)
            udp(dport=443, vlan=100),                        # the tag
            udp(dport=80)]                                   # rule 3
    to_b = [udp(dport=80, src="10.1.2.3"),                   # rule 2
            udp(dport=443),                                  # the default
            bytes(eth() / IP(dst="10.9.9.9") / TCP(dport=53) / bytes(32))]  # default
    src.send(to_a + to_b)
    assert [trace(d) for d in out_a.receive(4)] == [[1]] * 4
    assert [trace(d) for d in out_b.receive(2)] == [[2]] * 2
    stats = router.stats()  # mark drops the TCP frame (no UDP payload): counted per SFC
    assert stats["sfcs"][a]["rx"] == 4 and stats["sfcs"][b]["rx"] == 3
    assert stats["sfcs"][b]["dropped"] == 1 and stats["dropped"] == 1
    assert stats["ports"][src.port]["rx"] == 7
    assert stats["ports"][out_a.port]["tx"] == 4 and stats["ports"][out_b.port]["tx"] == 2


def test_packets_no_sfc_takes_are_counted_per_port(build, wires, running):
    src, out_a, _ = wires
    router = dp.Router(src.port)
    a = router.add_sfc(out_a.port)
    router.set_rules([{"sfc": a, "dport": (53, 53)}])
    running(router, [(a, mark(build, 1))])
    src.send([udp(dport=80), b"\x00" * 20, udp(dport=53)])  # a runt frame too
    assert [trace(d) for d in out_a.receive(1)] == [[1]]
    deadline = time.monotonic() + 5
    while router.stats()["ports"][src.port]["unmatched"] < 2:
        assert time.monotonic() < deadline, router.stats()
        time.sleep(0.001)


def test_bad_router_configuration_is_refused(wires):
    src, out_a, _ = wires
    router = dp.Router(src.port)
    a = router.add_sfc(out_a.port)
    with pytest.raises(ValueError, match="SFC 5 does not exist"):
        router.set_rules([{"sfc": 5}])
    with pytest.raises(ValueError, match="VLAN ID"):
        router.set_tag(4095, a)
    with pytest.raises(ValueError, match="exactly one"):
        router.add_sfc()
    with pytest.raises(ValueError, match="next SFC 9"):
        router.add_sfc(next_sfc=9)


def test_chained_sfcs_pass_the_router_between_hops_in_order(build, wires, running):
    src, out, _ = wires
    router = dp.Router(src.port)
    last = router.add_sfc(out.port)
    first = router.add_sfc(next_sfc=last)
    router.set_default_sfc(first)
    running(router, [(first, mark(build, 1)), (last, mark(build, 2))])
    frames = [udp(sport=1000 + i % 8, seq=i) for i in range(400)]
    for i in range(0, 400, 100):
        src.send(frames[i:i + 100])
    got = out.receive(400)
    assert all(trace(d) == [1, 2] for d in got)
    newest = {}
    for d in got:  # in order within each flow
        udp_ = Ether(d)[UDP]
        seq = struct.unpack("<I", bytes(udp_.payload)[16:20])[0]
        assert seq > newest.get(udp_.sport, -1)
        newest[udp_.sport] = seq
    assert len(newest) == 8
    stats = router.stats()
    assert stats["sfcs"][first]["out"] == 400 and stats["sfcs"][last]["rx"] == 400


def test_latency_log_records_each_packet_sent_in_flow_order(build, wires, running):
    src, out, _ = wires
    router = dp.Router(src.port, out.port)
    running(router, [(0, mark(build, 1))])
    router.log_start(1000)
    src.send([udp(sport=2000 + i % 4) for i in range(200)])
    out.receive(200)
    recs = list(struct.iter_unpack(dp.LAT_REC_FORMAT, router.log_take()))
    assert len(recs) == 200
    hz = dp.tsc_hz()
    assert all(0 < (tx - rx) / hz < 1.0 for rx, tx, _, _ in recs)
    last = {}
    for _, _, flow, seq in recs:
        assert seq > last.get(flow, 0)
        last[flow] = seq
    assert len(last) == 4


def test_latency_log_takes_the_arrival_stamped_upstream_in_the_frame(build, wires, running):
    """log_start(stamp_off=): a record's arrival is the u64 a source upstream wrote in the
    frame (bench multinode's servers: stamped by the gateway's traffic driver), not the
    router's own RX time; a frame too short for the stamp keeps the router's."""
    src, out, _ = wires
    router = dp.Router(src.port, out.port)
    running(router, [(0, mark(build, 1))])
    off = 42 + 20  # bytes 20..27 of mark's 32-byte UDP payload: mark leaves them alone
    stamps = [0x1234_5678_0000 + 7 * i for i in range(50)]
    frames = [bytearray(udp(sport=3000 + i % 4, seq=i)) for i in range(50)]
    for f, stamp in zip(frames, stamps):
        f[off:off + 8] = struct.pack("<Q", stamp)
    router.log_start(1000, stamp_off=off)
    src.send([bytes(f) for f in frames])
    out.receive(50)
    recs = list(struct.iter_unpack(dp.LAT_REC_FORMAT, router.log_take()))
    assert sorted(rx for rx, _, _, _ in recs) == stamps
    router.log_start(10, stamp_off=4096)  # beyond every frame: the router's own arrival
    src.send([bytes(frames[0])])
    out.receive(1)
    [(rx, tx, _, _)] = struct.iter_unpack(dp.LAT_REC_FORMAT, router.log_take())
    assert 0 < (tx - rx) / dp.tsc_hz() < 1.0


def test_an_sfc_added_in_a_freed_place_starts_with_no_drops_and_not_failed(wires, running):
    src, out_a, _ = wires
    router = dp.Router(src.port)
    a = router.add_sfc(out_a.port)
    router.set_default_sfc(a)
    router.set_drop_all(a, True)  # failed: its packets are dropped at once
    running(router, [])
    src.send([udp(dport=80)] * 5)
    deadline = time.monotonic() + 5
    while router.stats()["sfcs"][a]["drops"]["sfc_failed"] < 5:
        assert time.monotonic() < deadline, router.stats()
        time.sleep(0.001)
    router.remove_sfc(a)
    b = router.add_sfc(out_a.port)
    assert b == a  # the freed place
    assert set(router.stats()["sfcs"][b]["drops"].values()) == {0}
    router.set_default_sfc(b)
    src.send([udp(dport=80)])
    while router.stats()["sfcs"][b]["rx"] < 1:
        assert time.monotonic() < deadline, router.stats()
        time.sleep(0.001)
    assert router.stats()["sfcs"][b]["drops"]["sfc_failed"] == 0  # held, not failed
