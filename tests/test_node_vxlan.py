"""A node behind the gateway (issue 13): a Node config with `spec.underlay` on a ring-backed
port. VXLAN frames carrying an SFC's tag reach that SFC; `output: gateway` sends its packets
back encapsulated (read by scapy: outer addresses, tag, VNI); other tags are counted; a new
tag moves the SFC; the node's record carries its underlay; RunSFC over real gRPC (mTLS) passes
the route and names the field it refuses."""
import asyncio
import time

import grpc
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from serpens.agent import peer_moves
from serpens.agent.node import Node, SFCConflict, check_references
from serpens.agent.registration import Registration
from serpens.agent.service import AgentServicer
from serpens.agent.vxlan import VxlanRoute
from serpens.common import rpc
from serpens.common.node_spec import parse_node
from serpens.common.records import NodeLoad, NodeRecord, Underlay
from serpens.common.spec import SpecError
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc
from serpens.runtime_cy import _dataplane as dp

from support.etcd import client_identity, identity
from support.node_specs import MARK, NODE, sfc
from support.packets import trace, udp
from support.sites import Wire, unique_tag

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(60)]

NODE_IP, GW_IP, GW_MAC = "192.168.60.2", "192.168.60.1", "02:00:00:00:60:01"
UNDERLAY_NODE = NODE.replace("    dmz: net_ring_dmz\n", "    dmz: net_ring_dmz\n"
                             "    fabric: net_ring_fabric\n") + \
    f"  underlay: {{port: fabric, ip: {NODE_IP}, mtu: 1400}}\n"
LOCAL = "  output: dmz"                                         # the default SFC
BACK = "  output: gateway\n  match: [{proto: udp, dport: 53}]"  # to the gateway


def route(tag, vni=0, gateway=(GW_IP, GW_MAC)):
    return pb.VxlanRoute(tag=tag, vni=vni, gateway_ip=gateway[0], gateway_mac=gateway[1])


@pytest.fixture
def site(dataplane, pool, areas, request):
    """A started underlay node on ring ports, and its wires by port name."""
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"x{tag}{name[:3]}")
             for name in ("wan", "lan", "dmz", "fabric")}
    try:
        with Node(parse_node(UNDERLAY_NODE), [], dataplane=dataplane, pool=pool, areas=areas,
                  ports={n: w.port for n, w in wires.items()}) as node:
            yield node, wires
    finally:
        for w in wires.values():
            w.close()


def to_node(node, inner, tag, vni=0):
    """`inner` as the gateway sends it to the node: VXLAN with SFC tag `tag`."""
    return bytes(Ether(src=GW_MAC, dst=node.underlay_mac)
                 / IP(src=GW_IP, dst=NODE_IP, flags="DF")
                 / UDP(sport=50000, dport=4789, chksum=0)
                 / VXLAN(flags=0x08, vni=vni, reserved1=tag) / inner)


def decode_to_gateway(node, frame, tag, vni, gateway=(GW_IP, GW_MAC)) -> bytes:
    """The inner frame of `frame` after checking it is VXLAN from the node to `gateway` with
    `tag` and `vni`."""
    p = Ether(frame)
    assert (p.src, p.dst) == (node.underlay_mac, gateway[1])
    assert (p[IP].src, p[IP].dst) == (NODE_IP, gateway[0])
    again = IP(bytes(p[IP]))
    del again.chksum
    assert IP(bytes(again)).chksum == p[IP].chksum, "outer IPv4 checksum"
    assert p[UDP].dport == 4789
    assert (p[VXLAN].flags, p[VXLAN].vni, p[VXLAN].reserved1) == (0x08, vni, tag)
    return bytes(p[VXLAN].payload)


def wait_for_drops(node, reason, n):
    deadline = time.monotonic() + 5
    while node.stats()["vxlan"]["drops"][reason] < n:
        assert time.monotonic() < deadline, node.stats()["vxlan"]
        time.sleep(0.001)


