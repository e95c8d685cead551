"""The gateway's hold and release of moving flows (gateway/gateway.h "Moving flows"): the
moving flows' packets wait (others do not), the source gets a marker behind the last frame of
them it got, and on release they go first, in order, to the target (commit) or back to the
source (abort), before newer packets of those flows; the flow-key slots Python computes are
the gateway's."""
import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from serpens.runtime_cy import _dataplane as dp

from support.packets import flow_frame
from support.sites import GW_IP, GW_MAC, GatewaySite, unique_tag

pytestmark = pytest.mark.dataplane

A, B = "192.168.51.11", "192.168.51.12"
SERVERS = {A: "02:00:00:00:51:11", B: "02:00:00:00:51:12"}
FLOWS = range(300)


@pytest.fixture
def site(dataplane, request):
    s = GatewaySite(dataplane, f"m{unique_tag()}")
    s.gw.set_mempool(dataplane.mempool)
    for ip, mac in SERVERS.items():
        s.gw.set_server(ip, mac)
    s.sfc = s.gw.add_sfc(77)
    s.gw.set_route(s.sfc, {A: 1, B: 1})
    s.gw.set_default_sfc(s.sfc)
    yield s
    s.close()


def sent(site, frames):
    """[(server, flow, seq)] of what `frames` made leave on the underlay (ARP: ("arp", ip, to
    MAC, marker id))."""
    out, wires = [], []
    for i in range(0, max(len(frames), 1), 256):
        site.pump()
        wires += site.through(site.outside, frames[i:i + 256])[0]
    for w in wires:
        p = Ether(w)
        if ARP in p:
            tha = bytes.fromhex(p[ARP].hwdst.replace(":", ""))
            out.append(("arp", p[ARP].pdst, p.dst,
                        int.from_bytes(tha[2:], "big") if tha[:2] == b"SM" else 0))
            continue
        inner = p[VXLAN].payload
        seq = struct.unpack("<II", bytes(inner[UDP].payload)[:8])[1]
        out.append((p[IP].dst, inner[UDP].sport - 1000, seq))
    return out


def flow_key(flow: int) -> bytes:
    """The 40-byte struct serpens_flow a per-flow table keys flow_frame(flow, _) by."""
    src = socket.inet_aton(f"10.0.{flow // 256}.{flow % 256}").ljust(16, b"\0")
    dst = socket.inet_aton("10.9.9.9").ljust(16, b"\0")
    return src + dst + struct.pack("!HH", 1000 + flow, 80) + bytes([17, 4, 0, 0])


def drain(site, move):
    """Poll until the move sent what it held (paced: some polls send nothing)."""
    deadline = time.monotonic() + 5
    while site.gw.move_state(move) != "done":
        assert time.monotonic() < deadline, "the held packets were not all sent in 5 s"
        site.gw.poll()


def release(site, move, commit):
    assert site.gw.release_flows(move, commit) is None   # not running: poll() completes it
    drain(site, move)
    return site.gw.finish_move(move)


def test_moving_flows_wait_and_leave_first_in_order_for_the_target(site):
    first = sent(site, [flow_frame(f, 0) for f in FLOWS])
    on = {f: server for server, f, _ in first}
    on_a = [f for f in FLOWS if on[f] == A]
    assert 50 < len(on_a) < 250
    move = site.gw.hold_flows(site.sfc, A, B)
    site.pump()
    marker = site.gw.move_marker(move)
    assert marker and sent(site, []) == [("arp", A, SERVERS[A], marker)]   # behind all before
    during = sent(site, [flow_frame(f, s) for s in (1, 2) for f in FLOWS])
    assert {f for _, f, _ in during} == set(FLOWS) - set(on_a), "only the moving flows wait"
    assert site.gw.move_counters(move)["held"] == 2 * len(on_a)
    c = release(site, move, commit=True)
    assert c == {"flows": len(on_a), "held": 2 * len(on_a), "held_dropped": 0}
    released = sent(site, [])
    assert released == [(B, f, s) for s in (1, 2) for f in on_a]   # in the order they came
    after = sent(site, [flow_frame(f, 3) for f in FLOWS])
    assert {f for server, f, _ in after if server == A} == set()   # all of A's now on B
    stats = site.gw.stats()["sfcs"][site.sfc]
    assert (stats["held"], stats["held_dropped"], stats["moves"]) == (2 * len(on_a), 0, 1)
    back = site.gw.hold_flows(site.sfc, B, A)   # each move's marker has its own id
    site.pump()
    assert site.gw.move_marker(back) not in (0, marker)
    assert sent(site, []) == [("arp", B, SERVERS[B], site.gw.move_marker(back))]
    release(site, back, commit=False)


