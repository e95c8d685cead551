"""Shared pieces of the benchmarks: machine description, percentiles, traffic, a dataplane."""
from __future__ import annotations

import os
import platform
import struct

from serpens.agent.dataplane import Dataplane, DataplaneConfig


class BenchError(RuntimeError):
    """A run that must report no figures (a baseline doing other work than Serpens, a state
    store gone): `serpensctl bench` prints the message alone, without a traceback."""


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # the load when the run began: on a shared machine, what else was running
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def cpu_stalls(seconds: float = 1.0, cpus=(0, 1)) -> dict:
    """How often each CPU was taken from a spinning thread for over 50 us (a nested VM's host
    does it at random): per CPU, gaps per second, ms lost per second, the longest in us.
    Needs the DPDK runtime (TSC frequency) initialised."""
    import threading
    from serpens.runtime_cy import _dataplane as dp

    out = {}

    def probe(cpu):
        os.sched_setaffinity(0, {cpu})
        out[f"cpu{cpu}"] = stall_rates(*dp.stall_probe(seconds))

    threads = [threading.Thread(target=probe, args=(c,)) for c in cpus if c < (os.cpu_count() or 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# The round trip of a cache line between the router's and the instances' CPUs
# (dp.cpu_link_ns) above which the host has placed them apart: on this VM it is 57-210 ns
# while the two vCPUs share a cache and 314-470 ns while they do not (2026-12-01), and every
# rate that hands packets between them follows it (the empty SFC: 37 vs 14 Mpps).
LINK_FAR_NS = 250.0
LINK_CPUS = (0, 1)


def cpu_link() -> tuple[str | None, float | None]:
    """How the host has placed the benchmark's two CPUs right now: ("near" | "far", round
    trip ns); ("one", None) on a machine with one CPU (nothing to keep apart); (None, None)
    when the probe could not tell (it timed out: the host held a CPU throughout)."""
    from serpens.runtime_cy import _dataplane as dp

    if (os.cpu_count() or 1) <= max(LINK_CPUS):
        return "one", None
    for _ in range(3):  # a probe times out when the host holds one of the CPUs for 20 ms
        ns = dp.cpu_link_ns(*LINK_CPUS)
        if ns is not None:
            break
    else:
        return None, None
    return ("far" if ns >= LINK_FAR_NS else "near"), ns


def stall_rates(gaps: int, total_us: float, max_us: float, elapsed_us: float) -> dict:
    """One CPU's stall_probe figures per second of the time that actually passed: a gap that
    overran the nominal probe time counts in both, so ms lost per s never exceeds 1000."""
    seconds = max(elapsed_us, total_us, 1.0) / 1e6
    return {"gaps_per_s": round(gaps / seconds, 1),
            "lost_ms_per_s": round(total_us / 1e3 / seconds, 2),
            "max_us": round(max_us)}


def percentiles(samples, *points) -> dict:
    s = sorted(samples)
    if not s:
        return {f"p{p}": None for p in points}
    return {f"p{p}": round(s[min(len(s) - 1, int(len(s) * p / 100))], 2) for p in points}


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes = b"",
              size: int = 64) -> bytes:
    """An Ethernet/IPv4/UDP frame with valid checksums, padded to `size` bytes (no FCS)."""
    pad = max(0, size - 42 - len(payload))
    payload = payload + b"\0" * pad
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    ucs = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", ucs) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00"
    return eth + ip + udp


def tcp_frame(src: str, dst: str, sport: int, dport: int, size: int = 64, seq: int = 1,
              flags: int = 0x02, payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP segment (a SYN unless `flags` say otherwise) with valid checksums,
    its payload padded to `size` bytes (no FCS)."""
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    payload = payload + b"\0" * max(0, size - 54 - len(payload))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + tcp


def bench_dataplane(name: str) -> Dataplane:
    return Dataplane(DataplaneConfig(file_prefix=f"serpens-bench-{name}-{os.getpid()}")).start()