def test_underlay_frames_go_to_the_sfc_of_their_tag_and_back_to_the_gateway(site):
    node, wires = site
    assert node.underlay_mac == dp.port_mac(wires["fabric"].port)
    node.apply_sfc(sfc("local", 1, LOCAL), vxlan=route(100))
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(101, vni=7))

    wires["fabric"].send([to_node(node, udp(seq=1), 100)])
    assert [trace(d) for d in wires["dmz"].receive(1, router=node.router)] == [[1]]
    wires["fabric"].send([to_node(node, udp(dport=53, seq=2), 101, vni=7)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 101, 7)) == [2]
    # the tag alone is not enough: the VNI is the tenant's
    wires["fabric"].send([to_node(node, udp(seq=3), 555), to_node(node, udp(seq=3), 101)])
    wait_for_drops(node, "unknown_tag", 2)
    st = node.stats()
    assert st["vxlan"]["rx"] == 2 and st["sfcs"]["back"]["out"] == 1
    assert st["ports"]["fabric"]["rx"] == 4 and st["ports"]["fabric"]["tx"] == 1
    assert dp.pull(wires["fabric"].sent) == [] and dp.pull(wires["dmz"].sent) == []

    # a new tag moves the SFC: the old one is unknown from then on
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(102, vni=7), generation=2)
    wires["fabric"].send([to_node(node, udp(dport=53, seq=4), 101, vni=7),
                          to_node(node, udp(dport=53, seq=5), 102, vni=7)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 102, 7)) == [2]
    wait_for_drops(node, "unknown_tag", 3)
    # a tag another SFC of the node has is a conflict, and nothing changes
    with pytest.raises(SFCConflict, match="sfc other: vxlan.tag: SFC back has VXLAN tag 102"):
        node.apply_sfc(sfc("other", 3, "  match: [{proto: udp, dport: 99}]"),
                       vxlan=route(102, vni=7))
    assert set(node.running) == {"local", "back"}
    # a new gateway address is the node's from then on
    moved = ("192.168.60.9", "02:00:00:00:60:09")
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(102, vni=7, gateway=moved), generation=3)
    wires["fabric"].send([to_node(node, udp(dport=53, seq=6), 102, vni=7)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 102, 7, gateway=moved)) == [2]
    # removed: its tag is unknown
    node.remove_sfc("back")
    wires["fabric"].send([to_node(node, udp(dport=53, seq=7), 102, vni=7)])
    wait_for_drops(node, "unknown_tag", 4)


def test_an_sfc_applied_again_with_the_same_route_keeps_its_router_sfc(site):
    node, wires = site
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(300, vni=3))
    first = node.sfc_ids["back"]
    node.apply_sfc(sfc("back", 4, BACK), vxlan=route(300, vni=3), generation=2)
    assert node.sfc_ids["back"] == first  # in place: flows and counters kept
    wires["fabric"].send([to_node(node, udp(dport=53), 300, vni=3)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 300, 3)) == [4]
    # a route no longer given: local only, the tag unknown
    node.apply_sfc(sfc("back", 4, "  output: dmz"), generation=3)
    wires["fabric"].send([to_node(node, udp(dport=53), 300, vni=3)])
    wait_for_drops(node, "unknown_tag", 1)


def arp_to_node(node, marker: int = 0) -> bytes:
    """An ARP request from the gateway for the node's address; with `marker`, a move's marker
    (runtime_cy/src/vxlan.h: "SM" and its id as the target hardware address)."""
    tha = (b"SM" + marker.to_bytes(4, "big")) if marker else bytes(6)
    return bytes(Ether(src=GW_MAC, dst=node.underlay_mac)
                 / ARP(op=1, hwsrc=GW_MAC, psrc=GW_IP, hwdst=tha.hex(":"), pdst=NODE_IP))


