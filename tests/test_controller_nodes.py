"""The leader's view of the nodes (controller/nodes.py) against an Agent service over real
gRPC (plain text on loopback): a node is live while it answers, what a worker's own call
changed is not undone by a GetNode sent before that call, and only changes that matter to
placement queue SFCs."""
import asyncio

import grpc
import pytest

from serpens.common.records import NodeRecord
from serpens.common.rpc import Stubs
from serpens.controller.nodes import Nodes
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(30)]


class FakeAgent(pb_grpc.AgentServicer):
    """GetNode answers `sfcs` as they were when asked, after `gate` opens (when one is set);
    `down`: UNAVAILABLE."""

    def __init__(self):
        self.sfcs: list[pb.AgentSFC] = []
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()
        self.down = False

    async def GetNode(self, request, context):
        reply = pb.NodeStatus(name="n", sfcs=list(self.sfcs))
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return reply


async def serve(agent):
    server = grpc.aio.server()
    pb_grpc.add_AgentServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def test_a_poll_sent_before_a_worker_s_call_does_not_undo_it():
    async def scenario():
        agent = FakeAgent()
        server, address = await serve(agent)
        changed = []
        stubs = Stubs(pb_grpc.AgentStub)
        nodes = Nodes(stubs, changed.append, period=0.05, timeout=2)
        try:
            nodes.update({"n": NodeRecord(name="n", address=address)})
            await nodes.polled()
            assert nodes.views == {"n": {}} and changed == [None]  # live: place SFCs here
            agent.gate = asyncio.Event()
            agent.asked.clear()
            await agent.asked.wait()          # a poll is on its way, before the call below
            nodes.ran("n", "x", pb.AgentSFC(name="x", generation=1, instances=1))
            agent.gate.set()                  # ...and answers that "x" does not run
            agent.gate = None
            agent.sfcs = [pb.AgentSFC(name="x", generation=1, instances=1, rx=5)]
            agent.asked.clear()
            await agent.asked.wait()          # the next poll: the one before was applied
            assert "x" in nodes.views["n"]    # the worker's word stood
            changed.clear()
            await asyncio.sleep(0.3)          # later polls agree; counters are no change
            assert nodes.views["n"]["x"].generation == 1 and changed == []
            agent.sfcs = [pb.AgentSFC(name="x", generation=1, instances=2)]
            await until(lambda: changed)
            assert changed[0] == {"x"}
        finally:
            await nodes.close()
            await stubs.close()
            await server.stop(0)
    asyncio.run(scenario())


def test_a_node_that_stops_answering_or_leaves_is_no_longer_live():
    async def scenario():
        agent = FakeAgent()
        agent.sfcs = [pb.AgentSFC(name="x", generation=1)]
        server, address = await serve(agent)
        changed = []
        stubs = Stubs(pb_grpc.AgentStub)
        nodes = Nodes(stubs, changed.append, period=0.05, timeout=2)
        try:
            nodes.update({"n": NodeRecord(name="n", address=address)})
            await nodes.polled()
            assert set(nodes.views["n"]) == {"x"}
            changed.clear()
            agent.down = True
            await until(lambda: "n" not in nodes.views)
            assert changed == [None]  # its SFCs go elsewhere
            agent.down = False
            await until(lambda: "n" in nodes.views)  # answers again: live again
            nodes.remove("n")
            assert "n" not in nodes.views and "n" not in nodes.records
            nodes.put(NodeRecord(name="m", address="127.0.0.1:1"))  # nobody there
            await nodes.polled()
            assert "m" not in nodes.views and "m" in nodes.records
        finally:
            await nodes.close()
            await stubs.close()
            await server.stop(0)
    asyncio.run(scenario())
