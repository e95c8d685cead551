"""State tables: shared memory files that outlive instances (paper §III-B, Fig. 8)."""
import errno
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent.state_manager import StateError, StateManager
from serpens.bench.baselines import RedisState
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane

PF = dp.PER_FLOW | dp.READ | dp.WRITE


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


def test_put_get_delete(state_dir):
    t = dp.StateTable(state_dir, "nf", "t", PF, 8, 16, 100)
    t.put(b"k" * 8, b"v" * 16)
    assert t.get(b"k" * 8) == b"v" * 16
    t.put(b"k" * 8, b"w" * 16)  # overwrite in place
    assert t.get(b"k" * 8) == b"w" * 16 and len(t) == 1
    t.delete(b"k" * 8)
    assert t.get(b"k" * 8) is None and len(t) == 0
    with pytest.raises(OSError) as e:
        t.delete(b"k" * 8)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("key_size", [4, 12, 13, 20, 40])
def test_keys_that_differ_only_in_their_last_byte_are_distinct(state_dir, key_size):
    t = dp.StateTable(state_dir, "nf", f"k{key_size}", PF, key_size, 8, 600)
    keys = [bytes(key_size - 1) + bytes([b]) for b in range(256)] + \
        [bytes([b]) + bytes(key_size - 1) for b in range(1, 256)]
    for n, key in enumerate(keys):
        t.put(key, struct.pack("<Q", n))
    assert [t.get(key) for key in keys] == [struct.pack("<Q", n) for n in range(len(keys))]
    t.close()


def test_full_table_refuses_and_keeps_entries(state_dir):
    t = dp.StateTable(state_dir, "nf", "small", PF, 4, 4, 10)
    for i in range(10):
        t.put(struct.pack("<I", i), struct.pack("<I", i * 7))
    with pytest.raises(OSError) as e:
        t.put(struct.pack("<I", 99), b"xxxx")
    assert e.value.errno == errno.ENOSPC
    assert all(t.get(struct.pack("<I", i)) == struct.pack("<I", i * 7) for i in range(10))
    t.delete(struct.pack("<I", 3))  # room again
    t.put(struct.pack("<I", 99), b"xxxx")


@pytest.mark.parametrize("flags", [
    dp.GLOBAL | dp.WRITE,                                # global/write needs a consistency
    dp.GLOBAL | dp.WRITE | dp.RELEASE | dp.EVENTUAL,     # ... exactly one
    dp.PER_FLOW | dp.WRITE | dp.RELEASE,                 # consistency only for global/write
    dp.PER_FLOW | dp.GLOBAL | dp.READ,
    dp.GLOBAL,                                           # neither read nor write
])
def test_bad_flags_are_refused(state_dir, flags):
    with pytest.raises(OSError) as e:
        dp.StateTable(state_dir, "nf", "bad", flags, 4, 4, 4)
    assert e.value.errno == errno.EINVAL


def test_reopen_with_other_shape_is_refused_by_name(state_dir):
    dp.StateTable(state_dir, "nf", "t", PF, 8, 8, 10).close()
    with pytest.raises(OSError, match="exists with flags"):
        dp.StateTable(state_dir, "nf", "t", PF, 8, 16, 10)


def test_global_entries_cannot_be_deleted(state_dir):
    t = dp.StateTable(state_dir, "nf", "g", dp.GLOBAL | dp.WRITE | dp.EVENTUAL, 4, 8, 4)
    t.put(b"aaaa", bytes(8))
    with pytest.raises(OSError) as e:
        t.delete(b"aaaa")
    assert e.value.errno == errno.EPERM


WRITER = """
import struct, sys
from serpens.runtime_cy import _dataplane as dp
t = dp.StateTable(sys.argv[1], "nf", "shared", {flags}, 8, 8, 20000)
base = int(sys.argv[2])
for i in range(base, base + 5000):
    t.put(struct.pack("<Q", i), struct.pack("<Q", i * 3))
"""


def test_concurrent_writers_in_two_processes(state_dir):
    code = WRITER.format(flags=PF)
    procs = [subprocess.Popen([sys.executable, "-c", code, state_dir, str(b)])
             for b in (0, 100000)]
    assert [p.wait(60) for p in procs] == [0, 0]
    t = dp.StateTable(state_dir, "nf", "shared")
    assert len(t) == 10000
    items = dict(t.items())
    assert len(items) == 10000
    assert all(struct.unpack("<Q", v)[0] == struct.unpack("<Q", k)[0] * 3 for k, v in items.items())