def test_a_move_waits_for_its_own_marker_not_for_any_arp_request(site):
    """agent/peer_moves.wait_quiet: another ARP request (the namespace's kernel, a retry,
    another move's marker) does not end the wait; the move's own marker does, once the SFC's
    instance returned the frames the gateway sent before it."""
    node, wires = site
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(400, vni=4))
    sfc_id, ours, other = node.sfc_ids["back"], 0x5EB2A001, 0x5EB2A002
    wires["fabric"].send([arp_to_node(node), arp_to_node(node, other)])
    replies = [Ether(f) for f in wires["fabric"].receive(2, router=node.router)]
    assert [(p[ARP].op, p[ARP].psrc, p.dst) for p in replies] == [(2, NODE_IP, GW_MAC)] * 2
    assert node.router.markers() == [other]
    assert node.router.quiesce()   # (its loop went round since it recorded the marker)
    assert node.router.marker_passed(other) and not node.router.marker_passed(ours)
    with pytest.raises(peer_moves.NotQuiet, match=f"marker {ours} did not arrive"):
        peer_moves.wait_quiet(node.router, sfc_id, ours, time.monotonic() + 0.3)

    before = node.router.stats()["instances"]
    wires["fabric"].send([to_node(node, udp(dport=53, seq=k), 400, vni=4) for k in range(20)]
                         + [arp_to_node(node, ours)])
    peer_moves.wait_quiet(node.router, sfc_id, ours, time.monotonic() + 10)
    after = node.router.stats()["instances"]
    returned = sum(c["returned"] - before.get(i, {"returned": 0})["returned"]
                   for i, c in after.items() if c["sfc"] == sfc_id)
    assert returned == 20, after   # every frame in front of the marker went through the NF
    assert node.router.quiet(sfc_id)   # (none waits to be placed, held or being released)
    assert node.router.markers() == [other, ours]
    assert node.stats()["vxlan"]["arp_replies"] == 3


def test_the_node_record_carries_the_underlay(site):
    node, wires = site
    reg = Registration(None, node.spec, node.stats, address="10.0.0.5:50061")
    record = NodeRecord.decode(reg.record(NodeLoad()))
    assert record.underlay == Underlay(ip=NODE_IP, mac=dp.port_mac(wires["fabric"].port),
                                       mtu=1400)


def test_routes_and_outputs_that_do_not_fit_the_node_are_refused_by_field():
    plain, under = parse_node(NODE), parse_node(UNDERLAY_NODE)
    gateway = sfc("a", 1, BACK)
    ok = VxlanRoute.of(route(5))
    cases = [
        (plain, [gateway], {"a": ok}, "sfc a: spec.output", "no underlay"),
        (under, [gateway], {}, "sfc a: spec.output", "no VXLAN route"),
        (under, [sfc("a", 1, "  output: fabric")], {}, "sfc a: spec.output", "underlay port"),
        (plain, [sfc("a", 1)], {"a": ok}, "sfc a: vxlan", "no underlay"),
    ]
    for node, sfcs, routes, field, words in cases:
        with pytest.raises(SpecError, match=words) as e:
            check_references(node, sfcs, routes)
        assert e.value.field == field
    with pytest.raises(SFCConflict) as e:
        check_references(under, [sfc("a", 1), sfc("b", 2, BACK)], {"a": ok, "b": ok})
    assert e.value.field == "sfc b: vxlan.tag"
    check_references(under, [sfc("a", 1), sfc("b", 2, BACK)],
                     {"a": ok, "b": VxlanRoute.of(route(6))})
    assert VxlanRoute.of(route(0)) is None and VxlanRoute.of(None) is None
    for bad, field in [(route(1 << 24), "vxlan.tag"), (route(1, vni=1 << 24), "vxlan.vni"),
                       (route(1, gateway=("10.0.0", GW_MAC)), "vxlan.gateway_ip"),
                       (route(1, gateway=("224.0.0.1", GW_MAC)), "vxlan.gateway_ip"),
                       (route(1, gateway=(GW_IP, "02:00:00:00:60")), "vxlan.gateway_mac")]:
        with pytest.raises(SpecError) as e:
            VxlanRoute.of(bad)
        assert e.value.field == field


# ---- the Agent service over real gRPC (mTLS) ------------------------------------------------

def spec_text(name, mark, extra):
    """An SFC as the controller sends it: its `mark` NF deployed (source in nf_sources)."""
    return f"""
apiVersion: serpens/v1
kind: SFC
metadata: {{name: {name}}}
spec:
  nfs:
    mark: {{nf: mark, config_hex: "{mark:02x}00"}}
  chain: [mark]
{extra}"""


def run(spec, **kw):
    return pb.RunSFCRequest(spec=spec, nf_sources={"mark": open(MARK).read()}, **kw)


