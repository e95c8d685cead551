"""Routes from the controller at their edges (issue 13 review): the real `serpens-controller`
over a real etcd, with test_routes.py's fake agents and gateway (which checks each pushed set
as the real gateway does, common/route_set.py).

An SFC the gateway could not hold beside the others stays Pending, naming why, and is left
out of the pushed set (the others keep moving); routes carry spec.match as the parser
normalises it; a new gateway address reaches the SFCs already running; `output: gateway`
waits for a gateway; a lost server leaves the route before its replacement's RunSFC answers;
a node leaving while another's RunSFC is in flight breaks nothing; a push failing with
back-off goes at once when a change comes."""
import json
import time
from dataclasses import replace

import grpc
import pytest

from serpens.common.keys import Keys
from serpens.common.records import GatewayRecord, NodeRecord, Underlay
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

import test_routes
from support.cluster import Controller, status, wait_until
from test_reconcile_isolation import _delete, etcd_call
from test_routes import FakeAgent, _serve, apply, spec, stored_route, weights, world  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

KEYS = Keys()


def controller(etcd):
    return Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                      log_level="info")


def sfc(name, match=None):
    body = {"nfs": {"mon": {"stock": "mon"}}, "chain": ["mon"], "output": "gateway"}
    if match is not None:
        body["match"] = match
    return json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": name},
                       "spec": body})


def test_an_sfc_the_gateway_cannot_hold_waits_and_the_others_keep_moving(etcd, world):
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "web", 2)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20, c.output)
        # the API accepts proto names and single ports: the route carries them normalised
        c.stub.ApplySFC(pb.ApplySFCRequest(spec=sfc("dns", [
            {"dst": "198.51.100.0/24", "proto": "udp", "dport": 53}])), timeout=10)
        wait_until(lambda: "dns" in gw.routes(), 20, c.output)
        assert stored_route(etcd, "dns").match == (
            {"dst": "198.51.100.0/24", "proto": 17, "dport": [53, 53]},)
        c.stub.ApplySFC(pb.ApplySFCRequest(spec=sfc("rest")), timeout=10)  # the default
        wait_until(lambda: "rest" in gw.routes(), 20, c.output)
        for name, match, why in [
                ("rest2", None, "only one SFC may take unmatched frames"),
                ("typo", [{"port": "wan9"}], "'wan9' is no gateway's ingress port")]:
            c.stub.ApplySFC(pb.ApplySFCRequest(spec=sfc(name, match)), timeout=10)
            # (before the reconciler's word the API shows "not placed yet")
            st = wait_until(lambda: (s := status(c.stub, name)).message not in
                            ("", "not placed yet") and s, 20, c.output)
            assert st.phase == "Pending" and why in st.message, st
            assert stored_route(etcd, name) is None
        c.stub.Scale(pb.ScaleRequest(sfc="web", replicas=6), timeout=5)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 3, "n2": 3}, 20,
                   c.output)
        assert set(gw.routes()) == {"web", "dns", "rest"}
        assert gw.invalid == 0, "the controller pushed a set the gateway must refuse"
        assert all("rest2" not in a.runs and "typo" not in a.runs for a in agents.values())
        c.stub.DeleteSFC(pb.DeleteSFCRequest(name="rest"), timeout=10)  # room: it runs
        wait_until(lambda: "rest2" in gw.routes(), 20, c.output)
        # (the phase follows the agents' reports, which may come after the route)
        wait_until(lambda: status(c.stub, "rest2").phase == "Running", 20, c.output)
    finally:
        c.stop()


def test_a_new_gateway_address_reaches_the_sfcs_running(etcd, world):
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "web", 2)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20, c.output)
        generations = {n: a.runs["web"].generation for n, a in agents.items()}
        record = GatewayRecord.decode(
            etcd_call(etcd, lambda s: s.get(KEYS.gateway("gw1"))).value, "gw1")
        moved = GatewayRecord(name="gw1", address=record.address, ingress=record.ingress,
                              underlay=Underlay("192.0.2.99", "02:00:00:00:00:99"),
                              reported_at=time.time())
        etcd_call(etcd, lambda s: _delete(s, KEYS.gateway("gw1")))
        etcd_call(etcd, lambda s: s.put(KEYS.gateway("gw1"), moved.encode()))
        wait_until(lambda: all(a.requests["web"].vxlan.gateway_ip == "192.0.2.99" and
                               a.requests["web"].vxlan.gateway_mac == "02:00:00:00:00:99"
                               for a in agents.values()), 20, c.output)
        assert {n: a.runs["web"].generation for n, a in agents.items()} == generations
        assert all(a.requests["web"].vxlan.tag == 1 for a in agents.values())
    finally:
        c.stop()


