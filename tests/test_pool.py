"""The process pool: real DPDK secondaries that map NF images, run, stop, and are replaced
when they die."""
import os
import signal
import time

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent.process_pool import InstanceStart, PoolError, ProcessPool, owns_cpu
from serpens.runtime_cy import _dataplane as dp
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane


def udp(payload: bytes, sport=1000) -> bytes:
    return bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53) / payload)


def mapped_at(pid: int, base: int) -> list:
    """Lines of /proc/pid/maps for mappings starting at `base`."""
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if int(line.split("-")[0], 16) == base]


def test_same_image_same_address_in_two_processes(pool, build):
    image = build("pass.c")
    sfc = compile_sfc(NF(image))
    with PacketHarness(pool, sfc) as h1, PacketHarness(pool, sfc) as h2:
        assert h1.process.pid != h2.process.pid
        r1 = h1.run([udp(b"one")] * 64)
        r2 = h2.run([udp(b"two")] * 64)
        assert all(r.verdict == "out" for r in r1 + r2)
        for h in (h1, h2):
            maps = mapped_at(h.process.pid, image.base)
            assert maps and "r-xs" in maps[0] and "memfd:" in maps[0]  # text shared
        assert h1.nf_counters()[0]["counters"]["seen"] == 64
        assert h2.nf_counters()[0]["counters"]["seen"] == 64


def test_stop_returns_the_process_and_unmaps(pool, build):
    image = build("pass.c")
    h = PacketHarness(pool, compile_sfc(NF(image))).start()
    pid = h.process.pid
    h.run([udp(b"x")])
    idle_before_stop = pool.idle_count()
    h.close()
    assert pool.idle_count() == idle_before_stop + 1
    assert mapped_at(pid, image.base) == []


def test_init_failure_is_reported_and_the_process_stays_usable(pool, build):
    bad = compile_sfc(NF(build("mark.c"), config=b""))  # mark needs 2 config bytes
    idle = pool.idle_count()
    with pytest.raises(PoolError, match=r"init\(\) returned -22"):
        PacketHarness(pool, bad).start()
    assert pool.idle_count() == idle
    with PacketHarness(pool, compile_sfc(NF(build("pass.c")))) as h:
        assert h.run([udp(b"ok")])[0].verdict == "out"


class _NoSuchLoader(InstanceStart):
    """Images sent as the engine sends them, but a load mode no loader serves."""

    def command(self, sfc):
        fds, fields = super().command(sfc)
        return fds, {**fields, "load_mode": 3}


def memfds(pid: int) -> int:
    return sum("memfd:" in os.readlink(f"/proc/{pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{pid}/fd"))


def test_a_start_no_loader_serves_is_refused_and_the_process_stays_usable(pool, build):
    sfc = compile_sfc(NF(build("pass.c")))
    proc = next(p for p in pool.processes() if p.instance_id == 0 and not p.dead)
    before = memfds(proc.pid)
    rx, tx = dp.Ring(f"noload_rx{os.getpid()}", 64), dp.Ring(f"noload_tx{os.getpid()}", 64)
    try:
        with pytest.raises(PoolError, match="no loader for load mode 3"):
            pool.start_instance(sfc, rx, tx, process=proc, how=_NoSuchLoader())
    finally:
        rx.free()
        tx.free()
    assert memfds(proc.pid) == before  # the image memfds that came with it were closed
    with PacketHarness(pool, sfc) as h:
        assert [r.verdict for r in h.run([udp(b"x")] * 8)] == ["out"] * 8


def test_sleeping_instance_is_woken_by_new_packets(pool, build):
    with PacketHarness(pool, compile_sfc(NF(build("pass.c")))) as h:
        h.run([udp(b"a")])
        time.sleep(0.05)  # well past idle_us: the instance sleeps on its eventfd
        assert h.process.ctl.sleeping == 1
        wakeups = h.stats()["wakeups"]
        assert h.run([udp(b"b")])[0].verdict == "out"
        assert h.stats()["wakeups"] > wakeups


class SmallRings(PacketHarness):
    RING_SIZE = 64


def test_packets_come_back_once_and_in_order_through_full_small_rings(pool, build):
    """An instance's ring ends remember what they last saw of the router's side (ring_end.h).
    Over rings of 64, 50 laps, both rings kept full (the TX ring read 16 at a time, the RX
    ring refilled whenever it has room), every packet comes back once, in order."""
    frame = udp(b"\0\0\0\0")
    frames = [frame[:-4] + i.to_bytes(4, "big") for i in range(3200)]
    got, sent, full_seen = [], 0, 0
    with SmallRings(pool, compile_sfc(NF(build("pass.c")))) as h:
        before = h.stats()["rx_pkts"]  # (the process's count: it may have run others)
        deadline = time.monotonic() + 20
        while len(got) < len(frames) and time.monotonic() < deadline:
            if sent < len(frames):
                sent += dp.push(h.rx, pool.dataplane.mempool, frames[sent:sent + 64])
                h.process.wake()
            full_seen += h.tx.count() == SmallRings.RING_SIZE - 1
            got += dp.pull(h.tx, 16)
        assert h.stats()["rx_pkts"] - before == len(frames)
    assert [data for _, data in got] == frames
    assert {label for label, _ in got} == {dp.LABEL_OUT}
    assert full_seen  # the instance waited for room, as it does behind a slow router


