"""The agents' part of moving flows (agent/peer_moves.py) on real state tables: the per-flow
tables of an SFC's NFs are found (not its global ones, not replicas), a partial move of a
table not keyed by flow is refused naming it, the moving entries are exactly those whose key
hashes into the slots, inserting makes a missing table with the source's shape and refuses
another shape, undo and delete leave nothing behind, and chunks stay under their bound."""
import array
import os
import socket
import struct

import pytest

from serpens.agent import peer_moves
from serpens.agent.state_manager import StateManager
from serpens.runtime_cy import _dataplane as dp

pytestmark = pytest.mark.dataplane


def flow_key(f: int) -> bytes:
    src = socket.inet_aton(f"10.3.{f // 256}.{f % 256}").ljust(16, b"\0")
    dst = socket.inet_aton("10.9.9.9").ljust(16, b"\0")
    return src + dst + struct.pack("!HH", 2000 + f, 80) + bytes([17, 4, 0, 0])


@pytest.fixture
def source(tmp_path):
    d = str(tmp_path / "a")
    flows = dp.StateTable(d, "s.mon", "flows", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 16, 1024)
    for f in range(200):
        flows.put(flow_key(f), struct.pack("<QQ", f, 64 * f))
    flows.close()
    hosts = dp.StateTable(d, "s.mon", "hosts", dp.GLOBAL | dp.WRITE | dp.EVENTUAL, 20, 16, 64)
    hosts.put(bytes(20), bytes(16))
    hosts.close()
    dp.StateTable(d, "s.mon", "hosts@r1", dp.GLOBAL | dp.WRITE | dp.EVENTUAL, 20, 16, 64).close()
    dp.StateTable(d, "other.x", "flows", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 8, 64).close()   # another SFC's
    return d


def test_the_per_flow_tables_of_the_sfc_are_found(source):
    tables = peer_moves.per_flow_tables(StateManager(source), {"s.mon": "mon"})
    assert [(nf, ns, name) for nf, ns, name, _ in tables] == [("mon", "s.mon", "flows")]
    assert tables[0][3]["key_size"] == 40 and tables[0][3]["count"] == 200


def test_a_partial_move_of_a_table_not_keyed_by_flow_is_refused_naming_it():
    with pytest.raises(peer_moves.MoveRefused, match="table conns of NF lb in SFC web is "
                                                     "keyed by 12-byte keys"):
        peer_moves.check_partial([("lb", "web.lb", "conns", {"key_size": 12, "value_size": 40,
                                                            "flags": dp.PER_FLOW})], "web")
    peer_moves.check_partial([("mon", "web.mon", "flows", {"key_size": 40, "value_size": 8,
                                                          "flags": dp.PER_FLOW})], "web")
    # a reverse mapping whose value is its flow (NAT's "in") is taken by that flow
    peer_moves.check_partial([("nat", "web.nat", "in", {"key_size": 8, "value_size": 40,
                                                       "flags": dp.PER_FLOW | dp.FLOW_VALUE})])


def test_a_partial_export_takes_exactly_the_flows_in_the_slots_and_moves_them(source, tmp_path):
    state = StateManager(source)
    tables = peer_moves.per_flow_tables(state, {"s.mon": "mon"})
    slots = dp.gateway_flow_slots(3, b"".join(flow_key(f) for f in range(200)))
    chosen = set(slots[:100])
    want = {flow_key(f) for f in range(200) if slots[f] in chosen}
    ((nf, ns, name, info, keys, values),) = peer_moves.export(state, tables, chosen, 3)
    n = peer_moves.entries(info, keys)
    assert len(keys) == 40 * n and len(values) == 16 * n
    keys_list = [keys[40 * i:40 * i + 40] for i in range(n)]
    assert set(keys_list) == want and n == len(want)
    target = str(tmp_path / "b")
    assert peer_moves.insert(target, ns, name, info, keys, values) == n
    moved = dp.StateTable(target, ns, name)
    assert moved.info["value_size"] == 16 and moved.info["capacity"] == info["capacity"]
    assert dict(moved.items()) == dict(zip(keys_list, (values[16 * i:16 * i + 16]
                                                       for i in range(n))))
    moved.close()
    assert peer_moves.delete(state, ns, name, keys) == n
    left = state.open(ns, name)
    assert {k for k, _ in left.items()} == {flow_key(f) for f in range(200)} - want
    left.close()
    peer_moves.insert(target, ns, name, info, keys, [], undo=True)   # an aborted move
    assert len(dp.StateTable(target, ns, name)) == 0