def test_an_nf_s_state_moves_to_another_node(state_dir, tmp_path):
    t = dp.StateTable(state_dir, "nat", "map", PF, 4, 4, 64)
    t.put(b"key1", b"val1")
    sm = StateManager(state_dir)
    assert sm.tables() == [("nat", "map")]
    snap = sm.read_nf("nat")
    t.put(b"key1", b"new!")
    t.close()
    other = StateManager(str(tmp_path / "other-node"))  # no state dir yet
    other.replace_nf("nat", snap)
    assert other.open("nat", "map").get(b"key1") == b"val1"
    with pytest.raises(StateError, match="not a Serpens state table"):
        other.replace_nf("nat", [("map", b"not a table" * 100)])
    assert other.open("nat", "map").get(b"key1") == b"val1"  # a bad restore changes nothing


@pytest.mark.parametrize("fs", ["/dev/shm", "/dev/hugepages"])
def test_all_of_an_nf_s_tables_are_read_and_replaced_whole(fs, tmp_path):
    if not os.path.ismount(fs):
        pytest.skip(f"{fs} is not mounted")

    with tempfile.TemporaryDirectory(prefix="serpens-test-", dir=fs) as state_dir:
        sm = StateManager(state_dir)
        flows = dp.StateTable(state_dir, "mon", "flows", PF, 4, 8, 64)
        flows.put(b"key1", b"8 bytes!")
        replica = dp.StateTable(state_dir, "mon", "hosts@r1", PF, 4, 8, 64)
        replica.put(b"host", b"unmerged")
        dp.StateTable(state_dir, "nat", "map", PF, 4, 4, 64).put(b"nat1", b"kept")
        snap = sm.read_nf("mon")
        assert [name for name, _ in snap] == ["flows", "hosts@r1"]
        flows.put(b"key1", b"changed!")
        dp.StateTable(state_dir, "mon", "later", PF, 4, 4, 64).close()
        sm.replace_nf("mon", snap)
        assert sorted(t for nf, t in sm.tables() if nf == "mon") == ["flows", "hosts@r1"]
        assert sm.open("mon", "flows").get(b"key1") == b"8 bytes!"
        assert sm.open("mon", "hosts@r1").get(b"host") == b"unmerged"
        assert sm.open("nat", "map").get(b"nat1") == b"kept"  # other NFs untouched
        for bad, why in ((("flows", b"junk" * 100), "not a Serpens state table"),
                         (("../x", snap[0][1]), "bad table name"),
                         (("flows", snap[0][1][:4096]), "flows")):  # cut short
            with pytest.raises(StateError, match=why):
                sm.replace_nf("mon", [snap[1], bad])
            assert sm.open("mon", "flows").get(b"key1") == b"8 bytes!"  # nothing changed
        assert sorted(t for nf, t in sm.tables() if nf == "mon") == ["flows", "hosts@r1"]
        other_shape = tempfile.TemporaryDirectory(prefix="serpens-test-", dir=fs)
        dp.StateTable(other_shape.name, "x", "flows", PF, 4, 16, 64).close()
        wrong = StateManager(other_shape.name).read_nf("x")
        crafted = bytearray(snap[0][1])
        struct.pack_into("<I", crafted, 36, 4096)  # slot_size: slots past the file's end
        for tables, why in (([], "no tables"), ([snap[0], snap[0]], "twice"),
                            (wrong, "another shape"), ([("flows", bytes(crafted))],
                                                       "inconsistent header")):
            with pytest.raises(StateError, match=why):
                sm.replace_nf("mon", tables)
        assert sm.open("mon", "flows").get(b"key1") == b"8 bytes!"
        other_shape.cleanup()
        flows.close()
        replica.close()


def udp(sport):
    return bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53) / b"x")


