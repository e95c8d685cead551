"""What the status says when things go wrong around moves and checkpoints (review of issue
14), with the real `serpens-controller` over a real etcd and test_routes.py's fake agents
and gateway (real gRPC servicers, mTLS):

- a move whose source node is lost before its flows moved: the move ends (the target alone
  serves the SFC), the status says the source's flows were not moved, and `move --wait`
  prints it and exits 1 (it used to print "moved");
- checkpoints failing on one of an SFC's nodes: the status is Degraded naming the node and
  the error, carries the oldest last checkpoint's time, and `get sfc` shows its age;
- a spread SFC with checkpoints losing a node: the node taking its place (one that did not
  run the SFC) restores the lost node's checkpoint from that node's own peer; with no such
  node the status says the checkpoint was not restored and why."""
import json
import os
import subprocess
import time

import pytest

from serpens.common.keys import Keys
from serpens.common.records import NodeRecord, Underlay
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.cluster import status, wait_until
from test_controller_api import BIN, serpensctl, serpensctl_config
from test_drain_control import controller  # noqa: F401 - a fixture
from test_reconcile_isolation import _delete, etcd_call
from test_routes import FakeAgent, _serve, apply, spec, weights, world  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_a_move_whose_source_is_lost_says_its_flows_did_not_move(etcd, world, controller):  # noqa: F811
    agents, register_gateway, _ = world
    gw = register_gateway()
    stub = controller.stub
    apply(controller, "web", 2, spread=1)
    st = wait_until(lambda: (s := status(stub, "web")).phase == "Running" and s, 20,
                    controller.output)
    source = st.node
    target = "n2" if source == "n1" else "n1"
    wait_until(lambda: weights(gw.routes().get("web")) == {source: 2}, 20, controller.output)
    wait = subprocess.Popen([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                             "--server", controller.address, "move", "sfc", "web", "--to",
                             target, "--wait", "--wait-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the fake gateway holds no flows (HoldFlows unimplemented): the hand-over fails and
        # the source keeps serving them, retried; then the source is lost
        wait_until(lambda: "flows not moved" in status(stub, "web").message, 30,
                   controller.output)
        etcd_call(etcd, lambda store: _delete(store, Keys().node(source)))
        out, err = wait.communicate(timeout=60)
    finally:
        wait.kill()
    assert wait.returncode == 1, (out, err)
    why = f"flows of {source} not moved: lost with the node (new flows go to {target})"
    assert f"sfc/web: not every flow moved: {why}" in err, err
    assert "moved to" not in out, out
    st = status(stub, "web")
    assert st.moves == 1 and st.move_error == why and st.node == target, st
    assert not st.moving_to


def test_failing_checkpoints_show_in_the_status_and_get_sfc(etcd, world, controller):  # noqa: F811
    agents, register_gateway, _ = world
    register_gateway()
    stub = controller.stub
    doc = json.loads(spec("ck", 2))
    doc["spec"]["state"] = {"checkpoint_s": 1}
    stub.ApplySFC(pb.ApplySFCRequest(spec=json.dumps(doc)), timeout=10)
    stub.Scale(pb.ScaleRequest(sfc="ck", replicas=2), timeout=5)
    wait_until(lambda: len((s := status(stub, "ck")).nodes) == 2 and s.phase == "Running",
               20, controller.output)
    assert agents["n1"].runs["ck"].checkpoint_to == "n2"   # each node's peer: the other
    assert agents["n2"].runs["ck"].checkpoint_to == "n1"
    now_ms = int(time.time() * 1000)
    with agents["n1"].lock:
        agents["n1"].runs["ck"].checkpoint_unix_ms = now_ms - 2000
    error = "RESOURCE_EXHAUSTED: checkpoint: the peer's store is full"
    with agents["n2"].lock:
        agents["n2"].runs["ck"].checkpoint_unix_ms = now_ms - 90_000
        agents["n2"].runs["ck"].checkpoint_error = error
    st = wait_until(lambda: (s := status(stub, "ck")).checkpoint_error and s, 20,
                    controller.output)
    assert st.phase == "Degraded", st
    assert f"node n2: checkpoints to n1 fail: {error}" in st.message, st
    assert st.checkpoint_error == f"node n2: {error}"
    assert st.checkpoint_unix_ms == now_ms - 90_000           # the oldest of its nodes'
    assert dict(st.checkpoint_peers) == {"n1": "n2", "n2": "n1"}
    table = serpensctl(controller.address, "get", "sfc", "ck").stdout.splitlines()
    assert table[0].split()[-1] == "CHECKPOINT"
    assert "failing, last 9" in table[1], table               # 90 s or a little more
    described = serpensctl(controller.address, "describe", "sfc", "ck").stdout
    assert "Checkpoints:" in described and error in described, described
    with agents["n2"].lock:                                   # it succeeds again
        agents["n2"].runs["ck"].checkpoint_unix_ms = now_ms
        agents["n2"].runs["ck"].checkpoint_error = ""
    st = wait_until(lambda: (s := status(stub, "ck")).phase == "Running" and s, 20,
                    controller.output)
    assert not st.checkpoint_error and st.checkpoint_unix_ms == now_ms - 2000


def checkpointed(stub, name: str, replicas: int):
    doc = json.loads(spec(name, 2))
    doc["spec"]["state"] = {"checkpoint_s": 1}
    stub.ApplySFC(pb.ApplySFCRequest(spec=json.dumps(doc)), timeout=10)
    stub.Scale(pb.ScaleRequest(sfc=name, replicas=replicas), timeout=5)


def checkpointed_on_two(world, controller):  # noqa: F811
    """SFC "ck" (checkpoint_s 1) behind a gateway, on n1 and n2: (agents, the API stub)."""
    agents, register_gateway, _ = world
    register_gateway()
    stub = controller.stub
    checkpointed(stub, "ck", 2)
    wait_until(lambda: len(status(stub, "ck").nodes) == 2, 20, controller.output)
    return agents, stub


def test_a_lost_nodes_place_is_taken_by_a_node_restoring_its_checkpoint(etcd, world, controller):  # noqa: F811
    agents, stub = checkpointed_on_two(world, controller)
    assert {n: agents[n].runs["ck"].checkpoint_to for n in ("n1", "n2")} == \
        {"n1": "n2", "n2": "n1"}
    n3 = FakeAgent("n3")                          # a third node, free
    server, address = _serve(pb_grpc.add_AgentServicer_to_server, n3, "serpens-agent",
                             "agent")
    try:
        record = NodeRecord(name="n3", address=address, pool=8,
                            underlay=Underlay("192.0.2.13", "02:00:00:00:00:13"))
        etcd_call(etcd, lambda store: store.put(Keys().node("n3"), record.encode()))
        time.sleep(1.5)                           # (polled: live before n2 is lost)
        etcd_call(etcd, lambda store: _delete(store, Keys().node("n2")))   # n2 is lost
        wait_until(lambda: set(status(stub, "ck").nodes) == {"n1", "n3"}, 20,
                   controller.output)
        run = n3.requests["ck"]
        # n3 takes n2's place: n2's checkpoint, kept by n2's peer n1, instead of a seed
        assert run.restore_of == "n2" and run.restore_from.node == "n1", run
        assert not agents["n1"].requests["ck"].restore_of   # it ran it already: no restore
    finally:
        server.stop(0)


def test_a_lost_nodes_checkpoint_no_node_can_restore_is_said(etcd, world, controller):  # noqa: F811
    agents, stub = checkpointed_on_two(world, controller)
    etcd_call(etcd, lambda store: _delete(store, Keys().node("n2")))   # n2 is lost
    st = wait_until(lambda: (s := status(stub, "ck")).restored_of and s, 20,
                    controller.output)
    assert st.node == "n1" and not st.nodes and st.restored_of == "n2", st
    assert st.restored_age_ms == -1
    assert st.restore.startswith("node n2 lost; its checkpoint not restored: every node of "
                                 "the new placement (n1) ran the SFC already"), st.restore
    assert not agents["n1"].requests["ck"].restore_of
