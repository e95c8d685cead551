"""`serpens-agent` as a server behind the gateway: in its own network namespace, its Node
config's underlay is a net_af_packet port on the namespace's veth (DPDK binds the socket in
the agent's namespace). Its node record in etcd carries the underlay address and the veth's
MAC; a RunSFC over mTLS with a VXLAN route makes the frames the test sends as the gateway (from
the other side of the veth) come back encapsulated with the SFC's tag and VNI, and the router
answers ARP for its underlay address."""
import asyncio
import ipaddress
import json
import os
import socket
import tempfile
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from serpens.cli.testbed import Testbed
from serpens.common.keys import Keys
from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import Agent, wait_until
from support.etcd import client_identity, start_etcd
from support.node_specs import MARK
from support.packets import trace, udp

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

TAG, VNI = 4242, 9
SFC = f"""
apiVersion: serpens/v1
kind: SFC
metadata: {{name: back}}
spec:
  nfs:
    mark: {{nf: mark, config_hex: "0500"}}
  chain: [mark]
  output: gateway
"""


def node_config(address: str, state_dir: str) -> str:
    return f"""
apiVersion: serpens/v1
kind: Node
metadata: {{name: ul}}
spec:
  ports:
    wan: net_null_wan,no-rx=1
    lan: net_null_lan,no-rx=1
    fabric: net_af_packet_ul,iface=eth1
  output: lan
  pool: 1
  state_dir: {state_dir}
  underlay: {{port: fabric, ip: {address}, mtu: 1500}}
"""


def mac_of(link: str) -> str:
    with open(f"/sys/class/net/{link}/address") as f:
        return f.read().strip()


def node_record(etcd) -> dict | None:
    async def get():
        async with await Store.connect(etcd.endpoint, timeout=3,
                                       identity=client_identity()) as store:
            item = await store.get(Keys().node("ul"))
            return json.loads(item.value) if item else None
    return asyncio.run(get())


def frames(sock, wanted, want: int, timeout: float = 10.0) -> list[Ether]:
    """Frames seen on the bridge for which `wanted` holds, until `want` of them."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            p = Ether(sock.recv(65535))
        except socket.timeout:
            continue
        if wanted(p):
            got.append(p)
    return got


def test_an_agent_in_a_namespace_serves_its_underlay_over_af_packet(tmp_path):
    bed = Testbed(f"u{os.getpid() % 10000}", ["u"])
    etcd = agent = None
    state = tempfile.TemporaryDirectory(prefix="serpens-underlay-", dir="/dev/shm")
    try:
        bed.create()
        # the test plays the gateway from the underlay bridge, at an address nobody has
        bridge = bed.bridges["underlay"]
        node_ip, gw_mac = bed.underlay["u"], mac_of(bridge)
        gw_ip = str(ipaddress.ip_network(bed.underlay_net)[1])
        etcd = start_etcd(host=bed.host)
        path = tmp_path / "node.yaml"
        path.write_text(node_config(node_ip, state.name))
        agent = Agent(etcd.endpoint, str(path), host=bed.address["u"], netns=bed.ns["u"])
        record = wait_until(lambda: node_record(etcd), 10, agent.output)
        veth_mac = json.loads(
            os.popen(f"ip -n {bed.ns['u']} -j link show eth1").read())[0]["address"]
        assert record["underlay"] == {"ip": node_ip, "mac": veth_mac, "mtu": 1500}

        reply = agent.stub.RunSFC(pb.RunSFCRequest(
            spec=SFC, nf_sources={"mark": open(MARK).read()}, generation=1, replicas=1,
            vxlan=pb.VxlanRoute(tag=TAG, vni=VNI, gateway_ip=gw_ip, gateway_mac=gw_mac)),
            timeout=60)
        assert reply.instances == 1

        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        try:
            sock.bind((bridge, 0))
            sock.settimeout(0.2)
            ask = Ether(src=gw_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
                op=1, hwsrc=gw_mac, psrc=gw_ip, pdst=node_ip)
            sock.send(bytes(ask))
            # (the namespace's kernel does not have the underlay address: the router answers)
            answer = frames(sock, lambda p: ARP in p and p[ARP].op == 2
                            and p[ARP].psrc == node_ip, 1)
            assert answer and answer[0][ARP].hwsrc == veth_mac, agent.output()
            inner = [udp(sport=3000 + i, seq=i) for i in range(5)]
            for frame in inner:
                sock.send(bytes(Ether(src=gw_mac, dst=veth_mac)
                                / IP(src=gw_ip, dst=node_ip, flags="DF")
                                / UDP(sport=50000 + len(frame), dport=4789, chksum=0)
                                / VXLAN(flags=0x08, vni=VNI, reserved1=TAG) / frame))
            back = frames(sock, lambda p: IP in p and p[IP].src == node_ip and
                          p[IP].proto == 17 and p[UDP].dport == 4789, len(inner))
        finally:
            sock.close()
        assert len(back) == len(inner), agent.stub.GetNode(pb.GetNodeRequest(), timeout=5)
        for p in back:
            assert (p.src, p.dst, p[IP].dst) == (veth_mac, gw_mac, gw_ip)
            assert (p[VXLAN].flags, p[VXLAN].vni, p[VXLAN].reserved1) == (0x08, VNI, TAG)
        assert sorted(trace(bytes(p[VXLAN].payload)) for p in back) == [[5]] * len(inner)
        status = agent.stub.GetNode(pb.GetNodeRequest(), timeout=5)
        assert status.vxlan_rx == len(inner) and status.arp_replies >= 1
        assert agent.stop() == 0, agent.output()
        agent = None
    finally:
        if agent is not None:
            agent.stop()
        if etcd is not None:
            etcd.destroy()
        bed.remove()
        state.cleanup()
