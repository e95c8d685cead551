"""Checkpoints' parts (agent/checkpoints.py, controller/checkpoints.py): the incremental page
diff, the peer's store (a checkpoint replaced only whole, bounded), the stream's checks, the
spec field and the status record. tests/test_checkpoint.py runs them across real nodes."""
import asyncio
import json
import os
import random
import zlib

import pytest

from serpens.agent import checkpoints as ck
from serpens.agent.checkpoints import (PAGE, CheckpointError, CheckpointStore, OverBounds,
                                       WrongBase, apply_pages, changed_pages, chunks, received)
from serpens.agent.state_manager import StateFilesystemFull
from serpens.common.records import SFCStatus
from serpens.common.spec import SpecError, parse_sfc
from serpens.controller.checkpoints import checkpoint_s, pick_peer
from serpens.proto.serpens.v1 import serpens_pb2 as pb

pytestmark = pytest.mark.unit


def table(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- the page diff ------------------------------------------------------------------------

def test_only_the_pages_that_changed_are_sent():
    old = table(10 * PAGE + 100, 1)
    new = bytearray(old)
    new[3 * PAGE + 7] ^= 1          # page 3
    new[10 * PAGE + 99] ^= 1        # the last, short page
    new[5 * PAGE - 1] ^= 1          # the last byte of page 4
    assert changed_pages(old, bytes(new)) == [3, 4, 10]
    assert changed_pages(old, old) == []
    assert changed_pages(None, old) == list(range(11))            # no base: all of it
    assert changed_pages(old[:-1], bytes(new)) == list(range(11))  # another size: all of it


def test_pages_over_the_base_make_the_new_table():
    old, new = table(7 * PAGE + 5, 2), bytearray(table(7 * PAGE + 5, 2))
    for at in (0, 2 * PAGE + 1, 7 * PAGE + 4):
        new[at] ^= 0xFF
    new = bytes(new)
    pages = {i: new[i * PAGE:(i + 1) * PAGE] for i in changed_pages(old, new)}
    assert apply_pages(old, len(new), pages) == new
    with pytest.raises(CheckpointError, match="needs all its 8 pages"):
        apply_pages(None, len(new), pages)            # without a base, every page
    with pytest.raises(CheckpointError, match="does not fit"):
        apply_pages(old, len(new), {7: new[:PAGE]})  # the last page is 5 bytes


def test_one_entry_changed_in_a_real_table_is_a_page_or_two(tmp_path):
    """A state table as the runtime writes it (state_table.c): a checkpoint after one more
    entry sends the page with its slot and the header's (its count), not the table."""
    from serpens.runtime_cy import _dataplane as dp
    t = dp.StateTable(str(tmp_path), "mon-ckpt.mon", "flows",
                      dp.PER_FLOW | dp.READ | dp.WRITE, 40, 16, 20000)
    try:
        for i in range(1000):
            t.put(i.to_bytes(40, "little"), bytes(16))
        path = tmp_path / "mon-ckpt.mon" / "flows.tbl"
        before = path.read_bytes()
        t.put((10 ** 6).to_bytes(40, "little"), b"\x01" * 16)
        after = path.read_bytes()
    finally:
        t.close()
    pages = changed_pages(before, after)
    assert len(after) > 100 * PAGE and 1 <= len(pages) <= 2, pages
    assert apply_pages(before, len(after),
                       {i: after[i * PAGE:(i + 1) * PAGE] for i in pages}) == after


# ---- the peer's store ---------------------------------------------------------------------

def header(tables, base_seq=0, pages=0, node="s1", sfc="mon", taken=1000):
    return pb.CheckpointHeader(node=node, sfc=sfc, base_seq=base_seq, taken_unix_ms=taken,
                               page_size=PAGE, pages=pages,
                               tables=[pb.CheckpointTable(nf=nf, table=t, size=len(d))
                                       for (nf, t), d in tables.items()])


def all_pages(tables):
    return {i: {p: d[p * PAGE:(p + 1) * PAGE] for p in range(-(-len(d) // PAGE))}
            for i, d in enumerate(tables.values())}


def test_a_checkpoint_is_kept_whole_and_updated_by_its_changed_pages(tmp_path):
    store = CheckpointStore(str(tmp_path))
    first = {("mon", "flows"): table(9 * PAGE, 3), ("mon", "hosts"): table(PAGE + 3, 4)}
    got = store.put(header(first), all_pages(first))
    assert got.seq == 1 and store.load("s1", "mon").tables == first
    second = dict(first)
    flows = bytearray(first[("mon", "flows")])
    flows[4 * PAGE] ^= 1
    second[("mon", "flows")] = bytes(flows)
    got = store.put(header(second, base_seq=1, taken=2000),
                    {0: {4: bytes(flows[4 * PAGE:5 * PAGE])}})
    kept = store.load("s1", "mon")
    assert (kept.seq, kept.taken_unix_ms, kept.tables) == (2, 2000, second) and got.seq == 2


def test_a_checkpoint_that_cannot_be_made_whole_changes_nothing(tmp_path):
    store = CheckpointStore(str(tmp_path))
    first = {("mon", "flows"): table(4 * PAGE, 5)}
    store.put(header(first), all_pages(first))
    path = store.path("s1", "mon")
    before = open(path, "rb").read()
    grown = {("mon", "flows"): table(5 * PAGE, 6)}   # another size: needs every page
    with pytest.raises(CheckpointError, match="needs all its 5 pages"):
        store.put(header(grown, base_seq=1), {0: {0: grown[("mon", "flows")][:PAGE]}})
    with pytest.raises(WrongBase, match="pages over 7, this peer keeps 1"):
        store.put(header(first, base_seq=7), {})
    with pytest.raises(CheckpointError, match="does not list"):
        store.put(header(first), {**all_pages(first), 3: {0: b"x"}})
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["mon.ckpt"]   # no half-written file left


def test_a_full_filesystem_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path))
    first = {("mon", "flows"): table(3 * PAGE, 7)}
    store.put(header(first), all_pages(first))
    before = open(store.path("s1", "mon"), "rb").read()

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    second = {("mon", "flows"): table(3 * PAGE, 8)}
    with pytest.raises(StateFilesystemFull):
        store.put(header(second), all_pages(second))
    monkeypatch.undo()
    assert open(store.path("s1", "mon"), "rb").read() == before
    assert os.listdir(os.path.dirname(store.path("s1", "mon"))) == ["mon.ckpt"]
    assert store.load("s1", "mon").tables == first


def test_the_store_is_bounded_and_a_checkpoint_is_dropped(tmp_path):
    store = CheckpointStore(str(tmp_path), max_bytes=4 * PAGE, max_count=2,
                            max_total=7 * PAGE)
    big = {("a", "t"): table(5 * PAGE, 9)}
    with pytest.raises(OverBounds, match="over the 16384"):
        store.put(header(big), all_pages(big))
    small = {("a", "t"): table(3 * PAGE, 10)}
    store.put(header(small, sfc="one"), all_pages(small))
    store.put(header(small, sfc="two"), all_pages(small))
    with pytest.raises(OverBounds, match="keeps 2 checkpoints"):
        store.put(header(small, sfc="three"), all_pages(small))
    assert store.drop("s1", "one") and not store.drop("s1", "one")
    assert store.load("s1", "one") is None
    bigger = {("a", "t"): table(4 * PAGE, 11)}   # 3 + 4 pages: over the total
    with pytest.raises(OverBounds, match="would take over"):
        store.put(header(bigger, sfc="three"), all_pages(bigger))
    with pytest.raises(CheckpointError, match="not a node name"):
        store.path("../x", "mon")


# ---- the stream ---------------------------------------------------------------------------

async def _stream(messages):
    for m in messages:
        yield m


def test_a_stream_gives_its_pages_and_is_checked():
    tables = {("mon", "flows"): table(300 * PAGE, 12)}
    data = list(tables.values())
    pages = [list(range(0, 300, 2))]
    msgs = list(chunks(header(tables, pages=150), data, pages))
    assert len(msgs) == 1 + 2   # the header, then at most PAGES_PER_MESSAGE a message
    h, got = asyncio.run(received(_stream(msgs)))
    assert h.pages == 150 and got[0] == {i: data[0][i * PAGE:(i + 1) * PAGE] for i in pages[0]}
    with pytest.raises(CheckpointError, match="149 pages of the 150"):
        msgs2 = msgs[:-1] + [pb.CheckpointChunk(pages=msgs[-1].pages[:-1])]
        asyncio.run(received(_stream(msgs2)))
    with pytest.raises(CheckpointError, match="no header"):
        asyncio.run(received(_stream(msgs[1:])))
    with pytest.raises(OverBounds, match="over the tables' 300 pages"):
        asyncio.run(received(_stream([pb.CheckpointChunk(header=header(tables, pages=301))])))
    bomb = pb.CheckpointPage(table=0, index=0, zdata=zlib.compress(bytes(10 * PAGE)))
    with pytest.raises(CheckpointError, match="not one page"):
        asyncio.run(received(_stream([pb.CheckpointChunk(header=header(tables, pages=1)),
                                      pb.CheckpointChunk(pages=[bomb])])))


# ---- the spec, the status, the peer -------------------------------------------------------

def spec(state):
    return json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": "m"},
                       "spec": {"nfs": {"mon": {"stock": "mon"}}, "chain": ["mon"],
                                "state": state}})


