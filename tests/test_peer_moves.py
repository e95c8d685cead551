"""The agents' part of moving flows (agent/peer_moves.py) on real state tables: the per-flow
tables of an SFC's NFs are found (not its global ones, not replicas), a partial move of a
table not keyed by flow is refused naming it, the moving entries are exactly those whose key
hashes into the slots, inserting makes a missing table with the source's shape and refuses
another shape, undo and delete leave nothing behind, and chunks stay under their bound."""
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
        peer_moves.check_partial([("lb", "web.lb", "conns", {"key_size": 12})], "web")
    peer_moves.check_partial([("mon", "web.mon", "flows", {"key_size": 40})], "web")


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
