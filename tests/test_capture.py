"""Capture and trace inside a real pool process (agent/capture.py, runtime_cy/src/observe.c):
what a capture point copies is exactly what passed it, drops carry their reason, a full record
ring loses copies and never packets, and a trace walks the chain in order."""
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from serpens.agent.capture import REC_PKT, REC_TRACE_PKT, REC_TRACE_STEP, Observation
from serpens.agent.sfc_builder import build_sfc
from serpens.common.pcapng import CapturedFrame, write_pcapng
from serpens.common.spec import parse_sfc
from serpens.runtime_cy import _dataplane as dp

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "fw-mon-nat.yaml")
SERPENSCTL = os.path.join(os.path.dirname(sys.executable), "serpensctl")


def traffic(n=1000, denied=0):
    pkts = [eth() / IP(src=f"10.0.0.{i % 50 + 1}", dst="8.8.8.8")
            / UDP(sport=1000 + i % 50, dport=53) / b"query" for i in range(n)]
    pkts += [eth() / IP(src="10.0.0.1", dst="1.2.3.4") / TCP(dport=23)] * denied
    return [bytes(p) for p in pkts]


@pytest.fixture
def fw_mon_nat(areas):
    """A fresh fw->mon->nat (its own state namespace: NAT ports as a replay allocates them)."""
    def make(tag):
        spec = parse_sfc(open(EXAMPLE).read().replace("name: fw-mon-nat", f"name: cap-{tag}"),
                         base_dir=os.path.dirname(EXAMPLE))
        return build_sfc(spec, areas)
    made = []
    yield lambda tag: made.append(make(f"{tag}-{os.getpid()}-{len(made)}")) or made[-1]
    for built in made:
        built.close(areas)


def observe(h, **kw):
    steps = [s.name for s in h.sfc.steps]
    return Observation(lambda: {7: h.process.ctl}, steps, **kw)


