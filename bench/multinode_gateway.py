"""The gateway side of `bench multinode` (python -m serpens.bench.multinode_gateway SPEC_JSON),
run in the gateway's network namespace as its own DPDK primary (gateway loop on
spec["gateway_cpu"], this thread on CPU 0). Two parts, one after the other:
- gateway alone: the production loop (serpens_gateway_run) on its core, frames from a net_pcap
  source replaying the traffic endlessly (a NIC's RX copy per frame), classified, pinned to
  one of two servers by the flow table, VXLAN-encapsulated and sent to two net_null ports
  (one per server): its unpaced throughput (the source never runs dry) and the cost of one
  encapsulation alone (encap_ns);
- through two servers: each server (bench/multinode_server.py, its own DPDK primary in its
  own namespace) is reached on an underlay port of its own (memif, or af_packet on a veth
  pair); traffic comes from bench/native/gwdrive.h, which plays the outside world around the
  gateway's poll on the gateway's core (paced arrivals stamped in their payload), and the
  same loss-limited search as `bench sfc` (bench/sfc.py measure_started) gives multi's
  figures twice: first with the SFC's output leaving each server on its own port (the
  servers count it and log its latency from the stamp), then with the servers sending it
  back to the gateway (the driver takes it off the egress port and logs its latency).
Prints one JSON line at the end."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from serpens.agent.dataplane import Dataplane, DataplaneConfig
from serpens.runtime_cy import _dataplane as dp

from .rig import INPUT_DEPTH, INSTANCE_CPU, ROUTER_CPU, flow_frames, input_depth_at, \
    keep_off_router_cpu, latency_us, stall_us_for, write_pcap
from .sfc import measure_started

STAMP_OFF = 42  # the UDP payload of the benchmark frames (bench/common.py udp_frame)
READY_TIMEOUT_S = 60.0


def stamped_frames(flows: int) -> list[bytes]:
    """The benchmark traffic with UDP checksum 0 (none: the driver stamps the payload)."""
    return [f[:40] + b"\0\0" + f[42:] for f in flow_frames(flows)]


def _route(gw, spec: dict, ports: list[int]) -> int:
    """The SFC on every server, weight 1 each, taking every frame."""
    servers = spec["servers"]
    for s, port in zip(servers, ports):
        gw.set_server(s["ip"], s["mac"], port=port)
    sfc = gw.add_sfc(spec["tag"], spec.get("vni", 0))
    gw.set_route(sfc, {s["ip"]: 1 for s in servers})
    gw.set_default_sfc(sfc)
    return sfc


def _underlay_tx(gw, ports) -> int:
    st = gw.stats()["ports"]
    return sum(st[p]["tx"] for p in ports)


def gateway_alone(dataplane, spec: dict, runs: int = 3) -> float:
    """Unpaced throughput (Mpps) of the gateway's loop alone on its core: the median of
    `runs` runs of spec["seconds"] after spec["warmup"]."""
    mp = dataplane.mempool
    src, sink = dp.port_open("net_pcap_gw", mp), dp.port_open("net_null_gw", mp)
    under = [dp.port_open(f"net_null_gw{s['name']}", mp) for s in spec["servers"]]
    gw = dp.Gateway(src, under[0], sink, spec["gateway_ip"], spec["gateway_mac"])
    _route(gw, spec, under)
    gw.launch(dataplane.config.router_lcore)
    keep_off_router_cpu()
    try:
        time.sleep(spec["warmup"])
        rates = []
        for _ in range(runs):
            n0, t0 = _underlay_tx(gw, under), time.perf_counter()
            time.sleep(spec["seconds"])
            n1, t1 = _underlay_tx(gw, under), time.perf_counter()
            rates.append((n1 - n0) / (t1 - t0) / 1e6)
        st = gw.stats()
    finally:
        gw.stop()
        for port in (src, sink, *under):
            dp.port_close(port)
    if not all(st["servers"][s["ip"]]["tx"] for s in spec["servers"]):
        raise RuntimeError(f"gateway alone: a server got nothing: {st['servers']}")
    return statistics.median(rates)


class Servers:
    """The server processes, each in its namespace; stop() collects their counters."""

    def __init__(self, spec: dict):
        self.procs = {}
        for s in spec["servers"]:
            conf = dict(s, underlay=s["server_vdev"], gateway_ip=spec["gateway_ip"],
                        gateway_mac=spec["gateway_mac"], tag=spec["tag"],
                        vni=spec.get("vni", 0), mtu=spec.get("mtu", 1500),
                        stamp_off=STAMP_OFF, stall_us=spec.get("stall_us"),
                        moves_at_once=spec.get("moves_at_once", False))
            self.procs[s["name"]] = subprocess.Popen(
                ["ip", "netns", "exec", s["ns"], sys.executable, "-m",
                 "serpens.bench.multinode_server", json.dumps(conf)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self):
        self.state_dirs = {}     # name: its state directory (bench migrate's moves)
        for name, p in self.procs.items():
            line = _json_line(p, READY_TIMEOUT_S)
            if line.get("ready") != name:
                raise RuntimeError(f"server {name} did not start (exit {p.poll()})")
            self.state_dirs[name] = line.get("state_dir")

    def ask(self, cmd: str) -> dict:
        """Each server's answer to `cmd` (bench/multinode_server.py), by name."""
        for p in self.procs.values():
            p.stdin.write(cmd + "\n")
            p.stdin.flush()
        return {name: _json_line(p, 30.0) for name, p in self.procs.items()}

    def stop(self) -> dict:
        out = {}
        for name, p in self.procs.items():
            try:
                p.stdin.close()
                out[name] = _json_line(p, 30.0)
                p.wait(30)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()
        return out