def test_spec_state_checkpoint_s():
    assert parse_sfc(spec({"checkpoint_s": 1})).checkpoint_s == 1
    assert parse_sfc(spec({"checkpoint_s": 3600})).checkpoint_s == 3600
    assert checkpoint_s(json.loads(spec({"checkpoint_s": 7}))) == 7
    assert checkpoint_s({"spec": {}}) == 0
    assert parse_sfc(spec({})).checkpoint_s == 0      # an empty state block: checkpoints off
    assert parse_sfc(spec(None)).checkpoint_s == 0
    assert checkpoint_s(json.loads(spec({}))) == 0
    for bad in (0, 3601, "5", True, 1.5, None):
        with pytest.raises(SpecError, match=r"^spec\.state\.checkpoint_s: seconds 1\.\.3600"):
            parse_sfc(spec({"checkpoint_s": bad}))
    with pytest.raises(SpecError, match=r"^spec\.state\.every: unknown key"):
        parse_sfc(spec({"every": 1}))
    with pytest.raises(SpecError, match=r"^spec\.state: a mapping"):
        parse_sfc(spec(5))


def test_status_record_carries_the_restore_and_stays_as_it_was_without():
    plain = SFCStatus("Running", node="s1", generation=1, instances=1)
    assert "checkpoint_to" not in plain.encode()
    restored = SFCStatus("Running", node="s2", checkpoint_to="s3", restored_of="s1",
                         restored_age_ms=1200, restore="restored from ...")
    assert SFCStatus.decode(restored.encode()) == restored
    assert restored.to_message().restored_age_ms == 1200