def test_a_capture_at_an_nf_output_equals_what_it_emitted_and_a_replay(tmp_path, pool, fw_mon_nat):
    frames = traffic(1000)
    built = fw_mon_nat("nat-out")
    with PacketHarness(pool, built.compiled) as h:
        obs = observe(h, nf="nat", at="out")
        assert obs.poll() == []  # arms the instance
        emitted = [r.data for r in h.run(frames) if r.verdict == "out"]
        records = obs.poll()
        obs.close()
        assert h.process.ctl.observing == 0
    assert len(emitted) == 1000 and obs.lost() == 0
    assert [r.kind for r in records] == [REC_PKT] * 1000
    assert all(obs.nf_name(r.step) == "nat" and r.label == dp.LABEL_OUT and r.instance == 7
               for r in records)
    out = tmp_path / "nat.pcapng"
    write_pcapng(str(out), [CapturedFrame(r.data, r.orig_len, 1_000_000 * k,
                                          f"nf=nat verdict=out instance={r.instance}")
                            for k, r in enumerate(records)])
    read = rdpcap(str(out))
    captured = [bytes(p) for p in read]
    assert captured == emitted
    assert all(p.comments == [b"nf=nat verdict=out instance=7"] for p in read)

    # The same capture replayed offline gives the same frames (NAT is the chain's last NF).
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in frames])
    rp = subprocess.run([SERPENSCTL, "replay", "--sfc", EXAMPLE, "--in", str(tmp_path / "in.pcap"),
                         "--out", str(tmp_path / "out.pcap")], capture_output=True, text=True,
                        timeout=120)
    assert rp.returncode == 0, rp.stderr
    assert captured == [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap"))]


def test_a_capture_at_an_nf_input_sees_what_the_previous_nf_passed(pool, fw_mon_nat):
    frames = traffic(100, denied=5)
    built = fw_mon_nat("mon-in")
    with PacketHarness(pool, built.compiled) as h:
        obs = observe(h, nf="mon", at="in")
        obs.poll()
        h.run(frames)
        records = obs.poll()
        obs.close()
        later = observe(h, nf="mon", at="in")
        later.poll()
        obs.close()  # a late close of an earlier capture leaves the newer one armed
        assert h.process.ctl.observing == later.armed[7].gen
        later.close()
        assert h.process.ctl.observing == 0
    assert [r.data for r in records] == frames[:100]  # the denied five never reach mon
    assert {r.label for r in records} != {dp.LABEL_DROP}


def test_drops_carry_the_nf_and_the_reason(pool, fw_mon_nat):
    frames = traffic(20, denied=5)
    built = fw_mon_nat("drop")
    with PacketHarness(pool, built.compiled) as h:
        obs = observe(h, at="drop")  # the SFC's own drops
        obs.poll()
        results = h.run(frames)
        records = obs.poll()
        obs.close()
    dropped = [r.data for r in results if r.verdict == "drop"]
    assert len(dropped) == 5 and [r.data for r in records] == dropped
    assert all((obs.nf_name(r.step), r.why, r.label) == ("fw", "verdict", dp.LABEL_DROP)
               for r in records)


def test_a_full_ring_loses_copies_never_packets(pool, fw_mon_nat):
    big = [bytes(eth() / IP(src="10.0.0.1", dst="8.8.8.8") / UDP(sport=1000 + i, dport=53)
                 / (b"x" * 1400)) for i in range(2000)]
    built = fw_mon_nat("full")
    with PacketHarness(pool, built.compiled) as h:
        obs = observe(h, at="in", snaplen=2048)
        obs.poll()
        results = h.run(big)  # 2000 x ~1.5 KB into a 1 MiB ring nobody drains meanwhile
        records = obs.poll()
        lost = obs.lost()
        obs.close()
        after = h.run(big[:10])  # disarmed: packets go on, nothing more is recorded
        assert obs.poll() == []
    assert [r.verdict for r in results] == ["out"] * 2000 and len(after) == 10
    assert 0 < len(records) < 2000 and len(records) + lost == 2000
    assert [r.data for r in records] == big[:len(records)]  # the first ones, whole


def test_a_trace_names_each_nf_in_chain_order_with_verdicts(pool, fw_mon_nat):
    frames = traffic(3) + traffic(0, denied=1) + traffic(10)
    built = fw_mon_nat("trace")
    with PacketHarness(pool, built.compiled) as h:
        obs = observe(h, trace=4)
        obs.poll()
        h.run(frames)
        records = obs.poll()
        obs.close()
    heads = [r for r in records if r.kind == REC_TRACE_PKT]
    assert [r.data for r in heads] == frames[:4] and [r.pkt for r in heads] == [0, 1, 2, 3]
    for r in heads:
        steps = [(obs.nf_name(s.step), s.label, s.why) for s in records
                 if s.kind == REC_TRACE_STEP and s.pkt == r.pkt]
        if r.pkt < 3:
            assert [n for n, _, _ in steps] == ["fw", "mon", "nat"]
            assert steps[-1][1] == dp.LABEL_OUT and steps[0][1] not in (dp.LABEL_DROP, dp.LABEL_OUT)
        else:
            assert steps == [("fw", dp.LABEL_DROP, "verdict")]
    assert all(s.batch >= 1 and s.tsc > 0 for s in records if s.kind == REC_TRACE_STEP)
    assert len(heads) == 4  # only the next N packets


def test_a_trace_is_right_whatever_an_nf_writes_over_the_batch(pool, build):
    """An NF that overwrites the batch's count, n and packet indices after its call (mark's
    decide = 3) changes nothing of the trace or the capture: they follow the packets the
    chainer gave it."""
    from serpens.runtime_cy.sfc import NF, chain, compile_sfc
    sfc = compile_sfc(chain(NF(build("mark.c", copy=1), config=bytes([1, 3]), name="mark1"),
                            NF(build("mark.c", copy=2), config=bytes([2, 0]), name="mark2")))
    frames = [bytes(eth() / IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=1000 + i, dport=80)
                    / bytes(32)) for i in range(40)]
    with PacketHarness(pool, sfc) as h:
        obs = observe(h, trace=8)
        obs.poll()
        results = h.run(frames)
        records = obs.poll()
        obs.close()
        out = observe(h, at="out")  # the SFC's output, after the scribbled batch
        out.poll()
        again = h.run(frames[:5])
        outs = out.poll()
        out.close()
    assert [r.verdict for r in results + again] == ["out"] * 45
    heads = [r for r in records if r.kind == REC_TRACE_PKT]
    assert [r.pkt for r in heads] == list(range(8))
    for r in heads:
        steps = [(obs.nf_name(s.step), s.label, s.batch) for s in records
                 if s.kind == REC_TRACE_STEP and s.pkt == r.pkt]
        assert [(n, label) for n, label, _ in steps] == [("mark1", 1), ("mark2", dp.LABEL_OUT)]
        assert all(1 <= batch <= 32 for _, _, batch in steps)
    assert [r.data for r in outs] == [r.data for r in again]