def cpu_seconds(pids) -> float:
    """CPU time (user + system) used so far by processes `pids` and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass  # gone meanwhile
    return total / tick


def idle_cpu_percent(pids, seconds: float = 1.0) -> float:
    """CPU used by an idle testbed (% of one CPU): what its sleeping loops cost."""
    c0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    return round(100 * (cpu_seconds(pids) - c0) / (time.monotonic() - t0), 1)


def _json_line(p, timeout: float) -> dict:
    """The next JSON line of `p`'s stdout (other lines, e.g. DPDK's, are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"process {p.pid} ended (exit {p.wait()})")
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"process {p.pid}: no answer in {timeout} s")


class Multi:
    """The gateway and the servers as `bench sfc` sees a rig: run_at(pps, seconds) offers a
    paced load at the gateway (0: unpaced) and gives rates, loss and latency where packets
    leave: each server's own output port (`servers`: the servers' control, bench/
    multinode_server.py), or after `to_gateway()` the gateway's egress, the servers' output
    coming back through it."""

    def __init__(self, dataplane, spec: dict, frames: list[bytes], under: list[int],
                 servers: Servers):
        mp = dataplane.mempool
        self.warmup = spec["warmup"]
        self.servers, self.local = servers, True
        tag = os.getpid()
        # the input's buffer is the driver's pace depth (as the rig's paced source: 5 ms of
        # arrivals at the offered rate, at least INPUT_DEPTH: bench/rig.py input_depth_at);
        # its ring to the gateway only holds a few bursts; the
        # egress ring, which the driver empties, spec["egress_slots"] (4096: a NIC's)
        self.inject = dp.Ring(f"mn_in{tag}", 256)
        self.sent = dp.Ring(f"mn_out{tag}", spec.get("egress_slots", 4096))
        self.outside = dp.port_from_rings(f"net_ring_mn{tag}", self.inject, self.sent, mp)
        self.under = under
        # a full server link holds the ingress back as long as the input queue holds arrivals
        self.gw = dp.Gateway(self.outside, self.under[0], self.outside, spec["gateway_ip"],
                             spec["gateway_mac"], mtu=spec.get("mtu", 1500),
                             stall_us=stall_us_for())
        _route(self.gw, spec, self.under)
        self.driver = dp.GatewayDriver(self.gw, self.inject, self.sent, mp, frames,
                                       stamp_off=STAMP_OFF, depth=INPUT_DEPTH)
        self.driver.launch(dataplane.config.router_lcore)
        keep_off_router_cpu()

    def to_gateway(self):
        """The servers send the SFC's output back to the gateway from now on."""
        self.servers.ask("return")
        self.local = False
        self.connected()

    def _through_all(self) -> bool:
        if self.local:
            return all(c["tx"] for c in self.servers.ask("counts").values())
        st = self.gw.stats()
        return bool(st["sfcs"]) and all(st["ports"][u]["rx"] for u in self.under)

    def connected(self, timeout: float = 30.0):
        """Frames come out of every server (memif links connect in the background)."""
        self.driver.pace(100e3)
        deadline = time.monotonic() + timeout
        st = None
        try:
            while time.monotonic() < deadline:
                if self._through_all():
                    return
                st = self.gw.stats()
                time.sleep(0.05)
            raise RuntimeError(f"no frames out of every server in {timeout} s: {st}")
        finally:
            self.driver.pace(1)

    def _counts(self):
        for _ in range(100):  # a read preempted midway is read again (bench/rig.py _counts)
            t0 = time.perf_counter()
            c = self.driver.counts()
            t1 = time.perf_counter()
            if t1 - t0 < 200e-6:
                break
        return (*c, (t0 + t1) / 2)

    def run_at(self, pps: float, seconds: float, warmup: float | None = None,
               log: int = 0) -> dict:
        if self.local:
            return self._run_local(pps, seconds, warmup, log)
        self.driver.pace(pps, input_depth_at(pps))
        time.sleep(self.warmup if warmup is None else warmup)
        if log:
            self.driver.log_start(log)
        s0, m0, r0, t0 = self._counts()
        time.sleep(seconds)
        s1, m1, r1, t1 = self._counts()
        recs = self.driver.log_take() if log else b""
        self.driver.pace(1)  # idle between runs
        dt = t1 - t0
        arrived, out = (s1 - s0) + (m1 - m0), r1 - r0
        lost = max(0, arrived - out) / arrived if arrived else 0.0
        res = {"offered_mpps": arrived / dt / 1e6, "mpps": out / dt / 1e6,
               "loss": lost, "lost": lost}  # whatever did not come back, wherever lost
        if log:
            res["latency_us"] = latency_us(recs, (0.5, 50, 99, 99.9))
        return res

    def _run_local(self, pps: float, seconds: float, warmup: float | None, log: int) -> dict:
        """run_at() with the output on the servers' own ports. Each side's counts are read
        with their own time (one clock: CLOCK_MONOTONIC is not per namespace), so rates are
        over each one's window: arrivals at the driver, departures per server, summed."""
        self.driver.pace(pps, input_depth_at(pps))
        time.sleep(self.warmup if warmup is None else warmup)
        if log:
            self.servers.ask(f"log {log}")
        s0, m0, _, t0 = self._counts()
        c0 = self.servers.ask("counts")
        time.sleep(seconds)
        s1, m1, _, t1 = self._counts()
        c1 = self.servers.ask("counts")
        recs = b"".join(bytes.fromhex(r["recs"]) for r in self.servers.ask("take").values()) \
            if log else b""
        self.driver.pace(1)  # idle between runs
        arrived_pps = ((s1 - s0) + (m1 - m0)) / (t1 - t0)
        out_pps = sum((c1[n]["tx"] - c0[n]["tx"]) / (c1[n]["t"] - c0[n]["t"]) for n in c0)
        lost = max(0.0, 1 - out_pps / arrived_pps) if arrived_pps else 0.0
        res = {"offered_mpps": arrived_pps / 1e6, "mpps": out_pps / 1e6, "loss": lost,
               "lost": lost}  # whatever did not come out, wherever lost
        if log:
            res["latency_us"] = latency_us(recs, (0.5, 50, 99, 99.9))
        return res

    def close(self):
        self.driver.stop()
        dp.port_close(self.outside)
        for ring in (self.inject, self.sent):
            ring.free()