def test_the_peer_stays_while_it_lives_else_the_first_ranked_other_node():
    live = ["s1", "s2", "s3"]
    assert pick_peer("s1", "s3", live, lambda n: n) == "s3"
    assert pick_peer("s1", "s9", live, lambda n: n) == "s2"     # gone: another
    assert pick_peer("s2", "s2", live, lambda n: n) == "s1"     # never the node itself
    assert pick_peer("s1", "", ["s1"], lambda n: n) is None
    assert ck.PAGES_PER_MESSAGE * PAGE <= 1 << 20   # a message stays well under gRPC's bound


def test_a_lost_nodes_place_goes_to_a_node_not_running_the_sfc():
    from serpens.controller.checkpoints import LostNodes, lost_nodes, restorers
    st = SFCStatus("Running", node="s1", nodes=(("s1", 1), ("s2", 1)), checkpoint_to="s2",
                   checkpoint_peers=(("s1", "s2"), ("s2", "s3")))
    assert lost_nodes(st, {"s2", "s3"}) == {"s1": "s2"}          # the first node
    assert lost_nodes(st, {"s1", "s3"}) == {"s2": "s3"}          # any other node too
    assert lost_nodes(SFCStatus("Running", node="s1", checkpoint_to="s2"), {"s2"}) == \
        {"s1": "s2"}
    assert lost_nodes(None, set()) == {}
    # the new placement s2 (runs it: restores nothing), s3 (new: takes s1's place)
    assert restorers({"s1": "s2"}, ["s2", "s3"], {"s2"}) == {"s3": "s1"}
    assert restorers({"s1": "s2"}, ["s2"], {"s2"}) == {}          # nowhere: said why
    assert restorers({"s1": "", "s2": ""}, ["s4", "s3"], set()) == {"s4": "s1", "s3": "s2"}
    lost = LostNodes()
    lost.note(st, {"s2", "s3"})
    assert lost.pending == {"s1": "s2"}
    lost.settle("s1")
    lost.note(st, {"s2", "s3"})                 # the status not yet written again
    assert lost.pending == {}
    lost.note(st, {"s1", "s2", "s3"})           # back: lost again later, restored again
    lost.note(st, {"s2", "s3"})
    assert lost.pending == {"s1": "s2"}


