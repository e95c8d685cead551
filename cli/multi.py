"""What `serpens up --servers N` runs besides etcd and the controller: N servers and a gateway,
each in its own network namespace of a cli/testbed.py testbed, and the SFC spread over them.

- A server (`s1`..`sN`): `serpens-agent` whose node has an underlay port (net_af_packet on
  the namespace's eth1, its underlay address) and a null port as its input and local
  output (its packets arrive over VXLAN from the gateway and go back the same way).
- The gateway (`gw`): `serpens-gateway` with the capture examples/traffic.pcap replayed at a
  steady rate as its ingress (as examples/node-local.yaml does for a node), net_af_packet on
  eth1 as its underlay, a null egress (decapsulated frames back from the servers leave there).
- The SFC: examples/fw-mon-nat-spread.yaml (FW -> MON -> NAT, `output: gateway`) with
  `placement.spread` and `scale` set to N: one replica on each server.
Readiness: each server's node registered, the gateway serving and registered, and for each
SFC: running on as many servers as it spreads over and its packets back at the gateway's
egress (to its servers, if its output is not the gateway) (GetGateway, with the controller's
certificate: the Gateway service answers only that role).
"""
from __future__ import annotations

import json
import os

import grpc

from serpens.cli.testbed import UNDERLAY, Testbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SPREAD_SFC = os.path.join(EXAMPLES, "fw-mon-nat-spread.yaml")
GATEWAY = "gw"                # the gateway's member name in the testbed and its metadata.name
AGENT_PORT, GATEWAY_PORT = 50061, 50071   # in each member's namespace, on its eth0
MAX_SERVERS = 16
SERVER_POOL = 2               # pool processes of each server: instances it runs at once


def server_names(n: int) -> list[str]:
    return [f"s{i}" for i in range(1, n + 1)]


def testbed(tag: str, servers: int) -> Testbed:
    return Testbed(tag, [GATEWAY, *server_names(servers)])


def server_node(name: str, underlay_ip: str, pool: int, state_dir: str, mtu: int = 1500) -> str:
    """A server's Node config: the underlay on eth1 (DPDK's alone), a null port as input and
    local output."""
    return f"""apiVersion: serpens/v1
kind: Node
metadata: {{name: {name}}}
spec:
  ports:
    lan: net_null_lan,no-rx=1
    fabric: net_af_packet_fabric,iface={UNDERLAY}
  input: [lan]
  output: lan
  pool: {pool}
  state_dir: {state_dir}
  underlay: {{port: fabric, ip: {underlay_ip}, mtu: {mtu}}}
"""


def replayed(capture: str = "") -> str:
    """An ingress device replaying `capture` (default examples/traffic.pcap) forever."""
    return f"net_pcap_wan,rx_pcap={capture or os.path.join(EXAMPLES, 'traffic.pcap')},infinite_rx=1"


def gateway_config(underlay_ip: str, ingress: str, pps: float | None = None,
                   egress: str = "net_null_out,no-rx=1", mtu: int = 1500) -> str:
    """The gateway's config: `ingress` (a DPDK device string) as port wan, paced at `pps`
    packets/s if given (a replayed capture), the underlay on eth1, `egress` as port out (frames
    back from the servers leave there)."""
    pace = f"  pace: {{wan: {pps:g}}}\n" if pps else ""
    return f"""apiVersion: serpens/v1
kind: Gateway
metadata: {{name: {GATEWAY}}}
spec:
  ports:
    wan: {ingress}
    out: {egress}
    fabric: net_af_packet_fabric,iface={UNDERLAY}
  ingress: [wan]
  egress: out
  underlay: {{port: fabric, ip: {underlay_ip}, mtu: {mtu}}}
""" + pace


def spread_sfc(servers: int, path: str = SPREAD_SFC) -> str:
    """The spread example with placement.spread set to `servers` and one replica on each,
    scalable up to every server's pool (as JSON, which the API takes as well as YAML)."""
    import yaml
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["spec"]["placement"] = {"spread": servers}
    doc["spec"]["scale"] = {"min": servers, "max": servers * SERVER_POOL}
    return json.dumps(doc)


# ---- probes -------------------------------------------------------------------------------

