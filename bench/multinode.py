"""multinode: FW->MON->NAT through the gateway and VXLAN on 2 servers vs the same SFC on one node.

Three DPDK processes, each in its own network namespace: the gateway
(bench/multinode_gateway.py) and two servers (bench/multinode_server.py), each server a node
whose router takes VXLAN from the gateway on its underlay port and sends FW->MON->NAT's output
out of its own port (multi), or back to the gateway encapsulated (multi_return). The underlay
is real VXLAN frames between the processes, one point-to-point link per server: memif by
default (shared-memory rings between containers on one host, the socket on the shared
filesystem) or `--underlay af_packet` (a veth pair per server, DPDK's af_packet PMD: a
syscall per TX burst). Cores as in `bench sfc`: both routers on CPU 1, both NF instances on
CPU 0, the gateway's loop on --gateway-cpu (1 by default: chosen by measurement,
docs/baselines.md): on this 2-CPU machine the servers share cores, so the figure of merit is
the overhead of the gateway and the VXLAN hop, not scaling. Figures:
- gateway_mpps: the gateway's loop alone on its core (classify + flow table + encap, two
  servers behind two net_null ports, a net_pcap source replaying endlessly): unpaced
  throughput (the source never runs dry), the median of three runs;
- encap_ns: one VXLAN encapsulation alone, per packet;
- multi_mpps: the highest load offered at the gateway that leaves the servers' own output
  ports with under 0.1% loss (bench sfc's search); latency_us.multi from each frame's
  arrival at the gateway (stamped in its payload) to its departure from a server (the
  server's router reads the stamp), at 80% of multi_mpps (x latency_scale.multi: after a
  run that did not carry its load, scaled to what the CPUs carried then, sfc.latency_at);
- multi_return_mpps: the same with the output back through the gateway (`output: gateway`),
  out of its egress port; latency at 80% of its own rate;
- single_mpps: bench sfc's figure for the same SFC on one node without a gateway (router on
  CPU 1, instance on CPU 0, net_pcap -> net_null); latency_us.single at the load multi's
  latency was measured at;
- ratio = multi_mpps / single_mpps (goal >= 0.7); return_ratio likewise for multi_return;
  each in the first placement of the CPUs both were searched in (bench/search.py: the host
  moves this VM's two vCPUs apart and together; ratio_link names it, None if they share none).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from serpens.common.argtypes import non_negative_float, positive_float, positive_int

from .common import BenchError, cpu_stalls, machine
from .rig import INPUT_DEPTH, INPUT_HOLD_S, Rig, flow_frames, stall_us_for
from .search import same_link_ratio
from .sfc import fw_mon_nat, measure

UNDERLAYS = ("memif", "af_packet")
GATEWAY = {"ip": "192.168.77.1", "mac": "02:00:00:00:77:01"}
TAG = 0x51
REPLICAS = 2  # the SFC's instances: one per server, or both on the one node
GATEWAY_CPU = 1  # chosen by measurement (docs/baselines.md "Several servers": cores)


def add_arguments(p):
    p.add_argument("--seconds", type=positive_float, default=0.5, help="measuring time per trial")
    p.add_argument("--warmup", type=non_negative_float, default=0.3,
                   help="seconds at a trial's rate before it is measured")
    p.add_argument("--flows", type=positive_int, default=10000)
    p.add_argument("--underlay", choices=UNDERLAYS, default="memif",
                   help="the link between the gateway and each server")
    p.add_argument("--gateway-cpu", type=int, choices=(0, 1), default=GATEWAY_CPU,
                   help="the gateway loop's (and its traffic driver's) CPU: 0 with the NF "
                        "instances, 1 with the servers' routers")


def _ip(*args, ns: str | None = None):
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True,
                   capture_output=True, text=True)


class Testbed:
    """A namespace for the gateway and one per server, named with this process's id; with
    af_packet a veth pair per server (`u<name>` in the gateway's namespace, `eth0` in the
    server's). Links carry the underlay MACs the processes are told."""

    def __init__(self, underlay: str, directory: str, names=("a", "b"), link_log2: int = 10):
        tag = os.getpid() % 100000
        self.underlay, self.dir, self.link_log2 = underlay, directory, link_log2
        self.gw_ns = f"smn{tag}gw"
        self.servers = [{"name": n, "ns": f"smn{tag}{n}", "ip": f"192.168.77.{11 + i}",
                         "mac": f"02:00:00:00:77:{0x11 + i:02x}", "link": f"smn{tag}u{n}"}
                        for i, n in enumerate(names)]
        self.made = []

    def create(self):
        for ns in [self.gw_ns] + [s["ns"] for s in self.servers]:
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
            # no IPv6 neighbour discovery on the underlay: the kernel sends nothing there
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], capture_output=True)
        for s in self.servers:
            if self.underlay == "memif":
                sock = os.path.join(self.dir, f"memif-{s['name']}.sock")
                # 2^link_log2 slots; 1024 (the PMD's default) for throughput: the gateway
                # holds back for a full link (docs/dataplane.md "Back-pressure"), and fewer
                # 2 KiB buffers in turn stay in cache
                common = f"socket={sock},socket-abstract=no,id=0,rsize={self.link_log2}"
                s["gw_vdev"] = f"net_memif_gw{s['name']},role=server,{common}," \
                               f"mac={GATEWAY['mac']}"
                s["server_vdev"] = f"net_memif_{s['name']},role=client,{common},mac={s['mac']}"
            else:  # a veth pair straight from the gateway's namespace to the server's
                _ip("link", "add", s["link"], "address", GATEWAY["mac"], "netns", self.gw_ns,
                    "type", "veth", "peer", "name", "eth0", "address", s["mac"],
                    "netns", s["ns"])
                for ns, dev in ((self.gw_ns, s["link"]), (s["ns"], "eth0")):
                    _ip("link", "set", dev, "up", ns=ns)
                s["gw_vdev"] = f"net_af_packet_gw{s['name']},iface={s['link']}"
                s["server_vdev"] = f"net_af_packet_{s['name']},iface=eth0"
        return self

    def remove(self):
        for ns in self.made:  # a namespace's links go with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_multi(args, directory: str, names=("a", "b"), multi_only: bool = False) -> dict:
    """The gateway process (which starts the servers `names`): its JSON result; with
    `multi_only` only `multi` (no gateway_mpps, no multi_return)."""
    bed = Testbed(args.underlay, directory, names)
    try:
        bed.create()
        spec = {"servers": [{k: s[k] for k in ("name", "ns", "ip", "mac", "gw_vdev",
                                               "server_vdev")} for s in bed.servers],
                "gateway_ip": GATEWAY["ip"], "gateway_mac": GATEWAY["mac"], "tag": TAG,
                "flows": args.flows, "seconds": args.seconds, "warmup": args.warmup,
                "dir": directory, "gateway_cpu": args.gateway_cpu, "multi_only": multi_only}
        p = subprocess.run(["ip", "netns", "exec", bed.gw_ns, sys.executable, "-m",
                            "serpens.bench.multinode_gateway", json.dumps(spec)],
                           capture_output=True, text=True, timeout=1800)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode or not lines:
            sys.stderr.write(p.stderr)  # the gateway's and the servers' own words
            raise BenchError(f"bench multinode: the gateway side failed (exit {p.returncode}): "
                             + (p.stderr.strip().splitlines() or ["no output"])[-1])
        return json.loads(lines[-1])
    finally:
        bed.remove()


