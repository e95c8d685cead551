"""Several servers: each agent in its own network namespace (a server), joined to etcd and the
controller by a bridge, with its own DPDK node and state directory. SFCs spread over the
nodes; cutting one server's link (a partition, not a signal) loses its lease, and its SFC
moves to the other once it fits there (until then it is Pending, saying why); when the link
comes back the server registers again and the copy it kept running is stopped. The
testbed (cli/testbed.py: bridges, namespaces, veth pairs) is made and removed by the test."""
import json
import os
import tempfile

import grpc
import pytest

from serpens.cli.cluster import local_node
from serpens.cli.testbed import Testbed
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import Agent, status, wait_until
from support.cluster import FW_MON_NAT, Controller
from support.etcd import start_etcd

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]


@pytest.fixture(scope="module")
def servers():
    s = Testbed(str(os.getpid() % 100000), ["a", "b"])
    try:
        s.create()
        yield s
    finally:
        s.remove()


@pytest.fixture(scope="module")
def cluster(servers, tmp_path_factory):
    etcd = start_etcd(host=servers.host)
    controller = agents = None
    state = tempfile.TemporaryDirectory(prefix="serpens-multinode-", dir="/dev/shm")
    try:
        controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                                log_level="info")
        agents = {}
        for name in servers.ns:
            path = tmp_path_factory.mktemp(name) / "node.yaml"
            path.write_text(local_node(name, 5000, pool=2,
                                       state_dir=os.path.join(state.name, name)))
            agents[name] = Agent(etcd.endpoint, str(path), host=servers.address[name],
                                 netns=servers.ns[name])
        yield controller, agents
    finally:
        for agent in (agents or {}).values():
            assert agent.stop() == 0, agent.output()
        if controller:
            controller.stop()
        etcd.destroy()
        state.cleanup()


def test_nodes_register_from_their_own_servers(cluster, servers):
    controller, _ = cluster

    def addresses():  # an agent serves a moment before its registration is in etcd
        nodes = controller.stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
        return {n.name: json.loads(n.record_json)["address"].rpartition(":")[0] for n in nodes}
    wait_until(lambda: len(addresses()) == len(servers.address), 10, controller.output)
    assert addresses() == servers.address


def test_sfcs_spread_over_servers_and_move_off_a_cut_server_where_they_fit(cluster, servers):
    controller, agents = cluster
    second = FW_MON_NAT.replace("name: fw-mon-nat", "name: second")
    for spec in (FW_MON_NAT, second):
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=spec), timeout=10)
    placed = wait_until(lambda: all(status(controller.stub, n).phase == "Running"
                                    for n in ("fw-mon-nat", "second"))
                        and {n: status(controller.stub, n).node for n in ("fw-mon-nat", "second")},
                        60, controller.output)
    assert sorted(placed.values()) == ["a", "b"]  # one each: the node running fewer SFCs
    for sfc, node in placed.items():
        wait_until(lambda: agents[node].sfcs()[sfc].out > 0, 10, agents[node].output)

    lost = placed["fw-mon-nat"]
    survivor = placed["second"]
    servers.cut(lost)
    try:
        # both take unmatched packets: the survivor cannot run fw-mon-nat beside second
        pending = wait_until(lambda: (s := status(controller.stub, "fw-mon-nat")).phase ==
                             "Pending" and survivor in s.message and s, 30, controller.output)
        assert "only one SFC may take unmatched packets" in pending.message
        # once second matches its own packets, fw-mon-nat fits there and moves
        matched = second + "  match:\n    - {src: 10.1.0.0/23}\n"
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=matched), timeout=10)
        moved = wait_until(lambda: (s := status(controller.stub, "fw-mon-nat")).node == survivor
                           and s.phase == "Running" and s, 30, controller.output)
        assert moved.node == survivor
        out = agents[survivor].sfcs()["fw-mon-nat"].out
        wait_until(lambda: agents[survivor].sfcs()["fw-mon-nat"].out > out, 10,
                   agents[survivor].output)
        assert agents[lost].proc.poll() is None  # cut off, not dead
    finally:
        servers.mend(lost)
    # back on the network, it registers again; the copy it kept running meanwhile is stopped
    # (our channel to it may still be reconnecting: a call that times out means "not yet")
    wait_until(lambda: "fw-mon-nat" not in sfcs_when_reachable(agents[lost]), 30,
               controller.output)
    assert status(controller.stub, "fw-mon-nat").node == survivor
    for sfc in ("fw-mon-nat", "second"):
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=sfc), timeout=5)
    wait_until(lambda: not agents["a"].sfcs() and not agents["b"].sfcs(), 15,
               controller.output)


def sfcs_when_reachable(agent) -> dict:
    """The agent's SFCs, or a placeholder naming every SFC while it cannot be reached."""
    try:
        return agent.sfcs()
    except grpc.RpcError as e:
        if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise
        return {"fw-mon-nat": None, "second": None}
