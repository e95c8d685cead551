"""Drain and move, the control side (issue 14 item 1): the real `serpens-controller` over a
real etcd with test_routes.py's fake agents and gateway (real gRPC servicers, mTLS).

Checked: DrainNode/MoveSFC refuse unknown nodes and SFCs (NOT_FOUND), bad names
(INVALID_ARGUMENT) and a cordoned target (FAILED_PRECONDITION), each naming the field; a
cordoned node takes no placement until undrained, and `get nodes` says it is cordoned; a
server leaving whose flows cannot be handed over (the gateway does not take the route with
the target) keeps serving them, in the route, the SFC Degraded saying why."""
import os
import subprocess
import time

import grpc
import pytest

from serpens.common.keys import Keys
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import BIN, Controller, status, wait_until
from support.etcd import serpensctl_config
from test_controller_api import serpensctl
from test_reconcile_isolation import _delete, etcd_call
from test_routes import apply, stored_route, weights, world  # noqa: F401 - a fixture

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
def controller(etcd, world):  # noqa: F811
    c = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                   log_level="info")
    try:
        yield c
    finally:
        c.stop()
        keys = Keys()

        async def forget(store):  # the world fixture does not know these
            for prefix in (keys.cordons, keys.moves):
                for key in (await store.list(prefix))[0]:
                    await _delete(store, key)
        etcd_call(etcd, forget)


def refused(call, code, *words):
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == code, e.value.details()
    for w in words:
        assert w in e.value.details(), e.value.details()


def test_move_and_drain_refuse_unknown_names_and_a_cordoned_target(world, controller):  # noqa: F811
    agents, register_gateway, _ = world
    register_gateway()
    stub = controller.stub
    apply(controller, "web", 2)
    wait_until(lambda: len(status(stub, "web").nodes) == 2, 20, controller.output)
    refused(lambda: stub.MoveSFC(pb.MoveSFCRequest(sfc="nope", node="n1"), timeout=5),
            grpc.StatusCode.NOT_FOUND, "sfc:", "nope")
    refused(lambda: stub.MoveSFC(pb.MoveSFCRequest(sfc="web", node="n9"), timeout=5),
            grpc.StatusCode.NOT_FOUND, "node:", "n9")
    refused(lambda: stub.MoveSFC(pb.MoveSFCRequest(sfc="web", node="N_1"), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT, "node:")
    refused(lambda: stub.MoveSFC(pb.MoveSFCRequest(sfc="", node="n1"), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT, "sfc:")
    refused(lambda: stub.DrainNode(pb.DrainNodeRequest(node="n9"), timeout=5),
            grpc.StatusCode.NOT_FOUND, "node:", "n9")
    refused(lambda: stub.UndrainNode(pb.UndrainNodeRequest(node="n9"), timeout=5),
            grpc.StatusCode.NOT_FOUND, "node:", "n9")
    stub.DrainNode(pb.DrainNodeRequest(node="n2"), timeout=5)
    refused(lambda: stub.MoveSFC(pb.MoveSFCRequest(sfc="web", node="n2"), timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION, "node:", "n2", "cordoned")
    r = serpensctl(controller.address, "move", "sfc", "web", "--to", "n2")
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "n2" in r.stderr


def test_a_cordoned_node_takes_no_placement_until_undrained(etcd, world, controller):
    agents, register_gateway, _ = world
    gw = register_gateway()
    stub = controller.stub
    r = serpensctl(controller.address, "drain", "node", "n2", "--wait", "--wait-timeout", "10")
    assert r.returncode == 0, r.stderr
    assert "node/n2 cordoned" in r.stdout and "node/n2 drained: it runs nothing" in r.stdout
    nodes = {n.name: n.cordoned for n in stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes}
    assert nodes == {"n1": False, "n2": True}
    out = serpensctl(controller.address, "get", "nodes").stdout
    assert out.splitlines()[0].split()[:3] == ["NAME", "REVISION", "CORDONED"]
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["-", "yes"]
    apply(controller, "web", 4)                  # spread 2, one node may take it
    wait_until(lambda: (s := status(stub, "web")).phase == "Running" and s.instances == 4,
               20, controller.output)
    assert weights(stored_route(etcd, "web")) == {"n1": 4}
    assert "web" not in agents["n2"].runs and agents["n1"].runs["web"].replicas == 4
    wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 4}, 5, controller.output)
    r = serpensctl(controller.address, "undrain", "node", "n2")
    assert r.returncode == 0 and "node/n2 takes placements again" in r.stdout, r.stderr
    wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 2, "n2": 2}, 20,
               controller.output)
    assert list(status(stub, "web").joined) == ["n1", "n2"]  # the order they joined