class StrictAgent(FakeAgent):
    """Refuses `output: gateway` without a VXLAN route, as the real agent does."""

    def RunSFC(self, request, context):
        if json.loads(request.spec)["spec"].get("output") == "gateway" and \
                not request.vxlan.tag:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "spec.output: the gateway is reached over VXLAN")
        return super().RunSFC(request, context)


def test_output_gateway_waits_pending_for_a_gateway(etcd, monkeypatch, request):
    monkeypatch.setattr(test_routes, "FakeAgent", StrictAgent)
    agents, register_gateway, _ = request.getfixturevalue("world")
    c = controller(etcd)
    try:
        c.stub.ApplySFC(pb.ApplySFCRequest(spec=spec("web", 1)), timeout=10)
        # (before the reconciler's word the API shows "not placed yet")
        st = wait_until(lambda: (s := status(c.stub, "web")).message not in
                        ("", "not placed yet") and s, 20, c.output)
        assert st.phase == "Pending" and "waiting for a gateway" in st.message, st
        time.sleep(1.5)  # resyncs: still waiting, and no agent was asked
        assert status(c.stub, "web").phase == "Pending"
        assert all("web" not in a.requests for a in agents.values())
        gw = register_gateway()
        wait_until(lambda: status(c.stub, "web").phase == "Running", 20, c.output)
        assert "web" in gw.routes()
    finally:
        c.stop()


class SlowAgent(FakeAgent):
    """An agent whose RunSFC takes `delay` seconds (a compile)."""
    delay = 5.0

    def RunSFC(self, request, context):
        time.sleep(self.delay)
        return super().RunSFC(request, context)


@pytest.fixture
def slow_n3(etcd):
    """A third underlay node, n3, whose RunSFC takes 5 s; registered by the test."""
    agent = SlowAgent("n3")
    server, address = _serve(pb_grpc.add_AgentServicer_to_server, agent, "serpens-agent",
                             "agent")
    record = NodeRecord(name="n3", address=address, pool=8,
                        underlay=Underlay("192.0.2.13", "02:00:00:00:00:13"))
    try:
        yield lambda: etcd_call(etcd, lambda s: s.put(KEYS.node("n3"), record.encode()))
    finally:
        etcd_call(etcd, lambda s: _delete(s, KEYS.node("n3")))
        server.stop(0)


def test_a_lost_server_leaves_the_route_before_its_replacement_runs(etcd, world, slow_n3):
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "web", 2)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20, c.output)
        slow_n3()
        time.sleep(1.0)
        lost = time.monotonic()
        etcd_call(etcd, lambda s: _delete(s, KEYS.node("n2")))  # its lease expired
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1}, 20, c.output)
        assert time.monotonic() - lost < SlowAgent.delay - 1, \
            "the lost server stayed in the route while n3 compiled"
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n3": 1}, 20,
                   c.output)
    finally:
        c.stop()


def test_a_node_leaving_while_another_runs_it_breaks_nothing(etcd, world, slow_n3):
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "web", 2)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20, c.output)
        slow_n3()
        time.sleep(1.0)
        etcd_call(etcd, lambda s: _delete(s, KEYS.node("n2")))
        wait_until(lambda: agents["n1"].runs["web"].replicas == 1 and
                   weights(gw.routes().get("web")) == {"n1": 1}, 20, c.output)
        etcd_call(etcd, lambda s: _delete(s, KEYS.node("n1")))  # n3's RunSFC in flight
        wait_until(lambda: weights(gw.routes().get("web")) == {"n3": 2}, 30, c.output)
        assert "Traceback" not in c.output(), c.output()
        # (the phase follows n3's report of its replicas, which may come after the route)
        wait_until(lambda: status(c.stub, "web").phase == "Running", 20, c.output)
    finally:
        c.stop()


def test_a_push_backing_off_goes_at_once_when_a_change_comes(etcd, world):
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "web", 2)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 1, "n2": 1}, 20, c.output)
        gw.down = True
        c.stub.Scale(pb.ScaleRequest(sfc="web", replicas=4), timeout=5)
        # failed pushes: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of back-off, then one of 3.2 s begins
        wait_until(lambda: gw.failed >= 6, 20, c.output)
        gw.down = False
        changed = time.monotonic()
        c.stub.Scale(pb.ScaleRequest(sfc="web", replicas=6), timeout=5)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 3, "n2": 3}, 20,
                   c.output)
        assert time.monotonic() - changed < 2.0, "the change waited out the back-off"
    finally:
        c.stop()


def _pools(etcd, agents, size):
    """Every node's pool holds `size` processes (its record says so, its agent keeps to it)."""
    for name, agent in agents.items():
        agent.pool = size
        item = etcd_call(etcd, lambda s, k=KEYS.node(name): s.get(k))
        record = replace(NodeRecord.decode(item.value, name), pool=size)
        etcd_call(etcd, lambda s, k=KEYS.node(name), v=record.encode(): s.put(k, v))