def test_a_partial_export_refuses_a_table_not_keyed_by_flow(source):
    state = StateManager(source)
    dp.StateTable(source, "s.nat", "in", dp.PER_FLOW | dp.READ | dp.WRITE, 8, 40, 64).close()
    tables = peer_moves.per_flow_tables(state, {"s.mon": "mon", "s.nat": "nat"})
    with pytest.raises(peer_moves.MoveRefused, match="table in of NF nat is keyed by 8-byte"):
        peer_moves.export(state, tables, {1, 2}, 3)
    assert {t[2]: len(t[4]) for t in peer_moves.export(state, tables, None, 3)} == \
        {"flows": 200 * 40, "in": 0}


def test_a_table_of_another_shape_on_the_target_is_refused(source, tmp_path):
    target = str(tmp_path / "b")
    dp.StateTable(target, "s.mon", "flows", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 8,
                  1024).close()
    info = {"flags": dp.PER_FLOW | dp.READ | dp.WRITE, "key_size": 40, "value_size": 16, "capacity": 1024}
    with pytest.raises(peer_moves.MoveRefused, match="exists with flags 0xd key 40 value 8"):
        peer_moves.insert(target, "s.mon", "flows", info, [flow_key(1)], [bytes(16)])


def test_chunks_stay_under_their_bound_and_hold_whole_entries():
    keys = b"".join(i.to_bytes(40, "big") for i in range(100000))
    values = b"".join(i.to_bytes(16, "big") for i in range(100000))
    parts = list(peer_moves.chunks(keys, values, 40, 16))
    assert len(parts) > 1
    assert b"".join(k for k, _ in parts) == keys and b"".join(v for _, v in parts) == values
    assert all(len(k) % 40 == 0 and len(v) == len(k) // 40 * 16 and
               len(k) + len(v) <= peer_moves.CHUNK_BYTES for k, v in parts)


def test_a_table_dump_and_a_slot_selection_agree_with_its_items(source):
    table = dp.StateTable(source, "s.mon", "flows")
    keys, values = table.dump()
    items = table.items()
    table.close()
    assert keys == b"".join(k for k, _ in items) and values == b"".join(v for _, v in items)
    slots = dp.gateway_flow_slots(5, keys)
    chosen = set(list(slots)[::3])
    ks, vs = dp.gateway_flow_select(5, keys, values, chosen)
    assert ks == b"".join(k for (k, _), s in zip(items, slots) if s in chosen)
    assert vs == b"".join(v for (_, v), s in zip(items, slots) if s in chosen)
    with pytest.raises(ValueError, match="slot 2039"):
        dp.gateway_flow_select(5, keys, values, {2039})
    with pytest.raises(ValueError, match="not whole entries"):
        dp.gateway_flow_select(5, keys[:-1], values, chosen)


