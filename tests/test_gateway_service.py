"""A real `serpens-gateway` process with a real etcd over mTLS: it registers under its lease
(gone at once on SIGTERM, within the TTL when killed -9), takes route sets pushed with the
leader's term (an older term ABORTED, a bad set INVALID_ARGUMENT naming the field), frames
from its paced capture then leave VXLAN-encapsulated for the route's server, GetGateway
counts them, only the controller's identity may call it, and health and reflection answer."""
import asyncio
import json
import os
import signal
import struct
import time

import grpc
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from serpens.common.keys import Keys
from serpens.common.records import GatewayRecord, RouteRecord, RouteServer
from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc
from serpens.runtime_cy.primary import remove_stale_files

from support.cluster import Gateway, check_health_and_reflection, wait_until
from support.etcd import client_identity, identity, secure_channel
from support.packets import flow_frame

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

KEYS = Keys()
GW_UNDERLAY = "10.77.0.1"
S1 = RouteServer("node1", "10.77.0.11", "02:00:00:00:77:11", 1)
S2 = RouteServer("node2", "10.77.0.12", "02:00:00:00:77:12", 3)


def pcap_frames(path):
    """The frames of a pcap file being written (a record cut short is left out)."""
    with open(path, "rb") as f:
        data = f.read()
    frames, at = [], 24
    while at + 16 <= len(data):
        size = struct.unpack_from("<I", data, at + 8)[0]
        if at + 16 + size > len(data):
            break
        frames.append(data[at + 16:at + 16 + size])
        at += 16 + size
    return frames