def test_held_packets_go_before_newer_ones_of_their_flows(site):
    sent(site, [flow_frame(f, 0) for f in FLOWS])
    move = site.gw.hold_flows(site.sfc, A, B)
    site.pump()
    sent(site, [flow_frame(f, 1) for f in FLOWS])
    site.gw.release_flows(move, True)
    # the (paced) release and newer packets in the same passes: the held go first
    out = sent(site, [flow_frame(f, 2) for f in FLOWS])
    drain(site, move)
    out += sent(site, [])
    seqs = {}
    for server, f, s in out:
        assert s > seqs.get(f, 0), f"flow {f}: {s} after {seqs.get(f)}"
        seqs[f] = s
    assert all(seqs[f] == 2 for f in FLOWS)
    site.gw.finish_move(move)


def test_the_release_is_paced_at_its_factor_of_the_held_rate(site):
    """Held packets leave at release_factor x the rate they arrived at while held, and at
    least RELEASE_MIN_PPS: never in one burst that would overflow the target's queues."""
    on = {f: server for server, f, _ in sent(site, [flow_frame(f, 0) for f in FLOWS])}
    on_a = [f for f in FLOWS if on[f] == A]
    site.gw.release_factor = 1e-9    # the floor decides: RELEASE_MIN_PPS
    move = site.gw.hold_flows(site.sfc, A, B)
    site.pump()
    sent(site, [flow_frame(f, s) for s in range(1, 9) for f in FLOWS])
    held = site.gw.move_counters(move)["held"]
    assert held == 8 * len(on_a) > 600
    start = time.monotonic()
    site.gw.release_flows(move, True)
    drain(site, move)
    took = time.monotonic() - start
    released = []
    while out := sent(site, []):   # at most 512 a time
        released += out
    assert len(released) == held and {r[0] for r in released} == {B}
    # RELEASE_CREDIT at once, then one packet per 1/RELEASE_MIN_PPS
    assert took >= (held - dp.RELEASE_CREDIT) / dp.RELEASE_MIN_PPS * 0.95
    site.gw.finish_move(move)


def test_a_release_holds_the_moved_flows_only_not_the_targets_own(site):
    """While a move of every flow of A releases (paced), B's own flows are not held behind
    it: only the flows it re-pinned (marked) join its ring."""
    on = {f: server for server, f, _ in sent(site, [flow_frame(f, 0) for f in FLOWS])}
    on_a = [f for f in FLOWS if on[f] == A]
    on_b = [f for f in FLOWS if on[f] == B]
    site.gw.release_factor = 1e-9    # the floor: >1000 held packets take >10 ms
    move = site.gw.hold_flows(site.sfc, A, B)
    site.pump()
    sent(site, [flow_frame(f, s) for s in range(1, 9) for f in on_a])
    held = site.gw.move_counters(move)["held"]
    site.gw.release_flows(move, True)
    site.outside.send([flow_frame(f, 9) for f in FLOWS])   # in the release's first poll
    for _ in range(20):   # 32 frames a poll: all 300 read, few of >1000 held sent
        site.gw.poll()
    assert site.gw.move_state(move) == "draining"
    assert site.gw.move_counters(move)["held"] == held + len(on_a)   # A's: behind the rest
    drain(site, move)
    out = []
    while got := sent(site, []):
        out += got
    seqs = {}
    for server, f, s in out:
        assert server == B and s > seqs.get(f, 0), f"flow {f}: {s} after {seqs.get(f)}"
        seqs[f] = s
    assert all(seqs[f] == 9 for f in FLOWS)
    last_b = max(i for i, (_, f, _) in enumerate(out) if f in on_b)
    assert last_b < len(out) - len(on_a), "B's own did not wait for the release"
    site.gw.finish_move(move)
    again = sent(site, [flow_frame(f, 10) for f in FLOWS])   # unmarked: a new move is free
    assert sorted(f for _, f, _ in again) == list(FLOWS)


