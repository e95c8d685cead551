"""The chainer runs an SFC as function calls over a labelled batch (paper Fig. 6), checked
packet by packet with the `mark` NF, which writes its id into each packet it sees."""
import pytest
from scapy.layers.inet import IP, UDP

from serpens.runtime_cy.sfc import NF, SFCError, aggregate, chain, compile_sfc, distribute

from support.harness import PacketHarness
from support.packets import eth, trace

pytestmark = pytest.mark.dataplane


def frame(sel: int, sport: int = 1234, src="10.0.0.1") -> bytes:
    payload = bytes(31) + bytes([sel])  # payload[0] = trace length, payload[31] = selector
    return bytes(eth() / IP(src=src, dst="10.9.9.9") / UDP(sport=sport, dport=80) / payload)


def mark(build, nf_id, decide=False, ports=1):
    return NF(build("mark.c", copy=nf_id), config=bytes([nf_id, int(decide)]), ports=ports,
              name=f"mark{nf_id}")


def test_distribute_aggregate_runs_exactly_the_labelled_nfs(pool, build, dataplane):
    a, b, c, d = (mark(build, 1, decide=True), mark(build, 2), mark(build, 3), mark(build, 4))
    sfc = compile_sfc(chain(a, distribute(b, c), aggregate(d)))
    sels = [0, 1, 0xFF, 2, 1, 0, 7] * 20  # 2 and 7 pick ports the SFC did not wire: drop
    free_before = dataplane.mempool.available()
    with PacketHarness(pool, sfc) as h:
        results = h.run([frame(s) for s in sels])
        counters = h.nf_counters()
    assert len(results) == len(sels)
    for sel, r in zip(sels, results):
        if sel in (0, 1):
            assert r.verdict == "out"
            assert trace(r.data) == [1, 2 if sel == 0 else 3, 4]
        else:
            assert r.verdict == "drop"
    by_name = {c["name"]: c for c in counters}
    assert by_name["mark1"]["in"] == len(sels)
    assert by_name["mark2"]["in"] == sels.count(0)
    assert by_name["mark3"]["in"] == sels.count(1)
    assert by_name["mark4"]["in"] == sels.count(0) + sels.count(1)
    assert by_name["mark1"]["counters"]["marked"] == len(sels)
    assert dataplane.mempool.available() == free_before  # no mbuf leaked


def test_an_nf_that_scribbles_over_the_batch_changes_nothing_after_it(pool, build):
    """mark1 overwrites the batch's n, count and indices after its call; mark2 still gets
    every packet once (the chainer's own mask decides, whole batches included)."""
    sfc = compile_sfc(chain(NF(build("mark.c", copy=1), config=bytes([1, 3]), name="mark1"),
                            mark(build, 2)))
    with PacketHarness(pool, sfc) as h:
        results = h.run([frame(0, sport=1000 + k) for k in range(70)])  # 32 + 32 + 6
        counters = {c["name"]: c for c in h.nf_counters()}
    assert [r.verdict for r in results] == ["out"] * 70
    assert all(trace(r.data) == [1, 2] for r in results)
    assert counters["mark1"]["in"] == counters["mark2"]["in"] == 70


def test_three_nf_distribute_ends_in_out(pool, build):
    sfc = compile_sfc(chain(mark(build, 1, decide=True), distribute(mark(build, 2), mark(build, 3))))
    with PacketHarness(pool, sfc) as h:
        results = h.run([frame(0), frame(1)])
    assert [trace(r.data) for r in results] == [[1, 2], [1, 3]]


def test_none_branch_skips_to_the_join(pool, build):
    sfc = compile_sfc(chain(mark(build, 1, decide=True), distribute(mark(build, 2), None),
                            aggregate(mark(build, 4))))
    with PacketHarness(pool, sfc) as h:
        results = h.run([frame(0), frame(1)])
    assert [trace(r.data) for r in results] == [[1, 2, 4], [1, 4]]


def test_hash_distribute_keeps_flows_together(pool, build):
    sfc = compile_sfc(chain(distribute(mark(build, 2), mark(build, 3), selector="hash"),
                            mark(build, 4)))
    frames = [frame(0, src=f"10.0.{i % 50}.1", sport=1000 + i % 50) for i in range(400)]
    with PacketHarness(pool, sfc) as h:
        results = h.run(frames)
    branch_of_flow = {}
    for f, r in zip(frames, results):
        t = trace(r.data)
        assert r.verdict == "out" and t[-1] == 4 and len(t) == 2
        assert branch_of_flow.setdefault(f[26:38], t[0]) == t[0]
    assert set(branch_of_flow.values()) == {2, 3}  # both branches are used


def test_empty_sfc_forwards_everything(pool):
    with PacketHarness(pool, compile_sfc(chain())) as h:
        results = h.run([frame(0)] * 100)
    assert all(r.verdict == "out" and r.data == frame(0) for r in results)


def test_malformed_frames_are_dropped_and_counted(pool, build):
    sfc = compile_sfc(mark(build, 1))
    bad = [b"\x00" * 10, bytes(eth() / IP() / UDP() / b"short"), frame(0)[:40]]
    with PacketHarness(pool, sfc) as h:
        results = h.run(bad + [frame(0)])
        counters = h.nf_counters()[0]["counters"]
    assert [r.verdict for r in results] == ["drop", "drop", "drop", "out"]
    assert counters["short"] == 3


def test_labels_that_do_not_lead_forward_are_dropped_and_counted(pool, build):
    """An NF writes any label it likes (mark's decide = 2): one that leads back (to itself or
    before), past the last step, or to no step at all is dropped and counted as bad; a later
    step, OUT and DROP are taken as they are."""
    first = NF(build("mark.c", copy=1), config=bytes([1, 2]), name="mark1")
    sfc = compile_sfc(chain(first, mark(build, 2), mark(build, 3)))

    def labelled(label):
        f = bytearray(frame(0))
        f[-3:-1] = label.to_bytes(2, "little")  # payload[29..30]
        return bytes(f)
    labels = [1, 2, 0xFFFE, 0xFFFF, 0, 3, 7, 0x1234, 0xFFFD]
    frames = [labelled(label) for label in labels] * 5  # batches mixing good and bad
    with PacketHarness(pool, sfc) as h:
        results = h.run(frames)
        counters = h.nf_counters()
        stats = h.stats()
    for label, r in zip(labels * 5, results):
        assert r.verdict == ("out" if label in (1, 2, 0xFFFE) else "drop"), label
        if r.verdict == "out":
            assert trace(r.data) == {1: [1, 2, 3], 2: [1, 3], 0xFFFE: [1]}[label]
    assert counters[0]["dropped"] == 6 * 5  # DROP and the five bad labels
    assert stats["bad_labels"] == 5 * 5


def test_port_selector_must_follow_one_nf(build):
    with pytest.raises(SFCError, match="must follow a single NF"):
        compile_sfc(chain(distribute(mark(build, 1), mark(build, 2))))
    with pytest.raises(SFCError, match="selector"):
        distribute(mark(build, 1), mark(build, 2), selector="random")
    with pytest.raises(SFCError, match="at most 16"):
        compile_sfc(chain(*[mark(build, i) for i in range(17)]))
    with pytest.raises(SFCError, match="each step needs its own image"):
        compile_sfc(chain(mark(build, 1), mark(build, 1)))


def test_labels_only_move_forward(build):
    sfc = compile_sfc(chain(mark(build, 1, decide=True), distribute(mark(build, 2), mark(build, 3)),
                            mark(build, 4)))
    for index, step in enumerate(sfc.steps):
        assert all(label > index for label in step.next)