def eventfd_count(fd: int) -> int:
    """The counter of eventfd `fd` (writes not yet read), without reading it."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("eventfd-count:"))


def stop_process(pid: int):
    """SIGSTOP pid and wait until it is stopped (the signal lands asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")


def test_a_sleep_is_woken_once_however_often_producers_call(pool, build):
    with PacketHarness(pool, compile_sfc(NF(build("pass.c")))) as h:
        h.run([udp(b"a")])
        wait_for(lambda: h.process.ctl.sleeping)
        stop_process(h.process.pid)  # it stays in this one sleep
        try:
            assert sum(h.process.wake() for _ in range(1000)) == 1
            assert eventfd_count(h.process.efd) == 1
        finally:
            os.kill(h.process.pid, signal.SIGCONT)
        # It ran (nothing to do) and sleeps again: a new sleep, woken by the next packet.
        wait_for(lambda: eventfd_count(h.process.efd) == 0 and h.process.ctl.sleeping)
        assert h.run([udp(b"b")])[0].verdict == "out"


def test_only_an_instance_alone_on_its_cpu_may_spin(pool, build):
    assert owns_cpu({0}, [{1}], router={2})
    assert not owns_cpu({0}, [{0, 1}], router={2})  # another instance may run there
    assert not owns_cpu({0}, [], router={0})         # the router's CPU
    assert not owns_cpu({0, 1}, [], router={2})      # not pinned: it shares what it gets
    with PacketHarness(pool, compile_sfc(NF(build("pass.c")))) as h:
        pool.pin(h.process, 0)  # the test dataplane's router may use every CPU
        assert not h.process.ctl.own_cpu
        h.process.ctl.own_cpu = True  # spinning on a full ring changes no packet
        assert [r.verdict for r in h.run([udp(b"x")] * 3000)] == ["out"] * 3000
    assert not h._ctl.own_cpu  # stopped: the flag is cleared with the instance


@pytest.fixture
def crash_pool(dataplane):
    crashed = []
    with ProcessPool(dataplane, 2, first_lcore=20,
                     on_crash=lambda p, inst: crashed.append((p.pid, inst))) as p:
        p.crashed = crashed
        yield p


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_nf_crash_is_detected_and_the_pool_refills(crash_pool, build, dataplane):
    free_before = dataplane.mempool.available()
    survivor = PacketHarness(crash_pool, compile_sfc(NF(build("pass.c")))).start()
    victim = PacketHarness(crash_pool, compile_sfc(NF(build("crash.c")))).start()
    victim_pid = victim.process.pid
    with pytest.raises(RuntimeError, match="died"):
        victim.run([udp(b"K")] * 8, timeout=10)
    wait_for(lambda: crash_pool.crashed)
    assert crash_pool.crashed[0][0] == victim_pid
    wait_for(lambda: crash_pool.idle_count() == 1)  # a replacement attached
    assert len(crash_pool.processes()) == 2
    # The other instance never noticed.
    assert all(r.verdict == "out" for r in survivor.run([udp(b"still here")] * 100))
    victim.close()
    survivor.close()
    assert dataplane.mempool.available() == free_before  # in-flight mbufs were recovered


def test_killing_a_process_mid_batch_leaks_no_mbuf(crash_pool, build, dataplane):
    free_before = dataplane.mempool.available()
    h = PacketHarness(crash_pool, compile_sfc(NF(build("crash.c")))).start()
    dp.push(h.rx, dataplane.mempool, [udp(b"S", sport=i) for i in range(64)])
    h.process.wake()
    wait_for(lambda: h.rx.count() < 64, 5)
    time.sleep(0.005)  # the NF spins 2 ms per packet: it is mid-batch now
    os.kill(h.process.pid, signal.SIGKILL)
    wait_for(lambda: crash_pool.crashed)
    wait_for(lambda: crash_pool.idle_count() == 2)
    h.process = None  # it died; nothing to stop
    h.close()         # frees what was left in the rings
    assert dataplane.mempool.available() == free_before


def killing_spawns(pool: ProcessPool, how_many: int):
    """Make pool's next `how_many` spawns exit at once (SIGKILL before the interpreter
    starts: nowhere near DPDK's attach, whose locks a kill there would leave taken)."""
    spawn, left = pool._spawn, [how_many]

    def spawn_and_kill():
        p = spawn()
        if left[0] > 0:
            left[0] -= 1
            p.proc.kill()
        return p
    pool._spawn = spawn_and_kill


def test_a_process_that_exits_while_booting_is_replaced_at_start(dataplane):
    """An attach can fail once (CI saw DPDK's lock of the hugepage directory interrupted):
    start() replaces a process that exits while booting, and fails, naming the exit, only
    when every try does."""
    p = ProcessPool(dataplane, 1, first_lcore=40)
    killing_spawns(p, 1)
    with p:
        assert p.idle_count() == 1
    p = ProcessPool(dataplane, 1, first_lcore=40)
    killing_spawns(p, 3)
    with pytest.raises(PoolError, match="exited with -9 while booting"):
        p.start()
    p.close()