def test_a_leaving_server_whose_flows_cannot_move_keeps_serving_them(etcd, world, controller):
    agents, register_gateway, _ = world
    gw = register_gateway()
    stub = controller.stub
    apply(controller, "web", 2)
    wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20,
               controller.output)
    gw.down = True      # the route with the target alone never reaches the gateway
    stub.DrainNode(pb.DrainNodeRequest(node="n2"), timeout=5)
    st = wait_until(lambda: "flows not moved" in (s := status(stub, "web")).message and s, 30,
                    controller.output)
    assert st.phase == "Degraded" and "node n2" in st.message, st
    assert "has not taken the route" in st.message, st
    assert "web" in agents["n2"].runs                # still serving its flows
    assert "n2" in weights(stored_route(etcd, "web"))
    assert agents["n1"].runs["web"].replicas == 2    # the target runs all the replicas


def test_drain_wait_ends_when_the_node_is_lost(etcd, world, controller):  # noqa: F811
    """Review of issue 14: `drain --wait` on a node whose agent goes away ends at once,
    saying so (exit 1), instead of waiting out --wait-timeout."""
    agents, register_gateway, report = world
    register_gateway()
    apply(controller, "web", 2)
    report("n2", web=100.0)
    p = subprocess.Popen([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                          "--server", controller.address, "drain", "node", "n2", "--wait",
                          "--wait-timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        etcd_call(etcd, lambda store: _delete(store, Keys().node("n2")))   # its lease ended
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 1, (out, err)
    assert "node/n2 not drained: it was lost" in err, err


def test_an_sfc_on_one_node_is_never_placed_on_a_cordoned_one(world, controller):
    """Not routed (no gateway): placed on a node that is not cordoned, Pending (saying so)
    when every node is."""
    agents, _, _ = world
    stub = controller.stub
    local = ('{"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": "%s"}, '
             '"spec": {"nfs": {"mon": {"stock": "mon"}}, "chain": ["mon"], "tag": %d}}')
    stub.DrainNode(pb.DrainNodeRequest(node="n1"), timeout=5)
    for i, name in enumerate(("a", "b", "c")):
        stub.ApplySFC(pb.ApplySFCRequest(spec=local % (name, 10 + i)), timeout=5)
    for name in ("a", "b", "c"):
        wait_until(lambda: status(stub, name).phase == "Running", 20, controller.output)
        assert status(stub, name).node == "n2"
    assert not agents["n1"].runs
    stub.DrainNode(pb.DrainNodeRequest(node="n2"), timeout=5)
    stub.ApplySFC(pb.ApplySFCRequest(spec=local % ("d", 20)), timeout=5)
    # (its first status may be "not placed yet", before a pass weighed the nodes)
    st = wait_until(lambda: "cordoned" in (s := status(stub, "d")).message and s, 20,
                    controller.output)
    assert st.phase == "Pending" and "n1: cordoned" in st.message and \
        "n2: cordoned" in st.message, st
    assert status(stub, "a").node == "n2"     # what runs stays (it cannot move: its ports)


def test_draining_the_last_node_leaves_the_sfc_where_it_is_and_says_so(etcd, world, controller):
    """Every node cordoned (review of issue 14): cordons still apply, so the SFC is never
    placed back on a drained node; it stays where it runs, Degraded saying why, and
    `drain --wait` says so and ends with exit 1 instead of waiting forever."""
    agents, register_gateway, report = world
    gw = register_gateway()
    stub = controller.stub
    stub.DrainNode(pb.DrainNodeRequest(node="n1"), timeout=5)
    apply(controller, "web", 2)                  # spread 2: n2 alone may take it
    wait_until(lambda: weights(gw.routes().get("web")) == {"n2": 2}, 20, controller.output)
    report("n2", web=100.0)                      # its agent's report: it runs web
    r = serpensctl(controller.address, "drain", "node", "n2")     # not quietly
    assert r.returncode == 0 and "node/n2 cordoned; runs web" in r.stdout, r.stdout
    assert "warning: no other node takes placements" in r.stderr and \
        "web stay on node/n2" in r.stderr, r.stderr
    r = serpensctl(controller.address, "drain", "node", "n2", "--wait", "--wait-timeout", "30")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "sfc/web stays: cordoned n2 cannot be drained: no other live node" in r.stdout, \
        r.stdout
    assert "node/n2 not drained: sfc/web: cordoned n2 cannot be drained" in r.stderr, r.stderr
    st = status(stub, "web")
    assert st.phase == "Degraded" and st.node == "n2" and not st.nodes, st
    assert st.stuck.startswith("cordoned n2 cannot be drained") and st.stuck in st.message
    assert "web" not in agents["n1"].runs        # never back on the drained n1
    assert weights(stored_route(etcd, "web")) == {"n2": 2}
    assert agents["n2"].runs["web"].replicas == 2
    stub.UndrainNode(pb.UndrainNodeRequest(node="n1"), timeout=5)   # somewhere to go again
    wait_until(lambda: not status(stub, "web").stuck, 30, controller.output)
