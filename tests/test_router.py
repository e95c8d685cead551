"""The router: flow affinity over several instances, scale-in by draining, idle back-off."""
import os
import signal
import struct
import threading
import time

import pytest

from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.packets import flow_decode, flow_frame
from support.sites import Site, unique_tag

pytestmark = pytest.mark.dataplane


@pytest.fixture
def node(dataplane, pool, build, request):
    # These tests check affinity and order: a loaded host that keeps a starting instance off
    # its CPU for over the default 2 ms (or 200 ms) must not make the router shed (or
    # expire) the held packets (each has its own tests: test_faults.py)
    n = Site(dataplane, pool, compile_sfc(NF(build("tag.c"))),
             f"r{unique_tag()}", stall_us=1e6, hold_ms=10000)
    yield n
    n.close()


def test_flows_stay_on_one_instance_and_both_are_used(node):
    node.manager.scale(2)
    ids = node.instance_ids()
    frames = [flow_frame(f, s) for s in range(20) for f in range(64)]
    node.send(frames)
    out = [flow_decode(d) for d in node.receive(len(frames))]
    owner, last = {}, {}
    for flow, inst, seq in out:
        assert owner.setdefault(flow, inst) == inst, f"flow {flow} on two instances"
        assert seq > last.get(flow, -1), f"flow {flow} reordered"
        last[flow] = seq
    assert set(owner.values()) == set(ids.values())
    assert node.router.stats()["new_flows"] == 64


def test_new_flows_of_one_burst_spread_over_the_instances(node):
    """64 new flows arriving in one RX burst (one ring enqueue, the router's burst is 64):
    each new pin counts the packets already given to an instance in that burst, so the
    flows alternate between the two idle instances instead of all going to the first."""
    node.manager.scale(2)
    ids = node.instance_ids()
    node.send([flow_frame(f, 0) for f in range(64)])
    owners = [inst for _, inst, _ in map(flow_decode, node.receive(64))]
    per = {inst: owners.count(inst) for inst in ids.values()}
    assert sorted(per.values()) == [32, 32], per