def test_state_outlives_instances_and_is_shared(pool, build, dataplane):
    sfc = compile_sfc(NF(build("stateful.c"), name="stateful-shared"))
    frames = [udp(1000 + i % 10) for i in range(100)]
    with PacketHarness(pool, sfc) as h:
        assert all(r.verdict == "out" for r in h.run(frames))
        first = h.nf_counters()[0]["counters"]
    assert first["new_flows"] == 10 and first["ro_refused"] >= 1
    # Every instance stopped (scale to zero): a new instance continues the same state.
    with PacketHarness(pool, sfc) as h:
        h.run(frames)
        assert h.nf_counters()[0]["counters"].get("new_flows", 0) == 0
    sm = StateManager(dataplane.config.state_dir)
    assert ("stateful-shared", "flows") in sm.tables()
    flows = sm.open("stateful-shared", "flows")
    assert len(flows) == 10
    assert sorted(struct.unpack("<Q", v)[0] for _, v in flows.items()) == [20] * 10
    total = sm.open("stateful-shared", "total").items()
    assert struct.unpack("<Q", total[0][1][:8])[0] == 200


def test_two_instances_share_a_global_counter(pool, build, dataplane):
    sfc_a = compile_sfc(NF(build("stateful.c", copy=1), name="stateful-two"))
    sfc_b = compile_sfc(NF(build("stateful.c", copy=2), name="stateful-two"))
    with PacketHarness(pool, sfc_a) as a, PacketHarness(pool, sfc_b) as b:
        for _ in range(5):
            a.run([udp(1)] * 64)
            b.run([udp(2)] * 64)
    total = StateManager(dataplane.config.state_dir).open("stateful-two", "total").items()
    assert struct.unpack("<Q", total[0][1][:8])[0] == 640


def test_init_failure_on_mismatched_table_is_reported(pool, build, dataplane):
    dp.StateTable(dataplane.config.state_dir, "stateful-clash", "flows", PF, 40, 16, 1024).close()
    from serpens.agent.process_pool import PoolError
    with pytest.raises(PoolError, match="init"):
        PacketHarness(pool, compile_sfc(NF(build("stateful.c", copy=3),
                                           name="stateful-clash"))).start()


def test_batched_lookup_cost_is_measurable(state_dir):
    """Not a speed test: the bench reports get_ns; here the helper must count every hit."""
    t = dp.StateTable(state_dir, "nf", "big", PF, 8, 8, 4096)
    keys = [struct.pack("<Q", i) for i in range(4096)]
    for k in keys:
        t.put(k, k)
    ns, found = t.bench_get_ns(keys, rounds=2)
    assert found == 4096 * 2 and ns > 0


@pytest.mark.parametrize("key_size", [40, 20, 8, 4, 13])  # specialized sizes, and another
def test_bulk_lookups_answer_as_single_ones(state_dir, key_size):
    """The bulk lookup (hashes, prefetches, then each key at its home slot or probed
    further) on a table at its load factor with deleted slots: every answer of a batch,
    present, absent, repeated or deleted, is the single lookup's (whose hash and compare are
    the generic ones)."""
    import random
    rng = random.Random(18)
    t = dp.StateTable(state_dir, "nf", "staged", PF, key_size, 16, 3000)  # 4096 slots, 3/4
    keys = list({rng.randbytes(key_size): 0 for _ in range(3000)})
    for k in keys:
        t.put(k, (k * 4)[:16])
    for k in keys[::7]:
        t.delete(k)
    probe = keys + [rng.randbytes(key_size) for _ in range(600)]
    batches = 0
    for _ in range(400):
        batch = [rng.choice(probe) for _ in range(rng.randint(1, 32))]
        assert t.get_bulk(batch) == [t.get(k) for k in batch]
        batches += 1
    assert batches == 400 and t.get_bulk([keys[1]]) == [(keys[1] * 4)[:16]]


