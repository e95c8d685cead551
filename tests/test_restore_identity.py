"""A state snapshot goes only into the NF code that wrote it (issue 11 §5): the Agent service
over real gRPC, on a real node (ring ports, the session's pool) running stock MON and NAT.
NAT's snapshot restored into MON is refused with FAILED_PRECONDITION naming both and MON's
counters stay; MON's own snapshot is accepted; `force` installs one whose code is unknown."""
import asyncio
import json

import grpc
import pytest

from serpens.agent.node import Node
from serpens.agent.process_pool import ProcessPool
from serpens.agent.service import AgentServicer
from serpens.common import rpc
from serpens.common.bulk import pieces
from serpens.common.node_spec import parse_node
from serpens.common.spec import parse_sfc
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.node_specs import NODE
from support.packets import udp
from support.sites import Wire, unique_tag

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(60)]

MON_NAT = """
apiVersion: serpens/v1
kind: SFC
metadata: {name: mon-nat}
spec:
  nfs:
    mon: {stock: mon}
    nat: {stock: nat, config: {internal: 10.0.0.0/8, external_ips: [203.0.113.1]}}
  chain: [mon, nat]
"""


def mon_packets(reply) -> int:
    flows = next(t for t in reply.tables if t.name == "flows")
    return sum(json.loads(e.decoded)["packets"] for e in flows.entries)


async def scenario(stub, wires):
    read = pb.ReadStateRequest(sfc="mon-nat", nf="mon", merge=True)
    before = mon_packets(await stub.ReadState(read, timeout=10))
    assert before == 20
    nat = await stub.SnapshotState(pb.SnapshotStateRequest(sfc="mon-nat", nf="nat"), timeout=30)
    assert nat.nf_code == "stock:nat" and len(nat.nf_code_sha256) == 64
    mon = await stub.SnapshotState(pb.SnapshotStateRequest(sfc="mon-nat", nf="mon"), timeout=30)
    assert mon.nf_code == "stock:mon" and mon.nf_code_sha256 != nat.nf_code_sha256

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="mon-nat", nf="mon",
                                                              snapshot=nat)), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshot:" in e.value.details() and "stock:nat" in e.value.details() \
        and "stock:mon" in e.value.details(), e.value.details()
    assert mon_packets(await stub.ReadState(read, timeout=10)) == before  # MON untouched

    wires["wan"].send([udp(dport=53, src="10.0.0.2", sport=2000 + i) for i in range(5)])
    wires["lan"].receive(5)
    assert mon_packets(await stub.ReadState(read, timeout=10)) == before + 5
    reply = await stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="mon-nat", nf="mon",
                                                           snapshot=mon)), timeout=30)
    assert reply.tables == len(mon.tables)
    assert mon_packets(await stub.ReadState(read, timeout=10)) == before  # back in time

    anonymous = pb.StateSnapshot()
    anonymous.CopyFrom(mon)
    anonymous.ClearField("nf_code_sha256")  # as an older agent wrote them
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="mon-nat", nf="mon",
                                                       snapshot=anonymous)), timeout=30)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="mon-nat", nf="mon",
                                                          snapshot=anonymous, force=True)),
                            timeout=30)

    # a snapshot that says its tables hold more than the state filesystem can (a corrupt or
    # crafted file) is refused by the field before anything is inflated, and nothing changes
    for size in (1 << 62, (1 << 64) - 1):
        boast = pb.StateSnapshot()
        boast.CopyFrom(mon)
        boast.tables[0].size = size
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="mon-nat", nf="mon",
                                                           snapshot=boast)), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "snapshot.tables[0].size" in e.value.details() \
            and "more than the node's state filesystem" in e.value.details()
    assert mon_packets(await stub.ReadState(read, timeout=10)) == before


async def serve_and_run(node, wires):
    server, port = await rpc.create_server("127.0.0.1:0", [
        (pb_grpc.add_AgentServicer_to_server, AgentServicer(node), rpc.service_name("Agent"))])
    await server.start()
    try:
        async with rpc.channel(f"127.0.0.1:{port}") as channel:
            await scenario(pb_grpc.AgentStub(channel), wires)
    finally:
        await server.stop(None)


def test_a_snapshot_is_restored_only_into_the_code_that_wrote_it(dataplane, areas, request):
    tag = unique_tag()
    wires = {name: Wire(dataplane, f"r{tag}{name}") for name in ("wan", "lan", "dmz")}
    # A pool of its own: the session's processes may still map images of areas that earlier
    # tests freed ("mapping image 1 ...: File exists" when this test reuses the area).
    try:
        with ProcessPool(dataplane, 1) as pool, \
                Node(parse_node(NODE), [parse_sfc(MON_NAT)], dataplane=dataplane, pool=pool,
                     areas=areas, ports={n: w.port for n, w in wires.items()}) as node:
            node.state.drop("mon-nat.mon")  # another test's run of the session may have left some
            node.scale("mon-nat", 1)
            wires["wan"].send([udp(dport=53, src="10.0.0.1", sport=1000 + i)
                               for i in range(20)])
            wires["lan"].receive(20, router=node.router)
            asyncio.run(serve_and_run(node, wires))
    finally:
        for w in wires.values():
            w.close()
