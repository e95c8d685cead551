"""The pool process sandbox (runtime_cy/src/sandbox.c): pool processes run with no_new_privs,
no capabilities and a seccomp allow-list in every thread; an NF making a system call outside
it kills its process with SIGSYS before the call does anything; NFs within it run as before."""
import os
import signal
import time

import pytest
from scapy.layers.inet import IP, UDP

from serpens.agent.process_pool import ProcessPool
from serpens.runtime_cy.sfc import NF, compile_sfc

from support.harness import PacketHarness
from support.packets import eth

pytestmark = pytest.mark.dataplane


def udp(payload: bytes) -> bytes:
    return bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / payload)


def status(pid: int, tid: int | None = None) -> dict:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.fixture
def guarded_pool(dataplane):
    crashed = []
    with ProcessPool(dataplane, 1, first_lcore=90,
                     on_crash=lambda p, inst: crashed.append((p, inst))) as pool:
        pool.crashed = crashed
        yield pool


def test_every_thread_of_a_pool_process_is_confined(pool):
    pid = pool.processes()[0].pid
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(tids) >= 3  # the runtime, and DPDK's rte_mp_handle and interrupt threads
    for tid in tids:
        st = status(pid, tid)
        assert st["Seccomp"] == "2", f"thread {tid}"
        assert st["NoNewPrivs"] == "1"
        for caps in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
            assert int(st[caps], 16) == 0, f"{caps} of thread {tid}"


def test_an_nf_creating_a_file_dies_with_sigsys(guarded_pool, build, tmp_path):
    target = tmp_path / "created-by-nf"
    sfc = compile_sfc(NF(build("creat.c"), config=str(target).encode()))
    h = PacketHarness(guarded_pool, sfc).start()
    victim = h.process
    assert h.run([udp(b"fine")])[0].verdict == "out"  # the NF runs; only the call is refused
    with pytest.raises(RuntimeError, match="died"):
        h.run([udp(b"C")], timeout=5)
    victim.proc.wait(5)
    assert victim.proc.returncode == -signal.SIGSYS
    assert not target.exists()
    deadline = time.monotonic() + 10
    while not guarded_pool.crashed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guarded_pool.crashed and guarded_pool.crashed[0][0] is victim
    h.close()


def test_the_replacement_is_sandboxed_and_forwards(guarded_pool, build, tmp_path):
    first = guarded_pool.processes()[0]
    first.proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (guarded_pool.crashed and guarded_pool.idle_count()) and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh = guarded_pool.processes()[0]
    assert fresh.pid != first.pid and status(fresh.pid)["Seccomp"] == "2"
    with PacketHarness(guarded_pool, compile_sfc(NF(build("pass.c")))) as h:
        assert [r.verdict for r in h.run([udp(b"x")] * 64)] == ["out"] * 64


def test_sandbox_can_be_switched_off_for_benchmarks(dataplane, build):
    with ProcessPool(dataplane, 1, first_lcore=94, sandbox=False) as pool:
        st = status(pool.processes()[0].pid)
        assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "0"
        with PacketHarness(pool, compile_sfc(NF(build("pass.c")))) as h:
            assert h.run([udp(b"x")])[0].verdict == "out"