def test_tables_of_the_unpadded_layout_still_open(state_dir):
    """Layout version 2 pads 33-63-byte slots to a cache line; a version 1 table (56-byte
    slots for a 40-byte key and an 8-byte value), made before, opens as it is and keeps its
    entries, through the runtime and the state manager; a header that mixes the two is
    refused."""
    t = dp.StateTable(state_dir, "old", "t", PF, 40, 8, 100)
    t.close()
    path = os.path.join(state_dir, "old", "t.tbl")
    with open(path, "r+b") as f:
        header = bytearray(f.read(40))
        assert struct.unpack_from("<I", header, 8)[0] == 2
        assert struct.unpack_from("<I", header, 36)[0] == 64  # 8 + 40 + 8, padded
        struct.pack_into("<I", header, 8, 1)    # version 1: the slots were 56 bytes
        struct.pack_into("<I", header, 36, 56)
        f.seek(0)
        f.write(header)
    old = dp.StateTable(state_dir, "old", "t", PF, 40, 8, 100)
    keys = [bytes([i]) * 40 for i in range(1, 60)]
    for i, k in enumerate(keys):
        old.put(k, struct.pack("<Q", i))
    old.close()
    old = dp.StateTable(state_dir, "old", "t", PF, 40, 8, 100)
    assert old.get_bulk(keys[:32]) == [struct.pack("<Q", i) for i in range(32)]
    assert {k: v for k, v in old.items()} == {k: struct.pack("<Q", i) for i, k in enumerate(keys)}
    old.close()
    sm = StateManager(state_dir)
    snap = sm.read_nf("old")
    sm.replace_nf("old", snap)  # the state manager's check knows version 1
    assert sm.open("old", "t").get(keys[5]) == struct.pack("<Q", 5)
    mixed = bytearray(snap[0][1])
    struct.pack_into("<I", mixed, 8, 2)  # version 2 with 56-byte slots
    with pytest.raises(StateError, match="inconsistent header"):
        sm.replace_nf("old", [("t", bytes(mixed))])


def host_counts(state_dir, nf):
    return {k: struct.unpack("<Q", v)[0]
            for k, v in StateManager(state_dir).open(nf, "hosts").items()}


def src(ip_last, sport=1):
    return bytes(eth() / IP(src=f"10.1.0.{ip_last}", dst="10.0.0.2") / UDP(sport=sport) / b"x")


def test_eventual_replicas_merge_to_exact_totals(pool, build, dataplane):
    state_dir = dataplane.config.state_dir
    sfc_a = compile_sfc(NF(build("stateful.c", copy=4), name="stateful-ev"))
    sfc_b = compile_sfc(NF(build("stateful.c", copy=5), name="stateful-ev"))
    with PacketHarness(pool, sfc_a) as a, PacketHarness(pool, sfc_b) as b:
        for _ in range(4):
            a.run([src(i % 3) for i in range(90)])
            b.run([src(i % 3) for i in range(60)])
        # While both run, the shared table catches up within a few merge periods.
        deadline = time.monotonic() + 5
        while sum(host_counts(state_dir, "stateful-ev").values()) != 600:
            assert time.monotonic() < deadline, host_counts(state_dir, "stateful-ev")
            time.sleep(0.01)
    counts = host_counts(state_dir, "stateful-ev")
    assert counts == {bytes([10, 1, 0, i]): 200 for i in range(3)}


def test_a_merge_request_brings_an_awake_instance_s_counts_in_at_once(dataplane, build):
    """Replicas merge every 100 ms, checked after a batch: an instance that got no batch
    since holds its counts until asked (or until it sleeps; this pool's sleep after 30 s)."""
    from serpens.agent.process_pool import ProcessPool, merge_state
    state_dir = dataplane.config.state_dir
    with ProcessPool(dataplane, 1, first_lcore=60, idle_us=30_000_000) as awake:
        sfc = compile_sfc(NF(build("stateful.c", copy=6), name="stateful-merge"))
        with PacketHarness(awake, sfc) as h:
            h.run([src(i % 3) for i in range(90)])  # three batches, within one period
            time.sleep(0.15)
            assert sum(host_counts(state_dir, "stateful-merge").values()) < 90
            merge_state([h.process])
            assert host_counts(state_dir, "stateful-merge") == {
                bytes([10, 1, 0, i]): 30 for i in range(3)}
            merge_state([h.process])  # nothing new: the same totals
            assert sum(host_counts(state_dir, "stateful-merge").values()) == 90


def budget_nf(build, copy, name, tokens):
    return compile_sfc(NF(build("budget.c", copy=copy), config=struct.pack("<Q", tokens),
                          name=name))


def pool_value(state_dir, nf):
    return struct.unpack("<Q", StateManager(state_dir).open(nf, "tokens").items()[0][1])[0]


def test_release_share_never_overspends(pool, build, dataplane):
    with PacketHarness(pool, budget_nf(build, 1, "budget-one", 100)) as h:
        verdicts = [r.verdict for r in h.run([udp(1)] * 150)]
    assert verdicts.count("out") == 100 and verdicts[:100] == ["out"] * 100
    assert pool_value(dataplane.config.state_dir, "budget-one") == 0
    with PacketHarness(pool, budget_nf(build, 1, "budget-one", 100)) as h:  # state persists
        assert all(r.verdict == "drop" for r in h.run([udp(1)] * 10))


