"""Node configs: the ports and resources of one server's data plane (DESIGN §3).

    apiVersion: serpens/v1
    kind: Node
    metadata:
      name: edge-1
    spec:
      ports:                         # name -> any DPDK device string
        wan: net_af_packet0,iface=eth1
        lan: 0000:3b:00.1            # a PCI address (a NIC bound to vfio-pci)
      input: [wan]                   # ports the router receives from (default: all)
      output: lan                    # where SFCs' packets leave unless an SFC says otherwise
      pool: 4                        # pre-started runtime processes (instances at once)
      warm_s: 30                     # an idle SFC's instances stop after this (scale to zero)
      wake_us: 50                    # a sleeping instance is woken after this, or 128 packets
      stall_us: 2000                 # the longest one SFC may stop the node's RX (then it sheds)
      hold_ms: 200                   # the longest a packet waits for an instance to start
      cpus: "0-1"                    # CPUs of the agent and its instances
      router_cpu: 1                  # the router's own CPU
      state_dir: /dev/shm/serpens/state
      pace: {wan: 1000000}           # input ports replaying a capture forever: packets/s
      underlay:                      # optional: the port facing the gateway and other
        {port: fabric, ip: 10.10.0.2, mtu: 1500}   # servers (VXLAN only; not an input)

`pace` makes an input port that never runs dry (net_pcap with infinite_rx=1) arrive at a
steady rate, as a NIC would see traffic; without it such a port floods the router.
Validated in full; errors are SpecError naming the field (e.g. `spec.ports.wan`).
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from .names import NODE_NAME
from .spec import SpecError, parse_document, read_file

_PORT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_PCI = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_DEVICE = re.compile(r"^net_[a-z_]+[0-9a-z_]*$")
_CPUS = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
MAX_PORTS = 8


@dataclass(frozen=True)
class NodeUnderlay:
    port: str                 # a port of spec.ports, not an input: VXLAN frames only
    ip: str                   # the node's IPv4 address there
    mtu: int = 1500           # outer IPv4 packets at most this (inner IP packets mtu - 50)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ports: dict            # name -> DPDK device string, in spec order
    input: tuple           # port names the router receives from
    output: str | None     # default output port
    pool: int = 4
    warm_s: float = 30.0
    wake_us: float = 50.0
    cpus: str = "0-1"
    router_cpu: int = 1
    state_dir: str = "/dev/shm/serpens/state"
    pace: dict = field(default_factory=dict)   # input port name -> packets/s
    stall_us: float = 2000.0  # longest RX stall one SFC causes before it sheds (router.h)
    hold_ms: float = 200.0    # longest a packet waits for an instance to start
    underlay: NodeUnderlay | None = None  # the VXLAN port, address and MTU (DESIGN §7)

    def device_name(self, port: str) -> str:
        """The DPDK name of a port ("net_pcap0", or the PCI address)."""
        return self.ports[port].split(",", 1)[0]


def load_node(path: str) -> NodeSpec:
    return parse_node(read_file(path))


def parse_node(text: str) -> NodeSpec:
    name, body, _ = parse_document(text, "Node", NODE_NAME, "1-32 characters of a-z, 0-9 and '-'",
                                {"ports", "input", "output", "pool", "warm_s", "wake_us",
                                 "cpus", "router_cpu", "state_dir", "pace", "stall_us",
                                 "hold_ms", "underlay"})
    ports = parse_ports(body.get("ports"))
    underlay = parse_underlay(body.get("underlay"), ports)
    inputs = body.get("input", [p for p in ports if not underlay or p != underlay.port])
    if not isinstance(inputs, list) or not inputs:
        raise SpecError("spec.input", "a list of port names, at least one")
    for i, p in enumerate(inputs):
        if p not in ports:
            raise SpecError(f"spec.input[{i}]", f"no port named {p!r} in spec.ports")
        if underlay and p == underlay.port:
            raise SpecError(f"spec.input[{i}]", f"{p!r} is the underlay port (VXLAN only)")
    output = body.get("output")
    if output is not None and output not in ports:
        raise SpecError("spec.output", f"no port named {output!r} in spec.ports")
    pool = parse_number(body, "pool", 4, int, 1, 64)
    warm_s = parse_number(body, "warm_s", 30.0, (int, float), 0.01, 86400)
    wake_us = parse_number(body, "wake_us", 50.0, (int, float), 1, 100000)
    cpus = parse_cpus(body)
    router_cpu = parse_number(body, "router_cpu", 1, int, 0, 4095)
    state_dir = body.get("state_dir", "/dev/shm/serpens/state")
    if not isinstance(state_dir, str) or not os.path.isabs(state_dir):
        raise SpecError("spec.state_dir", "an absolute path (tmpfs or hugetlbfs)")
    pace = parse_pace(body.get("pace", {}), inputs)
    return NodeSpec(name, ports, tuple(inputs), output, pool, float(warm_s), float(wake_us),
                    cpus, router_cpu, state_dir, pace,
                    float(parse_number(body, "stall_us", 2000.0, (int, float), 10, 1e6)),
                    float(parse_number(body, "hold_ms", 200.0, (int, float), 1, 60000)),
                    underlay)


def parse_pace(pace, inputs) -> dict:
    """spec.pace: input port name -> packets/s (Node's and Gateway's)."""
    if not isinstance(pace, dict):
        raise SpecError("spec.pace", "a mapping of input port names to packets per second")
    for port, pps in pace.items():
        if port not in inputs:
            raise SpecError(f"spec.pace.{port}", "not an input port")
        if isinstance(pps, bool) or not isinstance(pps, (int, float)) or not 1 <= pps <= 1e9:
            raise SpecError(f"spec.pace.{port}", f"packets per second 1..1e9, got {pps!r}")
    return {p: float(v) for p, v in pace.items()}


def parse_cpus(body) -> str:
    cpus = str(body.get("cpus", "0-1"))
    if not _CPUS.match(cpus):
        raise SpecError("spec.cpus", f"a CPU list such as 0-3 or 0,2, got {cpus!r}")
    return cpus


def parse_underlay(raw, ports: dict) -> NodeUnderlay | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("spec.underlay", "a mapping: {port: NAME, ip: A.B.C.D, mtu: 1500}")
    unknown = sorted(set(raw) - {"port", "ip", "mtu"})
    if unknown:
        raise SpecError(f"spec.underlay.{unknown[0]}", "unknown key (known: ip, mtu, port)")
    port = raw.get("port")
    if port not in ports:
        raise SpecError("spec.underlay.port", f"no port named {port!r} in spec.ports")
    try:
        ip = ipaddress.IPv4Address(raw.get("ip"))
    except ValueError:
        raise SpecError("spec.underlay.ip", f"an IPv4 address, got {raw.get('ip')!r}") from None
    if ip.is_multicast or ip.is_unspecified or int(ip) == 0xFFFFFFFF:
        raise SpecError("spec.underlay.ip", f"a unicast address, got {ip}")
    mtu = raw.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 9216:
        raise SpecError("spec.underlay.mtu", f"bytes 68..9216, got {mtu!r}")
    return NodeUnderlay(port, str(ip), mtu)


def parse_ports(raw) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("spec.ports", "a mapping of port names to DPDK device strings")
    if len(raw) > MAX_PORTS:
        raise SpecError("spec.ports", f"at most {MAX_PORTS} ports")
    out, devices = {}, {}
    for name, dev in raw.items():
        where = f"spec.ports.{name}"
        if not isinstance(name, str) or not _PORT_NAME.match(name):
            raise SpecError(where, "port names are 1-16 characters of a-z, 0-9 and '_'")
        if not isinstance(dev, str) or not dev.strip():
            raise SpecError(where, "a DPDK device string, e.g. net_pcap0,rx_pcap=in.pcap")
        device = dev.split(",", 1)[0]
        if not (_DEVICE.match(device) or _PCI.match(device)):
            raise SpecError(where, f"{device!r} is neither a DPDK virtual device (net_...) "
                            "nor a PCI address")
        if device in devices:
            raise SpecError(where, f"device {device!r} is also port {devices[device]!r}")
        devices[device] = name
        out[name] = dev
    return out


def parse_number(body, key, default, types, lo, hi):
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, types) or not lo <= v <= hi:
        raise SpecError(f"spec.{key}", f"a number {lo}..{hi}, got {v!r}")
    return v