def test_spread_status_carries_each_nodes_peer_the_oldest_checkpoint_and_every_failure():
    from serpens.controller.checkpoints import REFRESH_S, report_summary, spread_fields
    s1 = SFCStatus("Running", node="s1", checkpoint_to="s2", checkpoint_unix_ms=5000)
    s2 = SFCStatus("Running", node="s2", checkpoint_to="s1", checkpoint_unix_ms=3000,
                   checkpoint_error="RESOURCE_EXHAUSTED: full", restored_of="s0",
                   restored_age_ms=700, restore="restored ...")
    f = spread_fields("s1", {"s1": s1, "s2": s2})
    assert f["checkpoint_to"] == "s2" and f["checkpoint_peers"] == (("s1", "s2"), ("s2", "s1"))
    assert f["checkpoint_unix_ms"] == 3000
    assert f["checkpoint_error"] == "node s2: RESOURCE_EXHAUSTED: full"
    assert (f["restored_of"], f["restored_age_ms"]) == ("s0", 700)   # s2 restored it
    one = spread_fields("s1", {"s1": s1})
    assert "checkpoint_peers" not in one and one["checkpoint_error"] == ""
    agent = pb.AgentSFC(checkpoint_unix_ms=10_000, checkpoint_error="")
    later = pb.AgentSFC(checkpoint_unix_ms=10_000 + REFRESH_S * 1000 - 1)
    assert report_summary(agent) == report_summary(later)   # no status write per checkpoint
    assert report_summary(agent) != report_summary(pb.AgentSFC(
        checkpoint_unix_ms=10_000, checkpoint_error="UNAVAILABLE: peer down"))
    rt = SFCStatus("Degraded", node="s1", checkpoint_unix_ms=3000, checkpoint_error="x",
                   checkpoint_peers=(("s1", "s2"),))
    assert SFCStatus.decode(rt.encode()) == rt
    assert rt.to_message().checkpoint_peers == {"s1": "s2"}


def test_get_sfc_shows_the_last_checkpoints_age():
    from serpens.cli.control import checkpoint
    assert checkpoint(pb.SFCStatus()) == "-"
    assert checkpoint(pb.SFCStatus(checkpoint_to="s2")) == "none yet"
    assert checkpoint(pb.SFCStatus(checkpoint_to="s2", checkpoint_unix_ms=100_000),
                      now=103.4) == "3s ago"
    assert checkpoint(pb.SFCStatus(checkpoint_to="s2", checkpoint_unix_ms=100_000,
                                   checkpoint_error="RESOURCE_EXHAUSTED"),
                      now=160) == "failing, last 60s ago"