def test_release_rebalances_between_instances(pool, build, dataplane):
    a_sfc = budget_nf(build, 2, "budget-two", 1000)
    b_sfc = budget_nf(build, 3, "budget-two", 1000)
    passed = 0
    with PacketHarness(pool, a_sfc) as a, PacketHarness(pool, b_sfc) as b:
        for _ in range(30):
            passed += sum(r.verdict == "out" for r in a.run([udp(1)] * 40))
            passed += sum(r.verdict == "out" for r in b.run([udp(2)] * 40))
        counters = [a.nf_counters()[0]["counters"], b.nf_counters()[0]["counters"]]
    assert passed == 1000  # every token spent once: never more, and none stranded in a share
    assert sum(c.get("triggers", 0) for c in counters) > 0
    assert pool_value(dataplane.config.state_dir, "budget-two") == 0


def test_redis_backend_runs_the_same_nf(dataplane, build, redis_server):
    """The baselines' backend: the same NF binary keeps its state in Redis (in a pool whose
    sandbox lets it reach the network: node pools never do)."""
    import redis
    from serpens.agent.process_pool import ProcessPool

    r = redis.Redis(unix_socket_path=redis_server.socket)
    frames = [udp(2000 + i % 7) for i in range(70)]
    sfc = compile_sfc(NF(build("stateful.c", copy=6), name="stateful-redis"))
    with ProcessPool(dataplane, 1, sandbox="network") as pool:
        h = PacketHarness(pool, sfc)
        h.process = pool.start_instance(sfc, h.rx, h.tx,
                                        how=RedisState(dp.STATE_REDIS, redis_server.socket))
        try:
            assert all(res.verdict == "out" for res in h.run(frames))
            counters = h.nf_counters()[0]["counters"]
        finally:
            h.close()
    assert counters["new_flows"] == 7
    flows = [k for k in r.keys(b"stateful-redis/flows/*")]
    assert len(flows) == 7
    assert sorted(struct.unpack("<Q", r.get(k))[0] for k in flows) == [10] * 7
    assert int(r.get(b"stateful-redis/total/" + struct.pack("<I", 0x616c6c) + b"#")) == 70


def test_a_redis_baseline_that_loses_its_store_says_so(dataplane, build):
    """A baseline whose Redis went away runs on without state: the control block says why,
    and the benchmark refuses its figures (bench/state.py check_backend)."""
    from serpens.agent.process_pool import PoolError, ProcessPool
    from serpens.bench.baselines import RedisServer
    from serpens.bench.state import check_backend

    sfc = compile_sfc(NF(build("stateful.c", copy=7), name="stateful-lost"))
    with ProcessPool(dataplane, 1, sandbox="network") as pool:
        h = PacketHarness(pool, sfc)
        with pytest.raises(PoolError, match="redis at '/nonexistent/redis.sock'"):
            pool.start_instance(sfc, h.rx, h.tx,
                                how=RedisState(dp.STATE_REDIS, "/nonexistent/redis.sock"))
        with RedisServer() as redis:
            h.process = pool.start_instance(sfc, h.rx, h.tx,
                                            how=RedisState(dp.STATE_REDIS, redis.socket))
            h.run([udp(2000 + i % 7) for i in range(70)])
            assert h.process.ctl.state_error == ""
            check_backend(h.process, "stateful", "redis")
        try:  # the server is gone now
            h.run([udp(3000 + i) for i in range(40)])
            assert "redis at" in h.process.ctl.state_error
            with pytest.raises(RuntimeError, match="stateful with state in redis: redis at"):
                check_backend(h.process, "stateful", "redis")
        finally:
            h.close()


def test_release_timer_rebalances_a_busy_instance(pool, build, dataplane):
    """update on a timer: a busy instance gives its share back every period (the pool's
    epoch counts rebalances; idle instances give shares back without one)."""
    def epoch(nf):
        return StateManager(dataplane.config.state_dir).open(nf, "tokens").info["epoch"]

    for period_ns, name in ((0, "budget-untimed"), (5_000_000, "budget-timed")):
        config = struct.pack("<Q", 10**12) + (struct.pack("<Q", period_ns) if period_ns else b"")
        sfc = compile_sfc(NF(build("budget.c", copy=7 if period_ns else 8), config=config,
                             name=name))
        with PacketHarness(pool, sfc) as h:
            dp.drive(h.rx, h.tx, dataplane.mempool, [udp(1)], 0.3, h.process.ctl,
                     h.process.efd, warmup=0.0, rewrite=False)
        rebalances = epoch(name)
        assert (rebalances >= 10) if period_ns else (rebalances == 0), (name, rebalances)