def test_a_spread_sfc_keeps_serving_from_the_node_left_when_its_pool_is_full(etcd, world):
    """Losing a server of a spread SFC whose pools are full: the node left keeps its copy in
    the route (never 'no servers' while a node runs it), is asked for no more than its pool
    holds, and the SFC is Degraded saying so, not Pending."""
    agents, register_gateway, _ = world
    gw = register_gateway()
    _pools(etcd, agents, 2)
    c = controller(etcd)
    try:
        apply(c, "fw", 4)  # spread 2: two on each node, both pools full
        wait_until(lambda: weights(gw.routes().get("fw")) == {"n1": 2, "n2": 2}, 20,
                   c.output)
        wait_until(lambda: status(c.stub, "fw").phase == "Running", 20, c.output)
        seen = len(gw.pushes)
        etcd_call(etcd, lambda s: _delete(s, KEYS.node("n2")))  # its lease expired
        st = wait_until(lambda: (s := status(c.stub, "fw")).phase == "Degraded" and s, 20,
                        c.output)
        assert st.instances == 2 and "2 of 4 replicas placed" in st.message, st
        time.sleep(1.5)  # a few passes (resync 0.5 s): n1 serves it throughout
        assert weights(gw.routes().get("fw")) == {"n1": 2}
        assert weights(stored_route(etcd, "fw")) == {"n1": 2}
        assert all(weights({r.sfc: r for r in routes}.get("fw"))
                   for _, _, routes in gw.pushes[seen:]), "fw's route went to no servers"
        assert agents["n1"].runs["fw"].replicas == 2  # never asked for more than it holds
        assert status(c.stub, "fw").phase == "Degraded"
    finally:
        c.stop()


def test_an_sfc_the_full_pools_cannot_start_is_degraded_saying_so(etcd, world):
    """An agent whose pool has no free process runs a new SFC with no instance and answers
    UNAVAILABLE: the SFC is Degraded naming the shortfall (not Running 0/1, not Pending),
    and the node is not shunned as if it had not answered."""
    agents, register_gateway, _ = world
    gw = register_gateway()
    _pools(etcd, agents, 1)
    c = controller(etcd)
    try:
        apply(c, "fw", 2)  # one on each node: both pools full
        wait_until(lambda: weights(gw.routes().get("fw")) == {"n1": 1, "n2": 1}, 20,
                   c.output)
        apply(c, "late", 1, spread=1)
        st = wait_until(lambda: (s := status(c.stub, "late")).phase not in ("", "Pending")
                        and s, 20, c.output)
        assert st.phase == "Degraded" and st.instances == 0, st
        assert "0 of 1 instances" in st.message and "no free pool process" in st.message, st
        time.sleep(1.5)  # later passes (the agent now reports it, 0 instances) say so too
        st = status(c.stub, "late")
        assert st.phase == "Degraded" and "0 of 1 instances" in st.message, st
        assert "avoided for" not in c.output(), "a busy pool made a node suspect"
        c.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw"), timeout=10)  # room: it starts
        st = wait_until(lambda: (s := status(c.stub, "late")).phase == "Running" and s, 20,
                        c.output)
        assert st.instances == 1, st
    finally:
        c.stop()


def test_a_node_failing_an_update_keeps_serving_what_it_runs(etcd, world):
    """A new generation that one server fails to run (its RunSFC UNAVAILABLE): the copy it
    runs stays in the route (Degraded, naming why) while the other server runs the new one."""
    agents, register_gateway, _ = world
    gw = register_gateway()
    c = controller(etcd)
    try:
        apply(c, "fw", 2)
        wait_until(lambda: weights(gw.routes().get("fw")) == {"n1": 1, "n2": 1}, 20,
                   c.output)
        old = agents["n2"].runs["fw"].generation
        agents["n2"].refuse_runs = True
        seen = len(gw.pushes)
        c.stub.ApplySFC(pb.ApplySFCRequest(spec=spec("fw").replace('"max": 16', '"max": 15')),
                        timeout=10)
        st = wait_until(lambda: (s := status(c.stub, "fw")).phase == "Degraded" and s, 20,
                        c.output)
        assert "node n2: UNAVAILABLE" in st.message, st
        assert agents["n1"].runs["fw"].generation > old == agents["n2"].runs["fw"].generation
        time.sleep(1.5)  # more passes: n2 keeps serving its copy
        assert "n2" in weights(stored_route(etcd, "fw"))
        assert all("n2" in weights({r.sfc: r for r in routes}.get("fw"))
                   for _, _, routes in gw.pushes[seen:]), "n2 left the route"
    finally:
        c.stop()