def run(spec: dict) -> dict:
    frames = stamped_frames(spec["flows"])
    tmp = spec["dir"]
    pcap = os.path.join(tmp, "gw-traffic.pcap")
    write_pcap(pcap, frames)
    vdevs = (f"net_pcap_gw,rx_pcap={pcap},infinite_rx=1", "net_null_gw,no-rx=1",
             *(f"net_null_gw{s['name']},no-rx=1" for s in spec["servers"]),
             *(s["gw_vdev"] for s in spec["servers"]))
    dataplane = Dataplane(DataplaneConfig(
        file_prefix=f"serpens-bench-mngw-{os.getpid()}", mbufs=32767, cpus="0-1",
        router_cpus=str(spec.get("gateway_cpu", ROUTER_CPU)), state_dir=tmp,
        vdevs=vdevs)).start()
    os.sched_setaffinity(0, {INSTANCE_CPU})
    out = {"encap_ns": round(statistics.median(
        dp.encap_ns(dataplane.mempool, frames[0]) for _ in range(5)), 2)}
    if not spec.get("multi_only"):  # (bench e2e wants multi alone)
        out["gateway_mpps"] = round(gateway_alone(dataplane, spec), 3)
    # started before the servers: a memif client connects once, when its port starts
    under = [dp.port_open(s["gw_vdev"].split(",", 1)[0], dataplane.mempool)
             for s in spec["servers"]]
    servers = Servers(spec)
    multi = None
    try:
        servers.wait_ready()
        multi = Multi(dataplane, spec, frames, under, servers)
        multi.connected()
        time.sleep(0.5)  # instances poll idle_us, then sleep; the loops back off
        out["idle_cpu_percent"] = idle_cpu_percent(
            [os.getpid()] + [p.pid for p in servers.procs.values()])
        out["multi"] = measure_started(multi, spec["seconds"], latency_mpps=0, loss_key="lost")
        if not spec.get("multi_only"):
            multi.to_gateway()
            out["multi_return"] = measure_started(multi, spec["seconds"], latency_mpps=0,
                                                  loss_key="lost")
        st = multi.gw.stats()
        out["gateway"] = {"servers": {ip: s["tx"] for ip, s in st["servers"].items()},
                          "tx_failed": st["tx_failed"], "drops": st["drops"]}
    finally:
        if multi is not None:
            multi.close()
        # memif: this end closes first, while its peers live (a peer hanging up during the
        # EAL's cleanup races the memif control thread: seen crash there)
        for port in under:
            dp.port_close(port)
        out["servers"] = servers.stop()
        dataplane.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