def test_bad_settings_are_refused_naming_the_field(pool, fw_mon_nat):
    built = fw_mon_nat("bad")
    steps = [s.name for s in built.compiled.steps]
    with pytest.raises(ValueError, match="^nf: .*'ids'"):
        Observation(dict, steps, nf="ids")
    with pytest.raises(ValueError, match="^at: "):
        Observation(dict, steps, at="middle")
    with pytest.raises(ValueError, match="^snaplen: "):
        Observation(dict, steps, snaplen=0)



async def _stream_while_sending(h, frames, request):
    """Agent.Capture's stream of `request` over `h`'s instance, `frames` sent once armed."""
    import asyncio

    from serpens.agent.capture_rpc import stream
    obs = observe(h, at="out")
    obs.poll()  # armed before the frames go in
    sender = asyncio.create_task(asyncio.to_thread(h.run, frames))
    packets, summary = [], None
    async for e in stream(obs, "n1", request):
        if e.HasField("packet"):
            packets.append(e.packet)
        else:
            summary = e.summary
    await sender
    return packets, summary


@pytest.mark.parametrize("bounds,stopped,n", [
    (dict(count=100, seconds=30), "count", 100),
    (dict(count=1000, max_bytes=47 * 50, seconds=30), "bytes", 50),
    (dict(count=1000, seconds=1), "seconds", 300)])
def test_the_stream_stops_on_count_bytes_or_seconds_and_disarms(pool, fw_mon_nat, bounds,
                                                                stopped, n):
    import asyncio

    from serpens.proto.serpens.v1 import serpens_pb2 as pb

    built = fw_mon_nat("bounds")
    frames = traffic(300)
    assert {len(f) for f in frames} == {47}
    with PacketHarness(pool, built.compiled) as h:
        packets, summary = asyncio.run(_stream_while_sending(h, frames,
                                                             pb.CaptureRequest(**bounds)))
        assert h.process.ctl.observing == 0  # disarmed when the stream ended
        emitted = [r.data for r in h.run(frames[:5])]  # (and packets go on)
    assert (summary.stopped, summary.packets, len(packets), summary.lost) == (stopped, n, n, 0)
    assert summary.bytes == 47 * n and len(emitted) == 5
    assert all((p.node, p.verdict, p.at, p.orig_len) == ("n1", "out", "out", 47)
               for p in packets)


def test_the_sfc_s_drops_include_the_router_s_with_their_reason(dataplane, pool, build):
    import time

    from serpens.agent.capture import ROUTER
    from serpens.runtime_cy.sfc import NF, compile_sfc

    from support.sites import Site

    site = Site(dataplane, pool, compile_sfc(NF(build("tag.c"))), f"cap{os.getpid() % 10**5}")
    ring = dp.ObsRing()
    try:
        site.router.set_drop_all(0, True)  # a failed SFC: the router drops its packets
        site.router.set_drop_capture(0, ring)
        obs = Observation(lambda: {ROUTER: ring}, ["tag"], at="drop")
        obs.poll()
        frames = traffic(40)
        site.send(frames)
        records, deadline = [], time.monotonic() + 10
        while len(records) < 40 and time.monotonic() < deadline:
            records += obs.poll()
            time.sleep(0.01)
        obs.close()
        site.router.set_drop_capture(0, None)
        assert [r.data for r in records] == frames
        assert all((r.why, r.label, r.instance) == ("sfc_failed", dp.LABEL_DROP, ROUTER)
                   for r in records)
        assert site.router.stats()["sfcs"][0]["drops"]["sfc_failed"] == 40
    finally:
        site.close()