def test_abort_leaves_the_flows_on_the_source_in_order(site):
    on = {f: server for server, f, _ in sent(site, [flow_frame(f, 0) for f in FLOWS])}
    move = site.gw.hold_flows(site.sfc, A, B)
    site.pump()
    sent(site, [flow_frame(f, 1) for f in FLOWS])
    c = release(site, move, commit=False)
    assert c["flows"] == 0 and c["held"] == sum(1 for s in on.values() if s == A)
    assert sent(site, []) == [(A, f, 1) for f in FLOWS if on[f] == A]
    after = sent(site, [flow_frame(f, 2) for f in FLOWS])
    assert all(server == on[f] for server, f, _ in after)


def test_a_partial_move_holds_exactly_the_flows_whose_keys_hash_into_its_slots(site):
    on = {f: server for server, f, _ in sent(site, [flow_frame(f, 0) for f in FLOWS])}
    slots = list(dp.gateway_flow_slots(site.sfc, b"".join(flow_key(f) for f in FLOWS)))
    assert all(0 <= s < dp.GW_MAGLEV for s in slots)
    on_a = [f for f in FLOWS if on[f] == A]
    chosen = {slots[f] for f in on_a[::2]}
    moving = {f for f in on_a if slots[f] in chosen}
    move = site.gw.hold_flows(site.sfc, A, B, slots=sorted(chosen))
    site.pump()
    during = sent(site, [flow_frame(f, 1) for f in FLOWS])
    assert {r[1] for r in during if r[0] != "arp"} == set(FLOWS) - moving
    c = release(site, move, commit=True)
    assert c["flows"] == len(moving)
    after = {f: server for server, f, _ in sent(site, [flow_frame(f, 2) for f in FLOWS])}
    assert {f for f in FLOWS if after[f] != on[f]} == moving


def test_two_moves_of_one_source_in_other_slots_hold_both_and_release_each_its_way(site):
    """(stop-and-copy's pause in bench migrate: the moving flows and the source's others
    held at once, the first committed, the second released back)"""
    on = {f: server for server, f, _ in sent(site, [flow_frame(f, 0) for f in FLOWS])}
    slots = list(dp.gateway_flow_slots(site.sfc, b"".join(flow_key(f) for f in FLOWS)))
    on_a = [f for f in FLOWS if on[f] == A]
    first = sorted({slots[f] for f in on_a[::2]})
    rest = sorted(set(range(dp.GW_MAGLEV)) - set(first))
    moving = site.gw.hold_flows(site.sfc, A, B, slots=first)
    site.pump()   # (its marker goes out: one marker at a time)
    with pytest.raises(ValueError, match="in these slots is under way"):
        site.gw.hold_flows(site.sfc, A, B, slots=[first[0], rest[0]])
    with pytest.raises(ValueError, match="under way"):
        site.gw.hold_flows(site.sfc, A, B)
    staying = site.gw.hold_flows(site.sfc, A, B, slots=rest)
    site.pump()
    during = sent(site, [flow_frame(f, 1) for f in FLOWS])
    assert {r[1] for r in during if r[0] != "arp"} == {f for f in FLOWS if on[f] == B}
    assert release(site, moving, commit=True)["flows"] == \
        len([f for f in on_a if slots[f] in first])
    assert release(site, staying, commit=False)["flows"] == 0
    after = {f: server for server, f, _ in sent(site, [flow_frame(f, 2) for f in FLOWS])}
    assert {f for f in FLOWS if after[f] != on[f]} == {f for f in on_a if slots[f] in first}


def test_bad_moves_are_refused_naming_what(site):
    with pytest.raises(ValueError, match="no server of SFC"):
        site.gw.hold_flows(site.sfc, "192.168.51.99", B)
    with pytest.raises(ValueError, match="slots"):
        site.gw.hold_flows(site.sfc, A, B, slots=[dp.GW_MAGLEV])
    move = site.gw.hold_flows(site.sfc, A, B)
    with pytest.raises(ValueError, match="under way"):
        site.gw.hold_flows(site.sfc, A, B)
    release(site, move, commit=False)
    with pytest.raises(ValueError, match="no move"):
        site.gw.finish_move(move)
    with pytest.raises(ValueError, match="40-byte"):
        dp.gateway_flow_slots(site.sfc, bytes(41))