async def run_sfc_scenario(stub, node, wires):
    async def refused(request, code):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RunSFC(request, timeout=30)
        assert e.value.code() == code, e.value.details()
        return e.value.details()

    back = spec_text("back", 2, BACK)
    assert "spec.output" in await refused(
        run(back, generation=1),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert "spec.output" in await refused(  # tag 0: no route
        run(back, generation=1, vxlan=pb.VxlanRoute(gateway_ip=GW_IP)),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert "vxlan.gateway_mac" in await refused(
        run(back, generation=1, vxlan=route(9, gateway=(GW_IP, "nope"))),
        grpc.StatusCode.INVALID_ARGUMENT)
    reply = await stub.RunSFC(run(back, generation=1, replicas=1,
                                               vxlan=route(9, vni=4)), timeout=30)
    assert (reply.name, reply.instances) == ("back", 1)
    assert "vxlan.tag" in await refused(
        run(spec_text("other", 3, LOCAL), generation=1, vxlan=route(9, 4)),
        grpc.StatusCode.FAILED_PRECONDITION)

    frames = [to_node(node, udp(dport=53, seq=s), 9, vni=4) for s in range(5)]
    await asyncio.to_thread(wires["fabric"].send, frames + [to_node(node, udp(), 10, vni=4)])
    out = await asyncio.to_thread(wires["fabric"].receive, 5, 10.0, node.router)
    assert [trace(decode_to_gateway(node, d, 9, 4)) for d in out] == [[2]] * 5
    await asyncio.to_thread(wait_for_drops, node, "unknown_tag", 1)
    status = await stub.GetNode(pb.GetNodeRequest(), timeout=10)
    assert status.vxlan_rx == 5 and status.vxlan_drops["unknown_tag"] == 1
    assert set(status.vxlan_drops) == {"not_ours", "bad_outer", "over_mtu", "unknown_tag"}
    assert status.ports["fabric"].tx == 5


def test_run_sfc_over_grpc_passes_the_vxlan_route(site):
    node, wires = site

    async def serve():
        server, port = await rpc.create_server("127.0.0.1:0", [
            (pb_grpc.add_AgentServicer_to_server, AgentServicer(node),
             rpc.service_name("Agent"))], identity("serpens-agent", "agent"))
        await server.start()
        try:
            async with rpc.channel(f"127.0.0.1:{port}", client_identity()) as channel:
                await run_sfc_scenario(pb_grpc.AgentStub(channel), node, wires)
        finally:
            await server.stop(None)
    asyncio.run(serve())


def test_a_new_gateway_address_changes_only_the_gateway(site):
    node, wires = site
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(300, vni=3), generation=1,
                   incarnation=1, replicas=1)
    entry = node.running["back"]
    first, manager = node.sfc_ids["back"], entry.manager
    moved = ("192.168.60.9", "02:00:00:00:60:09")
    node.apply_sfc(sfc("back", 2, BACK), vxlan=route(300, vni=3, gateway=moved),
                   generation=1, incarnation=1, replicas=1)
    assert node.running["back"] is entry and entry.manager is manager  # instances kept
    assert node.sfc_ids["back"] == first
    assert AgentServicer(node)._sfc("back").vxlan == route(300, vni=3, gateway=moved)
    wires["fabric"].send([to_node(node, udp(dport=53), 300, vni=3)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 300, 3, gateway=moved)) == [2]


def test_a_routed_sfcs_match_rules_are_the_gateways(site):
    """Its packets come by tag: rules naming the gateway's ingress ports are not the node's
    to check or install."""
    node, wires = site
    at_gateway = "  output: gateway\n  match: [{port: gw-in, dport: 53}]"
    with pytest.raises(SpecError) as e:
        check_references(node.spec, [sfc("a", 1, at_gateway)], {})
    assert e.value.field == "sfc a: spec.output"
    check_references(node.spec, [sfc("a", 1, at_gateway.replace("gateway\n", "dmz\n"))],
                     {"a": VxlanRoute.of(route(7))})
    node.apply_sfc(sfc("a", 5, at_gateway), vxlan=route(7))
    wires["fabric"].send([to_node(node, udp(dport=53), 7)])
    out = wires["fabric"].receive(1, router=node.router)
    assert trace(decode_to_gateway(node, out[0], 7, 0)) == [5]
