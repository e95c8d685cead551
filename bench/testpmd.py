"""Baseline for the SFC benchmark: how fast plain DPDK moves the same traffic, with no NFs.

`testpmd_mpps` runs dpdk-testpmd in io forwarding mode (receive a burst, send it unchanged) on
one forwarding core, over the ports the router uses in the benchmark: net_pcap0 replaying a
capture endlessly (infinite_rx=1) into net_null0 (no-rx=1, discards everything sent). The rate
is therefore the ceiling that these virtual ports and one core allow, not a NIC's. It is the
rate of frames transmitted on port 1, over `seconds` after a warm-up, read from testpmd's own
"show port stats" counters and clock.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import threading
import time

PROMPT = b"testpmd> "


def _cpu_list(cpus: str) -> list[int]:
    out = []
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _pcap_frames(path: str) -> int | None:
    """Number of records in a classic pcap file; None if it is not one (e.g. pcapng)."""
    with open(path, "rb") as f:
        head = f.read(24)
        magic = head[:4]
        if len(head) < 24 or magic not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1",
                                           b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            return None
        order = "<" if magic[0] in (0xD4, 0x4D) else ">"
        n = 0
        while len(rec := f.read(16)) == 16:
            f.seek(struct.unpack(order + "8xI4x", rec)[0], os.SEEK_CUR)
            n += 1
        return n


def _cleanup(prefix: str) -> None:
    shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    for path in glob.glob(f"/dev/hugepages/{prefix}map_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


def testpmd_mpps(pcap_path: str, seconds: float = 3.0, file_prefix: str = "serpens-testpmd",
                 cpus: str = "0-1") -> dict:
    """Forwarding rate (Mpps) of dpdk-testpmd io mode, port 0 (pcap replay) -> port 1 (null).

    cpus: the first two CPUs carry testpmd's main lcore (idle at its prompt) and the one
    forwarding lcore. Returns {"mpps", "seconds" (the measured interval), "cmd"}.
    """
    cpu = _cpu_list(cpus)
    if len(cpu) < 2:
        raise ValueError(f"cpus={cpus!r}: need two CPUs (main + forwarding lcore)")
    if not os.path.isfile(pcap_path):
        raise FileNotFoundError(pcap_path)
    testpmd = shutil.which("dpdk-testpmd")
    if testpmd is None:
        raise RuntimeError("dpdk-testpmd not found (Debian package dpdk-dev)")
    frames = _pcap_frames(pcap_path)
    # infinite_rx keeps every frame of the capture in an mbuf: the pool must hold them all.
    mbufs = [f"--total-num-mbufs={max(16384, frames + 8192)}"] if frames is not None else []
    cmd = ["stdbuf", "-oL",  # line-buffered stdout, so stats never interleave with the prompt
           testpmd, "--lcores", f"0@{cpu[0]},1@{cpu[1]}", "--no-pci", "--in-memory",
           "--file-prefix", file_prefix,
           "--vdev", f"net_pcap0,rx_pcap={pcap_path},infinite_rx=1",
           "--vdev", "net_null0,no-rx=1",
           "--", "-i", "--forward-mode=io", "--port-topology=paired", "--nb-cores=1",
           "--burst=32", *mbufs]

    _cleanup(file_prefix)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = bytearray()
    err = bytearray()
    cond = threading.Condition()

    def pump(stream, buf):
        while chunk := os.read(stream.fileno(), 65536):
            with cond:
                buf += chunk
                cond.notify_all()
        with cond:
            cond.notify_all()

    readers = [threading.Thread(target=pump, args=(s, b), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()

    def fail(why: str):
        if proc.poll() is not None:
            for t in readers:  # let them drain the pipes
                t.join(timeout=2)
        with cond:
            tail = b"\n".join(out.splitlines()[-5:] + [b"-- stderr:"] + err.splitlines()[-12:])
        raise RuntimeError(f"dpdk-testpmd: {why}\n{tail.decode(errors='replace')}")

    def command(line: str | None, timeout: float = 20.0) -> str:
        """Send a command (None: just wait for the first prompt); return its output."""
        with cond:
            start, prompts = len(out), out.count(PROMPT)
        if line is not None:
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
            except OSError:
                fail(f"exited with status {proc.wait(5)}")
        with cond:
            cond.wait_for(lambda: out.count(PROMPT) > prompts or proc.poll() is not None, timeout)
            if out.count(PROMPT) > prompts:
                return out[start:].decode(errors="replace")
        if proc.poll() is None:
            fail(f"no prompt after {line!r} within {timeout} s")
        fail(f"exited with status {proc.returncode}")

    def tx_stats(text: str) -> tuple[int, int]:
        m = re.search(r"TX-packets:\s+(\d+).*?Tx-pps:\s+(\d+)", text, re.S)
        if m is None:
            fail(f"cannot parse port stats:\n{text}")
        return int(m[1]), int(m[2])

    try:
        startup = command(None, timeout=60.0)  # EAL init, ports up, capture loaded
        if not re.search(r"^Port 0: .*^Port 1: ", startup, re.S | re.M):
            fail("ports net_pcap0 and net_null0 did not both come up")  # a vdev probe failed
        command("start")
        time.sleep(0.5)  # warm-up
        tx0, _ = tx_stats(command("show port stats 1"))  # also starts testpmd's rate interval
        time.sleep(seconds)
        tx1, pps = tx_stats(command("show port stats 1"))  # pps: (tx1 - tx0) / testpmd's interval
        summary = command("stop")
        # Only port 0 -> port 1 may carry packets: port 1 has no RX (no-rx=1).
        rx1 = re.search(r"statistics for port 1 .*?RX-packets:\s+(\d+)", summary, re.S)
        if rx1 is None or int(rx1[1]) != 0:
            fail(f"unexpected forward statistics:\n{summary}")
        if pps <= 0 or tx1 <= tx0:
            fail(f"no packets forwarded (TX {tx0} -> {tx1})")
        proc.stdin.write(b"quit\n")
        proc.stdin.close()
        proc.wait(timeout=20)
        return {"mpps": pps / 1e6, "seconds": (tx1 - tx0) / pps, "cmd": cmd}
    finally:
        if proc.poll() is None:
            proc.kill()  # by PID: this Popen's own process
            proc.wait()
        for t in readers:
            t.join(timeout=5)
        _cleanup(file_prefix)