def test_keys_grouped_by_slot_give_each_wave_what_a_scan_of_all_gives(source):
    """Snapshot's index (dp.gateway_keys_by_slot/_of): a wave's keys are those a scan of
    every key picks (gateway_keys_in), each once, for any slots, repeated ones included."""
    table = dp.StateTable(source, "s.mon", "flows")
    keys, _ = table.dump()
    table.close()
    slots_of = dp.gateway_flow_slots(5, keys)
    slots_of[7] = -1                                # a key of no IP flow: in no slot
    grouped, starts = dp.gateway_keys_by_slot(keys, 40, slots_of)
    assert len(grouped) == len(keys) - 40

    def split(b):
        return sorted(b[i:i + 40] for i in range(0, len(b), 40))
    used = sorted(set(slots_of) - {-1})
    for slots in ([], used[:1], used[::3], used + [used[0]], list(range(2039))):
        assert split(dp.gateway_keys_of(grouped, 40, starts, slots)) == \
            split(dp.gateway_keys_in(keys, 40, slots_of, slots)), slots
    with pytest.raises(ValueError, match="slot 2039"):
        dp.gateway_keys_of(grouped, 40, starts, [2039])
    with pytest.raises(ValueError, match="not gateway_keys_by_slot"):
        dp.gateway_keys_of(grouped[:-40], 40, starts, [1])
    forged = array.array("q", starts)
    forged[10], forged[11] = forged[11] + 5, forged[11]      # a slot of negative size
    with pytest.raises(ValueError, match="not gateway_keys_by_slot"):
        dp.gateway_keys_of(grouped, 40, forged, [10])
    huge = array.array("q", [0] * 7 + [2 ** 60] + [2 ** 60 + 1] * 2031 + [2 ** 61 + 3])
    with pytest.raises(ValueError, match="not gateway_keys_by_slot"):   # (wraps: 40 x 2^61)
        dp.gateway_keys_of(bytes(120), 40, huge, [6])
    # a slot no table gives (-1 aside) is in none: never read past the slot bitmap
    wild = array.array("i", [100000, 2039, -5] + list(slots_of[3:]))
    assert dp.gateway_keys_in(keys, 40, wild, [0]) == dp.gateway_keys_in(
        keys[120:], 40, slots_of[3:], [0])
    assert len(dp.gateway_keys_by_slot(keys, 40, wild)[0]) == len(keys) - 120 - 40


def test_waves_cover_every_slot_once_and_then_the_rest():
    from serpens.controller.moves import MAGLEV_SLOTS, waves
    plan = waves(None, 128)
    assert plan[-1] is None and len(plan) == 17
    assert sorted(s for w in plan[:-1] for s in w) == list(range(MAGLEV_SLOTS))
    assert waves([5, 1, 3, 3], 2) == [[1, 3], [5]]
    assert waves([4], 0) == [[4]] and waves(None, 0) == [None]


def test_the_insert_log_names_the_keys_put_since_and_get_many_takes_each_once(tmp_path):
    t = dp.StateTable(str(tmp_path), "n", "t", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 8, 4096)
    for f in range(10):
        t.put(flow_key(f), bytes(8))
    since = t.inserts
    assert since == 10 and t.logged_keys(since) == b""
    t.put(flow_key(3), b"x" * 8)                 # an overwrite is no insert
    t.put(flow_key(10), bytes(8))
    t.delete(flow_key(4))
    t.put(flow_key(4), bytes(8))                 # deleted and made again: an insert
    assert t.logged_keys(since) == flow_key(10) + flow_key(4)
    keys, values = t.get_many(flow_key(3) + flow_key(99) + flow_key(3) + flow_key(10))
    assert keys == flow_key(3) + flow_key(10) and values == b"x" * 8 + bytes(8)
    for f in range(100, 100 + dp.TABLE_LOG + 1):
        t.put(flow_key(f), bytes(8))
    assert t.logged_keys(since) is None          # the log forgot some: read the table
    with pytest.raises(ValueError, match="whole keys"):
        t.get_many(bytes(41))
    t.close()


