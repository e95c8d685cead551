"""One SFC's hanging agent call delays no other SFC (issue 12's acceptance): a real etcd, the
real `serpens-controller` and `serpens-agent` as subprocesses, plus a second node whose agent
(in this test, over real gRPC and mTLS) answers GetNode but never answers RunSFC. While the
controller waits on it for one SFC, another SFC applied afterwards reaches Running on the
real node and its packets leave."""
import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from serpens.common.keys import Keys
from serpens.common.records import NodeRecord
from serpens.common.rpc import server_credentials
from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.cluster import FW_MON_NAT, NODE, Agent, Controller, status, wait_until
from support.etcd import client_identity, identity

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

HUNG_NODE = "a-hung"   # sorts before the real node "local": the first SFC is placed here
HANG_S = 90            # how long the hung agent sits on a RunSFC (the test ends it sooner)
BOUND_S = 30           # the other SFC must run within this: far below HANG_S and RunSFC's
                       # deadline (120 s), which an SFC-serial reconciler would wait out


class HungAgent(pb_grpc.AgentServicer):
    """Answers GetNode (it runs nothing); takes RunSFC of `hung` and never answers it;
    refuses any other SFC as a busy node would, so nothing else is placed here."""

    def __init__(self):
        self.called = threading.Event()     # RunSFC of `hung` arrived
        self.calls = 0                      # RunSFCs of `hung` so far
        self.release = threading.Event()    # the test is over

    def GetNode(self, request, context):
        return pb.NodeStatus(name=HUNG_NODE)

    def RunSFC(self, request, context):
        if "name: hung" not in request.spec:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node takes only hung")
        self.calls += 1
        self.called.set()
        self.release.wait(HANG_S)
        context.abort(grpc.StatusCode.UNAVAILABLE, "hung agent: released")

    def StopSFC(self, request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"name: no SFC {request.name!r}")


@pytest.fixture
def hung_node(etcd):
    agent = HungAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AgentServicer_to_server(agent, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(
        identity("serpens-agent", "agent")))
    server.start()
    record = NodeRecord(name=HUNG_NODE, address=f"127.0.0.1:{port}", pool=2)
    key = Keys().node(HUNG_NODE)
    etcd_call(etcd, lambda store: store.put(key, record.encode()))
    try:
        yield agent
    finally:
        agent.release.set()
        etcd_call(etcd, lambda store: _delete(store, key))
        server.stop(0)


async def _delete(store, key):
    item = await store.get(key)
    if item is not None:
        await store.delete_if(key, item.mod_revision)


def etcd_call(etcd, call):
    async def go():
        async with await Store.connect(etcd.endpoint, timeout=3, identity=client_identity()) \
                as store:
            return await call(store)
    return asyncio.run(go())


@pytest.fixture
def cluster(etcd, hung_node, tmp_path):
    node_path = tmp_path / "node.yaml"
    node_path.write_text(NODE)
    agent = Agent(etcd.endpoint, str(node_path))
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5",
                                                 "--workers", "2"], log_level="info")
    yield controller, agent, hung_node
    controller.stop()
    assert agent.stop() == 0, agent.output()


def test_an_sfc_whose_agent_call_hangs_delays_no_other_sfc(cluster):
    controller, agent, hung = cluster
    hung_spec = FW_MON_NAT.replace("name: fw-mon-nat", "name: hung")
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=hung_spec), timeout=10)
    assert hung.called.wait(30), controller.output()  # the controller sits in RunSFC now

    applied = time.monotonic()
    controller.stub.ApplySFC(pb.ApplySFCRequest(
        spec=FW_MON_NAT.replace("name: fw-mon-nat", "name: quick")), timeout=10)
    st = wait_until(lambda: (s := status(controller.stub, "quick")).phase == "Running" and s,
                    BOUND_S, controller.output)
    wait_until(lambda: (s := agent.sfcs().get("quick")) and s.out > 0, BOUND_S,
               agent.output)
    took = time.monotonic() - applied
    assert st.node == "local" and took < BOUND_S, (st, took)
    # all the while the hung call holds, and no second worker took the same SFC (the
    # resyncs every 0.5 s queue it again)
    assert hung.calls == 1 and status(controller.stub, "hung").phase != "Running"
    assert "hung" not in agent.sfcs()
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="quick"), timeout=5)
    wait_until(lambda: "quick" not in agent.sfcs(), 10, controller.output)

    # once the call fails (released here), that SFC's worker places it on the other node:
    # a node whose RunSFC fails is avoided for a while
    hung.release.set()
    st = wait_until(lambda: (s := status(controller.stub, "hung")).phase == "Running" and s,
                    BOUND_S, controller.output)
    assert st.node == "local" and hung.calls == 1, (st, hung.calls)
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="hung"), timeout=5)
    wait_until(lambda: "hung" not in agent.sfcs(), 10, controller.output)