def write_config(tmp, name):
    """A gateway whose outside is a capture replayed at 2000 frames/s, whose underlay and
    egress are captures written (the underlay receives nothing)."""
    wrpcap(str(tmp / "in.pcap"), [Ether(flow_frame(f, 0)) for f in range(32)])
    with open(tmp / "none.pcap", "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    path = tmp / "gw.yaml"
    path.write_text(f"""
apiVersion: serpens/v1
kind: Gateway
metadata:
  name: {name}
spec:
  ports:
    wan: net_pcap_wan,rx_pcap={tmp}/in.pcap,infinite_rx=1
    out: net_pcap_out,rx_pcap={tmp}/none.pcap,tx_pcap={tmp}/out.pcap
    fabric: net_pcap_fab,rx_pcap={tmp}/none.pcap,tx_pcap={tmp}/under.pcap
  egress: out
  underlay: {{port: fabric, ip: {GW_UNDERLAY}, mtu: 1500}}
  pace: {{wan: 2000}}
""")
    return str(path)


def gateway_record(etcd, name):
    async def get():
        async with await Store.connect(etcd.endpoint, timeout=3,
                                       identity=client_identity()) as store:
            item = await store.get(KEYS.gateway(name))
            return GatewayRecord.decode(item.value, name) if item else None
    return asyncio.run(get())


def push(stub, routes, term):
    return stub.SetRoutes(pb.SetRoutesRequest(routes=[r.to_message() for r in routes],
                                              term=term), timeout=10)


@pytest.fixture(scope="module")
def gateway(etcd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw")
    g = Gateway(etcd.url, write_config(tmp, "gw-main"))
    g.tmp = tmp
    yield g
    assert g.stop() == 0, g.output()
    assert gateway_record(etcd, "gw-main") is None  # deregistered at once
    assert "Traceback" not in g.output(), g.output()


def test_it_registers_its_address_underlay_and_ingress(etcd, gateway):
    record = wait_until(lambda: gateway_record(etcd, "gw-main"), 10, gateway.output)
    assert record.address == gateway.address
    assert record.underlay.ip == GW_UNDERLAY and record.underlay.mtu == 1500
    assert record.ingress == ("wan",) and record.term == 0
    assert record.underlay.mac != "00:00:00:00:00:00"


def test_health_and_reflection_answer(gateway):
    check_health_and_reflection(gateway.channel, "serpens.v1.Gateway")


def test_routes_pushed_send_the_capture_to_the_servers(etcd, gateway):
    web = RouteRecord(sfc="web", tag=77, vni=3, servers=(S1, S2))
    reply = push(gateway.stub, [web], term=5)
    assert (reply.term, reply.routes) == (5, 1)
    mac = gateway_record(etcd, "gw-main").underlay.mac

    def encapsulated():
        return [Ether(f) for f in pcap_frames(gateway.tmp / "under.pcap")
                if VXLAN in Ether(f)]
    frames = wait_until(lambda: len(encapsulated()) >= 200 and encapsulated(), 20,
                        gateway.output)
    for p in frames:
        assert (p.src, p[IP].src, p[UDP].dport) == (mac, GW_UNDERLAY, 4789)
        assert (p[VXLAN].reserved1, p[VXLAN].vni) == (77, 3)
        assert (p[IP].dst, p.dst) in {(S1.ip, S1.mac), (S2.ip, S2.mac)}
    # a flow keeps its server: the capture's 32 flows repeat
    by_flow = {}
    for p in frames:
        by_flow.setdefault(p[VXLAN].payload[UDP].sport, set()).add(p[IP].dst)
    assert len(by_flow) == 32 and all(len(s) == 1 for s in by_flow.values())

    status = gateway.stub.GetGateway(pb.GetGatewayRequest(), timeout=5)
    assert status.name == "gw-main" and status.term == 5
    sfc = status.sfcs["web"]
    assert sfc.tag == 77 and dict(sfc.servers) == {"node1": 1, "node2": 3}
    assert sfc.rx >= sfc.tx >= len(frames) and sfc.new_flows == 32
    assert set(sfc.drops) == {"no_server", "over_mtu", "no_room"}
    assert status.ports["wan"].rx >= sfc.rx and status.ports["fabric"].tx >= len(frames)
    assert set(status.drops) >= {"unmatched", "not_ours", "unknown_tag"}
    # the record carries the term applied
    wait_until(lambda: gateway_record(etcd, "gw-main").term == 5, 5, gateway.output)


def test_an_older_term_is_aborted_and_a_bad_set_refused_whole(gateway):
    web = RouteRecord(sfc="web", tag=77, vni=3, servers=(S1, S2))
    push(gateway.stub, [web], term=6)
    with pytest.raises(grpc.RpcError) as e:
        push(gateway.stub, [], term=5)
    assert e.value.code() == grpc.StatusCode.ABORTED and "term 6" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        push(gateway.stub, [web, RouteRecord(sfc="dns", tag=77, servers=(S1,))], term=7)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("routes[1].tag"), e.value.details()
    bad = web.to_message()
    bad.match_json = "[{"
    with pytest.raises(grpc.RpcError) as e:
        gateway.stub.SetRoutes(pb.SetRoutesRequest(routes=[bad], term=7), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("routes[0].match_json"), e.value.details()
    status = gateway.stub.GetGateway(pb.GetGatewayRequest(), timeout=5)
    assert status.term == 6 and list(status.sfcs) == ["web"]  # nothing changed
    push(gateway.stub, [web], term=6)  # the same leader again: applied (nothing to change)


def marker_mac(marker: int) -> str:
    """The target hardware address of a move's marker (runtime_cy/src/vxlan.h)."""
    return ":".join(f"{b:02x}" for b in b"SM" + marker.to_bytes(4, "big"))


def test_held_flows_move_on_release_and_go_back_when_the_hold_expires(gateway):
    """HoldFlows/ReleaseFlows (docs/moves.md): the source gets the marker, the moving flows'
    frames wait and go to the target on commit; a hold nobody releases goes back to the
    source by itself; bad requests name the field."""
    web = RouteRecord(sfc="web", tag=77, vni=3, servers=(S1, S2))
    push(gateway.stub, [web], term=8)

    def count():
        return len(pcap_frames(gateway.tmp / "under.pcap"))

    def under(since):
        return [Ether(f) for f in pcap_frames(gateway.tmp / "under.pcap")[since:]]

    def sent_to(ip, since):
        return {p[VXLAN].payload[UDP].sport for p in under(since)
                if VXLAN in p and p[IP].dst == ip}
    with pytest.raises(grpc.RpcError) as e:
        gateway.stub.HoldFlows(pb.HoldFlowsRequest(sfc="dns", source_ip=S1.ip,
                                                   target_ip=S2.ip), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "sfc" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        gateway.stub.HoldFlows(pb.HoldFlowsRequest(sfc="web", source_ip="10.77.0.99",
                                                   target_ip=S2.ip), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and \
        "source 10.77.0.99" in e.value.details()
    start = count()
    wait_until(lambda: sent_to(S1.ip, start), 10, gateway.output)
    start = count()
    hold = gateway.stub.HoldFlows(pb.HoldFlowsRequest(sfc="web", source_ip=S1.ip,
                                                      target_ip=S2.ip, timeout_ms=5000),
                                  timeout=5)
    time.sleep(0.5)
    arp = [p for p in under(start) if p.type == 0x0806]
    assert len(arp) == 1 and (arp[0].pdst, arp[0].dst) == (S1.ip, S1.mac)   # the marker
    assert arp[0].hwdst == marker_mac(hold.marker) and hold.marker   # named by the move
    released = gateway.stub.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=hold.move_id,
                                                                commit=True), timeout=5)
    assert released.flows > 0 and released.held > 0 and released.held_dropped == 0
    after = count()
    time.sleep(0.5)
    assert not sent_to(S1.ip, after), "a moved flow went to the source"
    with pytest.raises(grpc.RpcError) as e:   # released already
        gateway.stub.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=hold.move_id), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # the flows now on S2 held, and nobody releases them: back where they were
    moves = gateway.stub.GetGateway(pb.GetGatewayRequest(), timeout=5).sfcs["web"].moves
    hold = gateway.stub.HoldFlows(pb.HoldFlowsRequest(sfc="web", source_ip=S2.ip,
                                                      target_ip=S1.ip, timeout_ms=300),
                                  timeout=5)
    wait_until(lambda: gateway.stub.GetGateway(pb.GetGatewayRequest(),
                                               timeout=5).sfcs["web"].moves == moves + 1,
               5, gateway.output)
    with pytest.raises(grpc.RpcError) as e:
        gateway.stub.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=hold.move_id), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in e.value.details()
    after = count()
    time.sleep(0.5)
    assert sent_to(S2.ip, after) and not sent_to(S1.ip, after)


@pytest.mark.parametrize("who, role", [("ops", "viewer"), ("serpens-agent", "agent")])
def test_only_the_controller_may_call_it(gateway, who, role):
    with secure_channel(gateway.address, identity(who, role)) as channel:
        stub = serpens_pb2_grpc.GatewayStub(channel)
        for call in (lambda: stub.GetGateway(pb.GetGatewayRequest(), timeout=5),
                     lambda: stub.SetRoutes(pb.SetRoutesRequest(term=99), timeout=5),
                     lambda: stub.HoldFlows(pb.HoldFlowsRequest(sfc="web"), timeout=5),
                     lambda: stub.ReleaseFlows(pb.ReleaseFlowsRequest(move_id=1), timeout=5)):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = gateway.stub.GetGateway(pb.GetGatewayRequest(), timeout=5)
    assert status.term < 99


def test_a_killed_gateway_leaves_with_its_lease(etcd, tmp_path):
    g = Gateway(etcd.url, write_config(tmp_path, "gw-killed"))
    try:
        wait_until(lambda: gateway_record(etcd, "gw-killed"), 10, g.output)
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait(10)
        t0 = time.monotonic()
        wait_until(lambda: gateway_record(etcd, "gw-killed") is None, 6, g.output)
        assert time.monotonic() - t0 < 4  # the lease TTL is 2 s
    finally:
        g.channel.close()
        if g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()
        remove_stale_files(f"serpens-gw-gw-killed-{g.proc.pid}")