def test_a_flow_value_table_must_be_per_flow_with_a_flow_in_its_value(tmp_path):
    d = str(tmp_path)
    with pytest.raises(OSError, match="invalid flags"):
        dp.StateTable(d, "n", "g", dp.GLOBAL | dp.READ | dp.FLOW_VALUE, 8, 40, 64)
    with pytest.raises(OSError, match="invalid flags"):
        dp.StateTable(d, "n", "short", dp.PER_FLOW | dp.READ | dp.FLOW_VALUE, 8, 16, 64)
    dp.StateTable(d, "n", "in", dp.PER_FLOW | dp.READ | dp.FLOW_VALUE, 8, 40, 64).close()
    # a table made before its NF declared the flag (an upgrade) is the same table, and learns it
    dp.StateTable(d, "n", "old", dp.PER_FLOW | dp.READ, 8, 40, 64).close()
    t = dp.StateTable(d, "n", "old", dp.PER_FLOW | dp.READ | dp.FLOW_VALUE, 8, 40, 64)
    assert t.info["flags"] == dp.PER_FLOW | dp.READ | dp.FLOW_VALUE
    t.close()
    with pytest.raises(FileExistsError, match="exists with flags"):
        dp.StateTable(d, "n", "old", dp.PER_FLOW | dp.WRITE | dp.FLOW_VALUE, 8, 40, 64)


def non_ip_key() -> bytes:
    return bytes(38) + b"\x00\x00"               # family 0: no slot (-1)


@pytest.fixture
def nat_like(tmp_path):
    """FW-like "flows" keyed by flow and a NAT-like "in" keyed by a port whose value is its
    flow (SERPENS_FLOW_VALUE), 300 flows and a key that is no IP flow."""
    d = str(tmp_path / "s")
    flows = dp.StateTable(d, "s.fw", "flows", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 8, 4096)
    rev = dp.StateTable(d, "s.nat", "in", dp.PER_FLOW | dp.FLOW_VALUE | dp.READ | dp.WRITE,
                        8, 40, 4096)
    for f in range(300):
        flows.put(flow_key(f), struct.pack("<Q", f))
        rev.put(struct.pack("<Q", 7000 + f), flow_key(f))
    flows.put(non_ip_key(), bytes(8))
    flows.close()
    rev.close()
    return d