def test_router_flow_hash_is_the_full_parse_hash_for_every_kind_of_frame(node):
    """The router reads common frames (untagged IPv4 UDP/TCP) without the full parser
    (classify.h serpens_parse_common): its flow hash of each frame must be the one the full
    parse gives (dp.flow_hash), for the frames it reads straight and those it leaves to the
    parser (options, fragments, tags, short headers, IPv6, other protocols)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q
    from support.packets import eth

    udp = IP(src="10.1.2.3", dst="10.9.8.7") / UDP(sport=1234, dport=53) / b"payload!"
    kinds = [
        udp,
        IP(src="10.1.2.4", dst="10.9.8.7") / TCP(sport=40000, dport=443) / (b"x" * 8),
        IP(src="10.1.2.5", dst="10.9.8.7") / TCP(sport=40001, dport=443,
                                                 options=[("MSS", 1460)]) / (b"x" * 8),
        IP(src="10.1.2.6", dst="10.9.8.7", options=b"\x01\x01\x01\x00") / UDP(sport=5, dport=6)
        / (b"x" * 8),
        IP(src="10.1.2.7", dst="10.9.8.7", flags="MF") / UDP(sport=7, dport=8) / (b"x" * 8),
        IP(src="10.1.2.8", dst="10.9.8.7", frag=3, proto=17) / (b"x" * 16),
        IP(src="10.1.2.9", dst="10.9.8.7") / ICMP(id=77) / (b"x" * 8),
        IP(src="10.1.2.10", dst="10.9.8.7", proto=47) / (b"x" * 16),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9, dport=10) / (b"x" * 8),
    ]
    frames = [bytes(eth() / k) for k in kinds]
    frames.append(bytes(eth() / Dot1Q(vlan=7) / udp))
    frames.append(bytes(eth() / ARP(psrc="10.0.0.1", pdst="10.0.0.2")))
    raw = bytearray(bytes(eth() / udp))
    raw[14 + 2:14 + 4] = (20 + 4).to_bytes(2, "big")  # an IP length too short for UDP
    frames.append(bytes(raw))
    tcp = bytearray(bytes(eth() / kinds[1]))
    tcp[14 + 20 + 12] = 0x30  # a TCP data offset under 20 bytes
    frames.append(bytes(tcp))
    node.router.log_start(len(frames))
    node.send(frames)
    node.receive(len(frames))
    recs = list(struct.iter_unpack(dp.LAT_REC_FORMAT, node.router.log_take()))
    got = {seq: flow for _, _, flow, seq in recs}
    first = min(got)
    assert [got[first + k] for k in range(len(frames))] == [dp.flow_hash(f) for f in frames]


def test_stage_stamps_account_the_loop(node):
    """stamp_stages: cycles land in the stages the packets went through (none while off)."""
    node.router.stamp_stages(False)
    node.send([flow_frame(f, 0) for f in range(64)])
    node.receive(64)
    assert set(node.router.stage_cycles().values()) == {0}
    node.router.stamp_stages(True)
    node.send([flow_frame(f, s) for s in range(1, 11) for f in range(64)])
    node.receive(640)
    node.router.stamp_stages(False)
    cycles = node.router.stage_cycles()
    for stage in ("rx", "classify", "dispatch", "enqueue", "dequeue", "verdict", "tx"):
        assert cycles[stage] > 0, (stage, cycles)


def test_scale_in_moves_flows_without_loss_or_reordering(node):
    node.manager.scale(2)
    ids = node.instance_ids()
    node.send([flow_frame(f, 0) for f in range(64)])
    first = {flow: inst for flow, inst, _ in map(flow_decode, node.receive(64))}
    assert ids[1] in first.values()
    sender = threading.Thread(target=node.send, args=([flow_frame(f, s) for s in range(1, 30)
                                                       for f in range(64)],))
    sender.start()
    node.manager.scale(1)  # retires instance 1 while traffic flows
    sender.join()
    node.send([flow_frame(f, s) for s in range(30, 40) for f in range(64)])  # after the drain
    out = [flow_decode(d) for d in node.receive(64 * 39)]
    last = {}
    for flow, inst, seq in out:
        assert seq == last.get(flow, 0) + 1, f"flow {flow}: lost or reordered at {seq}"
        last[flow] = seq
    # After the drain, every flow of the retired instance is on the survivor.
    tail = {flow: inst for flow, inst, seq in out if seq == 39}
    assert set(tail.values()) == {ids[0]}
    assert node.router.stats()["moved_flows"] > 0


def test_router_wakes_a_sleeping_instance_once_per_sleep(node):
    node.manager.scale(1)
    (index, s), = node.manager.instances.items()
    proc = s.proc
    node.send([flow_frame(0, 0)])
    node.receive(1)
    deadline = time.monotonic() + 5
    while not proc.ctl.sleeping:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)  # it stays in this one sleep while packets wait
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.001)
    try:
        before = node.router.stats()["instances"][index]
        for seq in range(1, 9):
            node.send([flow_frame(f, seq) for f in range(32)])
            time.sleep(0.005)  # past the router's wake timer: it calls wake() for each
        after = node.router.stats()["instances"][index]
        assert after["enqueued"] - before["enqueued"] == 8 * 32
        with open(f"/proc/self/fdinfo/{proc.efd}") as f:
            writes = next(int(x.split()[1], 16) for x in f if x.startswith("eventfd-count:"))
        assert writes == 1
        assert after["wakeups"] - before["wakeups"] == 1
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert len(node.receive(8 * 32)) == 8 * 32  # and that one write woke it


def _thread_cpu_ns(comm):
    """CPU time of this process's thread named `comm` (schedstat: ns on a CPU, exact)."""
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as name:
            if name.read().strip() == comm:
                with open(f"/proc/self/task/{tid}/schedstat") as stat:
                    return int(stat.read().split()[0])
    raise LookupError(f"no thread named {comm!r}")


def test_idle_router_uses_almost_no_cpu(node, dataplane):
    # The router's own thread (EAL names it after its lcore), not the whole test process:
    # the instance manager's and the pool's Python threads share this process.
    node.manager.scale(1)
    time.sleep(0.3)  # let it reach its longest sleep
    router_thread = f"rte-worker-{dataplane.config.router_lcore}"
    t0, c0 = time.monotonic(), _thread_cpu_ns(router_thread)
    time.sleep(1.0)
    cpu = (_thread_cpu_ns(router_thread) - c0) / 1e9 / (time.monotonic() - t0)
    assert cpu < 0.02, f"idle router used {cpu:.1%} of a core"


def test_scale_out_moves_a_share_of_flows_in_order(node):
    node.manager.scale(1)
    node.send([flow_frame(f, 0) for f in range(64)])
    path = {flow: [inst] for flow, inst, _ in map(flow_decode, node.receive(64))}
    sender = threading.Thread(target=node.send, args=([flow_frame(f, s) for s in range(1, 30)
                                                       for f in range(64)],))
    sender.start()
    node.manager.scale(2)  # the new instance takes a share of the running flows
    sender.join()
    node.send([flow_frame(f, s) for s in range(30, 40) for f in range(64)])
    out = [flow_decode(d) for d in node.receive(64 * 39)]
    ids = node.instance_ids()
    last = {}
    for flow, inst, seq in out:
        assert seq == last.get(flow, 0) + 1, f"flow {flow}: lost or reordered at {seq}"
        last[flow] = seq
        if path[flow][-1] != inst:
            path[flow].append(inst)
    assert all(len(p) <= 2 for p in path.values()), "a flow went back and forth"
    moved = [f for f, p in path.items() if len(p) == 2]
    assert moved and all(path[f] == [ids[0], ids[1]] for f in moved)
    assert node.router.stats()["sfcs"][0]["rebalanced_flows"] == len(moved)