def node_registered(api, name: str) -> bool:
    """The controller lists node `name` (its agent registered in etcd)."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    try:
        with api.channel() as channel:
            nodes = serpens_pb2_grpc.SerpensStub(channel).ListNodes(pb.ListNodesRequest(),
                                                                    timeout=2).nodes
        return any(n.name == name for n in nodes)
    except grpc.RpcError:
        return False


def gateway_registered(api, name: str = GATEWAY) -> bool:
    """The controller lists gateway `name` (registered in etcd under its lease)."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    try:
        with api.channel() as channel:
            gateways = serpens_pb2_grpc.SerpensStub(channel).ListGateways(
                pb.ListGatewaysRequest(), timeout=2).gateways
        return any(g.name == name for g in gateways)
    except grpc.RpcError:
        return False


def gateway_status(gateway):
    """GetGateway of the gateway (`gateway`: a cli.config.Target with the controller's
    identity); None while it does not answer."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    try:
        with gateway.channel() as channel:
            return serpens_pb2_grpc.GatewayStub(channel).GetGateway(pb.GetGatewayRequest(),
                                                                    timeout=2)
    except grpc.RpcError:
        return None


def spread_flowing(api, gateway, name: str, servers: int, error):
    """A probe: SFC `name` runs on as many of the `servers` as its spec spreads it over, and
    the gateway sends it packets and, with `output: gateway`, gets them back; `error(message)`
    is raised when the SFC failed."""
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc

    def probe():
        try:
            with api.channel() as channel:
                sfc = serpens_pb2_grpc.SerpensStub(channel).GetSFC(
                    pb.GetSFCRequest(name=name), timeout=2)
        except grpc.RpcError:
            return False
        if sfc.status.phase == "Failed":
            raise error(f"sfc {name} failed: {sfc.status.message}")
        spec = json.loads(sfc.spec_json or "{}").get("spec", {})
        spread = min(servers, (spec.get("placement") or {}).get("spread", 1))
        placed = len(sfc.status.nodes) or int(bool(sfc.status.node))  # nodes: when several
        if sfc.status.phase != "Running" or placed < spread:
            return False
        status = gateway_status(gateway)
        seen = status and status.sfcs.get(name)
        if not seen or (seen.back if spec.get("output") == "gateway" else seen.tx) == 0:
            return False
        return name if _reported_in(api, name) else False   # status then shows its rates
    return probe


def _reported_in(api, name: str) -> bool:
    """A node has reported packets into SFC `name` (agents report every second or so)."""
    from serpens.cli.status import node_records
    from serpens.proto.serpens.v1 import serpens_pb2 as pb
    from serpens.proto.serpens.v1 import serpens_pb2_grpc
    try:
        with api.channel() as channel:
            nodes = serpens_pb2_grpc.SerpensStub(channel).ListNodes(pb.ListNodesRequest(),
                                                                    timeout=2).nodes
    except grpc.RpcError:
        return False
    return any((load := r.load.sfcs.get(name)) and load.in_pps > 0
               for r in node_records(nodes).values())


# What a user reads in the gateway's drops (docs/dataplane.md has them all)
DROP_REASONS = {
    "no_server": "frames of the SFC while no server ran it (e.g. before its first one "
                 "started)",
    "unmatched": "frames that are no SFC's (no route's match)",
}


def show_gateway(gateway) -> None:
    """One line per SFC of the gateway: frames in, to servers, back, and its drops."""
    status = gateway_status(gateway)
    if status is None:
        print(f"gateway {GATEWAY}: not answering")
        return
    drops = {k: v for k, v in status.drops.items() if v}
    print(f"\nGATEWAY {status.name} (term {status.term})"
          + ("  drops " + " ".join(f"{k} {v}" for k, v in sorted(drops.items()))
             if drops else ""))
    print(f"  {'SFC':<16} {'TAG':>5} {'FROM OUTSIDE':>13} {'TO SERVERS':>11} {'BACK':>11}  "
          "SERVERS (node:weight)  DROPS")
    seen = set(drops)
    for name, sfc in sorted(status.sfcs.items()):
        servers = ",".join(f"{n}:{w}" for n, w in sorted(sfc.servers.items()))
        seen |= {k for k, v in sfc.drops.items() if v}
        drops = " ".join(f"{k} {v}" for k, v in sorted(sfc.drops.items()) if v) or "-"
        print(f"  {name:<16} {sfc.tag:>5} {sfc.rx:>13} {sfc.tx:>11} {sfc.back:>11}  "
              f"{servers:<21}  {drops}")
    for reason in sorted(seen & DROP_REASONS.keys()):  # (counted since the gateway started)
        print(f"  {reason}: {DROP_REASONS[reason]}")