def test_a_move_in_waves_takes_each_entry_once_as_it_is_when_its_wave_comes(nat_like):
    from serpens.controller.moves import waves
    state = StateManager(nat_like)
    tables = peer_moves.per_flow_tables(state, {"s.fw": "fw", "s.nat": "nat"})
    snap = peer_moves.Snapshot(state, tables, 3)
    assert snap.entries == 601
    flows = state.open("s.fw", "flows")
    rev = state.open("s.nat", "in")
    flows.put(flow_key(7), struct.pack("<Q", 777))          # changed since the snapshot
    flows.delete(flow_key(8))                               # gone since
    rev.delete(struct.pack("<Q", 7008))
    flows.put(flow_key(400), struct.pack("<Q", 400))        # new since
    rev.put(struct.pack("<Q", 7400), flow_key(400))
    slot = dict(zip(range(1000), dp.gateway_flow_slots(3, b"".join(flow_key(f)
                                                                   for f in range(1000)))))
    taken = {"flows": {}, "in": {}}
    for n, wave in enumerate(waves(None, 512)):
        for nf, ns, name, info, keys, values in snap.taking(wave):
            ks, vs = info["key_size"], info["value_size"]
            for i in range(len(keys) // ks):
                key, value = keys[ks * i:ks * (i + 1)], values[vs * i:vs * (i + 1)]
                assert key not in taken[name], "taken twice"
                taken[name][key] = value
                flow = key if name == "flows" else value
                if wave is not None:
                    assert dp.gateway_flow_slots(3, flow)[0] in wave
            peer_moves.delete(state, ns, name, keys)        # as the source does
        if wave is not None:
            snap.took(wave)
        if n == 0:   # a new flow in a slot already taken: still here, taken by the last wave
            late = next(f for f in range(500, 1000) if slot[f] in wave)
            flows.put(flow_key(late), struct.pack("<Q", late))
    want = {flow_key(f) for f in range(300) if f != 8} | {flow_key(400), flow_key(late),
                                                          non_ip_key()}
    assert set(taken["flows"]) == want
    assert taken["flows"][flow_key(7)] == struct.pack("<Q", 777)
    assert set(taken["in"].values()) == {flow_key(f) for f in range(300) if f != 8} | \
        {flow_key(400)}
    assert len(flows) == 0 and len(rev) == 0
    flows.close()
    rev.close()
    snap.close()


def test_a_wave_reads_its_tables_whole_when_their_log_forgot_inserts(nat_like):
    state = StateManager(nat_like)
    tables = peer_moves.per_flow_tables(state, {"s.fw": "fw"})
    snap = peer_moves.Snapshot(state, tables, 3)
    flows = state.open("s.fw", "flows")
    for f in range(1000, 1000 + dp.TABLE_LOG + 10):
        flows.put(flow_key(f), bytes(8))
    flows.close()
    ((*_, keys, _),) = snap.taking(None)
    assert len(keys) // 40 == 301 + dp.TABLE_LOG + 10
    snap.close()


def test_a_wave_refuses_a_table_made_again_since_the_snapshot(nat_like):
    state = StateManager(nat_like)
    snap = peer_moves.Snapshot(state, peer_moves.per_flow_tables(state, {"s.fw": "fw"}), 3)
    path = state.path("s.fw", "flows")
    os.unlink(path)              # its SFC restarted: a new, empty table of the same name
    dp.StateTable(nat_like, "s.fw", "flows", dp.PER_FLOW | dp.READ | dp.WRITE, 40, 8,
                  4096).close()
    with pytest.raises(peer_moves.MoveRefused, match="table flows of NF fw was removed or "
                                                     "made again"):
        snap.taking([1, 2])
    snap.close()


def _taken_keys(moving, name):
    for _, _, table, info, keys, _ in moving:
        if table == name:
            return {keys[i:i + info["key_size"]] for i in range(0, len(keys), info["key_size"])}
    return set()


def test_a_wave_that_did_not_move_is_taken_by_the_last_one(nat_like):
    from serpens.controller.moves import waves
    state = StateManager(nat_like)
    snap = peer_moves.Snapshot(state, peer_moves.per_flow_tables(state, {"s.fw": "fw"}), 3)
    first = waves(None, 512)[0]
    failed = _taken_keys(snap.taking(first), "flows")   # its transfer failed: no took()
    assert failed and _taken_keys(snap.taking(None), "flows") >= failed
    snap.close()


def test_after_the_log_overflowed_a_wave_reads_again_and_the_last_takes_the_new_flows(nat_like):
    from serpens.controller.moves import waves
    state = StateManager(nat_like)
    snap = peer_moves.Snapshot(state, peer_moves.per_flow_tables(state, {"s.fw": "fw"}), 3)
    plan = waves(None, 1024)
    flows = state.open("s.fw", "flows")
    moved = _taken_keys(snap.taking(plan[0]), "flows")
    flows.delete_many(b"".join(moved))
    snap.took(plan[0])
    slots = dp.gateway_flow_slots(3, b"".join(flow_key(f) for f in range(1000, 2000)))
    new = [flow_key(1000 + i) for i, s in enumerate(slots)][:dp.TABLE_LOG + 20]
    for key in new:          # new flows, some in the slots moved already: still here
        flows.put(key, bytes(8))
    second = _taken_keys(snap.taking(plan[1]), "flows")   # overflowed: read again
    flows.delete_many(b"".join(second))
    snap.took(plan[1])
    last = _taken_keys(snap.taking(None), "flows")
    want = {k for k, _ in flows.items()}
    assert last == want and set(new) - second <= last and not moved & last
    flows.close()
    snap.close()


def test_a_table_kept_open_still_refuses_another_shape(tmp_path):
    d = str(tmp_path)
    info = {"flags": dp.PER_FLOW | dp.READ | dp.WRITE, "key_size": 40, "value_size": 8,
            "capacity": 4096}
    cache = peer_moves.OpenTables()
    assert peer_moves.insert(d, "s.fw", "flows", info, [flow_key(1)], [bytes(8)],
                             tables=cache) == 1
    with pytest.raises(peer_moves.MoveRefused, match="capacity 4096 .asked 0xd 40 8 65536"):
        peer_moves.insert(d, "s.fw", "flows", dict(info, capacity=65536), [flow_key(2)],
                          [bytes(8)], tables=cache)
    cache.close()
