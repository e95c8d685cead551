"""Gateway configs: the ports, underlay and CPUs of one gateway (DESIGN §1, §7).

    apiVersion: serpens/v1
    kind: Gateway
    metadata:
      name: gw-1
    spec:
      ports:                         # name -> any DPDK device string
        wan: net_af_packet0,iface=eth1
        out: net_af_packet1,iface=eth2
        fabric: 0000:3b:00.1
      ingress: [wan]                 # frames from the outside (default: every port but
                                     # egress and the underlay's); SFC match `port` names these
      egress: out                    # frames back from the servers leave here, decapsulated
      underlay: {port: fabric, ip: 10.10.0.1, mtu: 1500}   # VXLAN to and from the servers
      cpus: "0-1"                    # CPUs of the gateway process
      gateway_cpu: 1                 # the packet loop's own CPU
      idle_s: 30                     # a flow unused this long is forgotten (may move server)
      stall_us: 2000                 # the longest a server's full link may hold the ingress
                                     # back before frames to it are dropped (gateway.h)
      release_factor: 2              # a move's held packets leave at this multiple of the
                                     # rate they arrived at (docs/moves.md step 5)
      pace: {wan: 1000000}           # ingress ports replaying a capture forever: packets/s

Validated in full; errors are SpecError naming the field (e.g. `spec.underlay.ip`), as for
Node configs (common/node_spec.py, whose field parsers this shares).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from serpens.common.names import NODE_NAME
from serpens.common.node_spec import (NodeUnderlay, parse_cpus, parse_number, parse_pace,
                                      parse_ports, parse_underlay)
from serpens.common.spec import SpecError, parse_document, read_file


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    ports: dict                # name -> DPDK device string, in spec order
    ingress: tuple             # port names frames from the outside arrive on
    egress: str                # decapsulated frames from the servers leave here
    underlay: NodeUnderlay     # the VXLAN port, address and MTU
    cpus: str = "0-1"
    gateway_cpu: int = 1
    idle_s: float = 30.0
    stall_us: float = 2000.0
    release_factor: float = 2.0
    pace: dict = field(default_factory=dict)   # ingress port name -> packets/s

    def device_name(self, port: str) -> str:
        """The DPDK name of a port ("net_pcap0", or the PCI address)."""
        return self.ports[port].split(",", 1)[0]


def load_gateway(path: str) -> GatewayConfig:
    return parse_gateway(read_file(path))


def parse_gateway(text: str) -> GatewayConfig:
    name, body, _ = parse_document(text, "Gateway", NODE_NAME,
                                   "1-32 characters of a-z, 0-9 and '-'",
                                   {"ports", "ingress", "egress", "underlay", "cpus",
                                    "gateway_cpu", "idle_s", "stall_us", "release_factor",
                                    "pace"})
    ports = parse_ports(body.get("ports"))
    if body.get("underlay") is None:
        raise SpecError("spec.underlay", "required: {port: NAME, ip: A.B.C.D, mtu: 1500}")
    underlay = parse_underlay(body["underlay"], ports)
    egress = body.get("egress")
    if not isinstance(egress, str) or egress not in ports:
        raise SpecError("spec.egress", f"no port named {egress!r} in spec.ports")
    if egress == underlay.port:
        raise SpecError("spec.egress", f"{egress!r} is the underlay port (VXLAN only)")
    ingress = body.get("ingress", [p for p in ports if p not in (egress, underlay.port)])
    if not isinstance(ingress, list) or not ingress:
        raise SpecError("spec.ingress", "a list of port names, at least one")
    for i, p in enumerate(ingress):
        if not isinstance(p, str) or p not in ports:
            raise SpecError(f"spec.ingress[{i}]", f"no port named {p!r} in spec.ports")
        if p == underlay.port:
            raise SpecError(f"spec.ingress[{i}]", f"{p!r} is the underlay port (VXLAN only)")
        if p == egress:
            raise SpecError(f"spec.ingress[{i}]", f"{p!r} is the egress port")
        if p in ingress[:i]:
            raise SpecError(f"spec.ingress[{i}]", f"{p!r} is listed twice")
    cpus = parse_cpus(body)
    gateway_cpu = parse_number(body, "gateway_cpu", 1, int, 0, 4095)
    if gateway_cpu not in _cpu_set(cpus):
        raise SpecError("spec.gateway_cpu", f"CPU {gateway_cpu} is not in spec.cpus ({cpus})")
    return GatewayConfig(
        name=name, ports=ports, ingress=tuple(ingress), egress=egress, underlay=underlay,
        cpus=cpus, gateway_cpu=gateway_cpu,
        idle_s=float(parse_number(body, "idle_s", 30.0, (int, float), 0.01, 86400)),
        stall_us=float(parse_number(body, "stall_us", 2000.0, (int, float), 10, 1e6)),
        # above 1, or the backlog never clears (the moving flows' new packets join its end)
        release_factor=float(parse_number(body, "release_factor", 2.0, (int, float), 1.05,
                                          1000)),
        pace=parse_pace(body.get("pace", {}), ingress))


def _cpu_set(cpus: str) -> set[int]:
    """The CPUs of a list such as 0-3,6 (parse_cpus checked its form)."""
    out = set()
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