def run(args) -> dict:
    if os.geteuid() != 0:
        raise BenchError("bench multinode makes network namespaces: run it as root")
    with tempfile.TemporaryDirectory(prefix="serpens-bench-mn-", dir="/dev/shm") as directory:
        multi = run_multi(args, directory)
    m, mr = multi["multi"], multi["multi_return"]
    if not all(st["tx"] for st in multi["servers"].values()):
        raise BenchError(f"bench multinode: nothing came back through a server: {multi}")
    # the same SFC on one node, no gateway; latency at the load multi's was measured at (no
    # rate passed on the servers: at 80% of single's own)
    sfc, images = fw_mon_nat()
    rig = Rig("mnsingle", flow_frames(args.flows), pool_size=REPLICAS, warmup=args.warmup)
    try:
        stalls = cpu_stalls()
        single = measure(rig, sfc, args.seconds, latency_mpps=m.get("latency_mpps", 0),
                         loss_key="lost", instances=REPLICAS,
                         latency_link=m.get("latency_link"),
                         want=tuple(m["mpps_by_link"]) + tuple(mr["mpps_by_link"]))
    finally:
        rig.close()
        for image in images:
            image.close()
    lat = ("p50", "p99", "p99_9")
    # compared in one placement of the CPUs (bench/search.py)
    ratio, ratio_link = same_link_ratio(m["mpps_by_link"], single["mpps_by_link"])
    return_ratio, return_link = same_link_ratio(mr["mpps_by_link"], single["mpps_by_link"])
    return {"machine": dict(machine(), stalls=stalls),
            "params": {"flows": args.flows, "frame_bytes": 64, "seconds": args.seconds,
                       "warmup": args.warmup, "sfc": "fw->mon->nat", "servers": 2,
                       "replicas": REPLICAS,
                       "loss_limit": 0.001, "underlay": args.underlay,
                       "input_depth": INPUT_DEPTH, "input_hold_s": INPUT_HOLD_S,
                       "stall_us": stall_us_for(),
                       "gateway_mpps": "unpaced throughput of the gateway loop alone "
                                       "(net_pcap source, 2 servers on net_null ports)",
                       "latency_load_mpps": m.get("latency_mpps"),
                       "output": "multi: each server's own output port (net_null, as "
                                 "single's sink); multi_return: back through the gateway",
                       "cores": f"multi: gateway loop and traffic driver cpu "
                                f"{args.gateway_cpu}, both routers cpu 1, both instances "
                                f"cpu 0; single: router cpu 1, both instances cpu 0",
                       "gateway_cpu": args.gateway_cpu},
            "gateway_mpps": multi["gateway_mpps"], "encap_ns": multi["encap_ns"],
            "multi_mpps": m["mpps"], "single_mpps": single["mpps"],
            "multi_mpps_trials": m["mpps_trials"], "single_mpps_trials": single["mpps_trials"],
            "multi_mpps_link": m["mpps_link"], "single_mpps_link": single["mpps_link"],
            "latency_link": {k: r.get("latency_link") for k, r in
                             (("multi", m), ("multi_return", mr), ("single", single))},
            "mpps_by_link": {"multi": m["mpps_by_link"], "multi_return": mr["mpps_by_link"],
                             "single": single["mpps_by_link"]},
            "ratio": ratio, "ratio_link": ratio_link,
            # the SFC's output back through the gateway (`output: gateway`)
            "multi_return_mpps": mr["mpps"], "multi_return_mpps_trials": mr["mpps_trials"],
            "return_ratio": return_ratio, "return_ratio_link": return_link,
            # unpaced (the source never runs dry): what each carries losing what it must
            "capacity_mpps": {"multi": m["capacity_mpps"], "multi_return": mr["capacity_mpps"],
                              "single": single["capacity_mpps"]},
            "latency_scale": {k: r.get("latency_scale") for k, r in
                              (("multi", m), ("multi_return", mr), ("single", single))},
            "latency_us": {k: {p: r["latency_us"][p] for p in lat} if "latency_us" in r
                           else None
                           for k, r in (("multi", m), ("multi_return", mr), ("single", single))},
            "multi_detail": {"gateway": multi["gateway"], "servers": multi["servers"],
                             "idle_cpu_percent": multi["idle_cpu_percent"],
                             "loss": m["loss"], "latency_loss": m.get("latency_loss"),
                             "return_loss": mr["loss"],
                             "return_latency_mpps": mr.get("latency_mpps")}}


def print_table(r: dict):
    p = r["params"]
    print(f"FW->MON->NAT on 2 servers behind the gateway ({p['underlay']} underlay) vs one "
          f"node, {p['flows']} flows, 64 B packets, on {r['machine']['cpu']} "
          f"({r['machine']['cores']} cores)")
    print(f"gateway alone {r['gateway_mpps']:.3f} Mpps (unpaced), encap {r['encap_ns']} ns")
    print(f"{'':>13}{'Mpps':>9}{'unpaced':>9}{'p50 us':>9}{'p99 us':>9}   (latency at "
          f"{p['latency_load_mpps']} Mpps)")
    for k in ("multi", "multi_return", "single"):
        lat = r["latency_us"][k] or {"p50": "-", "p99": "-"}
        print(f"{k:>13}{r[k + '_mpps']:>9.3f}{r['capacity_mpps'][k]:>9.3f}{lat['p50']:>9}"
              f"{lat['p99']:>9}")
    print(f"ratio multi/single {r['ratio']} (output back through the gateway: "
          f"{r['return_ratio']}); multi_return latency at "
          f"{r['multi_detail']['return_latency_mpps']} Mpps")