DELETER = """
import struct, sys
from serpens.runtime_cy import _dataplane as dp
t = dp.StateTable(sys.argv[1], "nf", "race")
gone = 0
for i in range(20000):
    try:
        t.delete(struct.pack("<Q", i))
        gone += 1
    except OSError:
        pass
print(gone)
"""


def test_racing_deletes_count_once(state_dir):
    t = dp.StateTable(state_dir, "nf", "race", PF, 8, 8, 20000)
    for i in range(20000):
        t.put(struct.pack("<Q", i), bytes(8))
    procs = [subprocess.Popen([sys.executable, "-c", DELETER, state_dir], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    deleted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(deleted) == 20000 and len(t) == 0


class ScriptedRedis:
    """A Unix-socket server that answers the Redis backend's commands as Redis would, but
    MGET and SET with the replies a test gives: what a broken or hostile store sends."""

    def __init__(self, path, mget_element=b"$-1\r\n", set_reply=b"+OK\r\n"):
        import socket
        import threading

        self.path, self.mget_element, self.set_reply = path, mget_element, set_reply
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while chunk := conn.recv(65536):
                    buf += chunk
                    replies, buf = self._answer(buf)
                    conn.sendall(replies)

    def _answer(self, buf):
        """Replies to every whole command in buf, and what is left of it."""
        out = b""
        while True:
            args, rest = self._command(buf)
            if args is None:
                return out, buf
            buf, name = rest, args[0].upper()
            if name == b"MGET":
                out += b"*%d\r\n" % (len(args) - 1) + self.mget_element * (len(args) - 1)
            elif name == b"SET":
                out += self.set_reply
            else:  # INCRBY, DEL
                out += b":1\r\n"

    @staticmethod
    def _command(buf):
        if not buf.startswith(b"*") or b"\r\n" not in buf:
            return None, buf
        head, rest = buf.split(b"\r\n", 1)
        args = []
        for _ in range(int(head[1:])):
            if b"\r\n" not in rest:
                return None, buf
            size, rest = rest.split(b"\r\n", 1)
            n = int(size[1:])
            if len(rest) < n + 2:
                return None, buf
            args.append(rest[:n])
            rest = rest[n + 2:]
        return args, rest

    def close(self):
        import socket

        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.mark.parametrize("mget_element,set_reply,why", [
    (b":5\r\n", b"+OK\r\n", "an MGET element not a bulk string"),
    (b"$1x\r\n", b"+OK\r\n", "a reply with a malformed number"),
    (b"$" + b"1" * 19 + b"\r\n", b"+OK\r\n", "a reply with a malformed number"),
    (b"$-2\r\n", b"+OK\r\n", "a reply with a negative length"),
    (b"$-1\r\n", b"*1\r\n" * 10 + b"+OK\r\n", "a reply nested too deep"),
])
def test_a_redis_baseline_refuses_malformed_replies(dataplane, build, tmp_path, mget_element,
                                                    set_reply, why):
    """The Redis backend reads its store's replies strictly: a reply it cannot trust stops
    the state (the bench then fails the run) instead of being read as a value or a miss."""
    from serpens.agent.process_pool import ProcessPool

    sock_dir = tempfile.mkdtemp(prefix="sr-")  # short: the error quoting it has 128 bytes
    server = ScriptedRedis(os.path.join(sock_dir, "s"), mget_element, set_reply)
    sfc = compile_sfc(NF(build("stateful.c", copy=8), name="stateful-scripted"))
    try:
        with ProcessPool(dataplane, 1, sandbox="network") as pool:
            h = PacketHarness(pool, sfc)
            h.process = pool.start_instance(sfc, h.rx, h.tx,
                                            how=RedisState(dp.STATE_REDIS, server.path))
            try:
                h.run([udp(4000 + i % 7) for i in range(70)])
                assert why in h.process.ctl.state_error
            finally:
                h.close()
    finally:
        server.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
