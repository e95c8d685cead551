"""Routes from the controller (issue 13): the real `serpens-controller` over a real etcd, with
fake agents and fake gateways that are real gRPC servicers (mTLS) in this process, registered
in etcd as the real ones register: two nodes with an underlay address, and a gateway.

An SFC with `placement: {spread: 2}` runs on both nodes (its replicas split), each told its
VXLAN tag and the gateway's address; its route record lists both servers weighted by their
replicas, and the gateway gets it within 200 ms of the last RunSFC answer. Scaling changes
the weights; a gateway registered again (a new process) gets the full set; a push refused
with ABORTED (the gateway saw a newer term) is not retried in a loop; deleting the SFC
removes its route and frees its tag."""
import json
import threading
import time
from concurrent import futures
from dataclasses import replace

import grpc
import pytest

from serpens.common.keys import Keys
from serpens.common.records import (GatewayRecord, NodeLoad, NodeRecord, RouteRecord,
                                    SFCLoad, Underlay)
from serpens.common.rpc import server_credentials
from serpens.gateway.routes import GatewayRoutes, RouteSetError
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.cluster import Controller, status, wait_until
from support.etcd import identity
from test_controller_api import serpensctl
from test_reconcile_isolation import _delete, etcd_call

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

PUSH_BOUND_S = 0.2     # a route change reaches the gateway within this (issue 13)
GATEWAY_UNDERLAY = Underlay("192.0.2.1", "02:00:00:00:00:01")


def spec(name, spread=2):
    return json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": name},
                       "spec": {"nfs": {"mon": {"stock": "mon"}}, "chain": ["mon"],
                                "match": [{"dst": "10.1.0.0/16"}], "vni": 7,
                                "output": "gateway", "placement": {"spread": spread},
                                "scale": {"min": 1, "max": 16}}})


def apply(controller, name, replicas, spread=2):
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=spec(name, spread)), timeout=10)
    controller.stub.Scale(pb.ScaleRequest(sfc=name, replicas=replicas), timeout=5)


class FakeAgent(pb_grpc.AgentServicer):
    """Runs what it is told at once, remembering each RunSFC request and when it answered.
    With `pool` set, it starts no more instances than that many processes hold, as the real
    agent does: what it can, and UNAVAILABLE ("process pool: ...") for the rest."""

    def __init__(self, name):
        self.name = name
        self.pool: int | None = None   # pool processes (None: as many as asked)
        self.refuse_runs = False       # RunSFC answers UNAVAILABLE (as a node cut off)
        self.lock = threading.Lock()
        self.runs: dict[str, pb.AgentSFC] = {}
        self.requests: dict[str, pb.RunSFCRequest] = {}
        self.answered: dict[str, float] = {}   # sfc -> monotonic time of the last answer

    def GetNode(self, request, context):
        with self.lock:
            return pb.NodeStatus(name=self.name, sfcs=list(self.runs.values()))

    def RunSFC(self, request, context):
        if self.refuse_runs:
            context.abort(grpc.StatusCode.UNAVAILABLE, "unreachable (a test's)")
        name = json.loads(request.spec)["metadata"]["name"]
        s = pb.AgentSFC(name=name, generation=request.generation, replicas=request.replicas,
                        incarnation=request.incarnation, instances=request.replicas,
                        phase="Running",
                        vxlan=request.vxlan if request.HasField("vxlan") else None,
                        checkpoint_to=request.checkpoint_to.node)  # (as the real agent)
        with self.lock:
            self.runs[name], self.requests[name] = s, request
            self.answered[name] = time.monotonic()
            room = self._room(name)
            if room < s.instances:  # the real agent keeps the SFC, short of instances
                s.instances = room
                self._busy(context)
        return s

    def ScaleSFC(self, request, context):
        with self.lock:
            s = self.runs[request.name]
            self.answered[request.name] = time.monotonic()
            room = self._room(request.name)
            if room < request.replicas:  # as many as fit start; its replicas stay
                s.instances = max(s.instances, room)
                self._busy(context)
            s.replicas = s.instances = request.replicas
            return s

    def _room(self, name) -> int:
        """Pool processes the other SFCs leave to `name` (under the lock)."""
        if self.pool is None:
            return 1 << 30
        return max(0, self.pool - sum(s.instances for n, s in self.runs.items() if n != name))

    def _busy(self, context):
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      f"process pool: all {self.pool} pool processes are busy")

    def StopSFC(self, request, context):
        with self.lock:
            if self.runs.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"name: no SFC {request.name!r}")
        return pb.StopSFCResponse()


class FakeGateway(pb_grpc.GatewayServicer):
    """Keeps every route set pushed (with its arrival time); refuses a term older than the
    newest it has applied with ABORTED, and a set it could not hold with INVALID_ARGUMENT
    (the real gateway's check), as the real gateway does; UNAVAILABLE while `down`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.term = 0
        self.pushes: list[tuple[float, int, list[RouteRecord]]] = []  # (time, term, routes)
        self.refused = 0
        self.invalid = 0
        self.down = False
        self.failed = 0    # calls refused while down

    def SetRoutes(self, request, context):
        now = time.monotonic()
        with self.lock:
            if self.down:
                self.failed += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "down (a test's)")
            routes = [RouteRecord.from_message(r) for r in request.routes]
            try:
                GatewayRoutes(None, {"in0": 0}, GATEWAY_UNDERLAY.ip).check(routes)
            except RouteSetError as e:
                self.invalid += 1
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if request.term < self.term:
                self.refused += 1
                context.abort(grpc.StatusCode.ABORTED,
                              f"term: {request.term} is older than {self.term}")
            self.term = request.term
            self.pushes.append((now, request.term, routes))
        return pb.SetRoutesResponse(term=request.term, routes=len(request.routes))

    def routes(self) -> dict[str, RouteRecord]:
        with self.lock:
            return {r.sfc: r for r in self.pushes[-1][2]} if self.pushes else {}

    def first_push_where(self, predicate) -> float | None:
        with self.lock:
            return next((t for t, _, routes in self.pushes
                         if predicate({r.sfc: r for r in routes})), None)


def _serve(add, servicer, name, role):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(identity(name, role)))
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def world(etcd):
    """Nodes n1 and n2 (underlay 192.0.2.11/12), gateway gw1, and a way to register a
    gateway again; everything removed from the session's etcd afterwards."""
    keys, servers = Keys(), []
    agents, records = {}, {}
    for i, name in enumerate(("n1", "n2")):
        agent = agents[name] = FakeAgent(name)
        server, address = _serve(pb_grpc.add_AgentServicer_to_server, agent,
                                 "serpens-agent", "agent")
        servers.append(server)
        records[name] = NodeRecord(name=name, address=address, pool=8, underlay=Underlay(
            f"192.0.2.{11 + i}", f"02:00:00:00:00:{11 + i}"))
        etcd_call(etcd, lambda store, k=keys.node(name), v=records[name].encode():
                  store.put(k, v))

    def report(name, **load):
        """Node `name` reports SFC input rates (sfc -> packets/s), as its agent would."""
        record = replace(records[name], load=NodeLoad(
            sfcs={sfc: SFCLoad(in_pps=pps) for sfc, pps in load.items()}))
        etcd_call(etcd, lambda store: store.put(keys.node(name), record.encode()))

    def gateway():
        """A new gateway process: registered afresh (a new key) at a new address."""
        fake = FakeGateway()
        server, address = _serve(pb_grpc.add_GatewayServicer_to_server, fake,
                                 "serpens-gateway", "agent")  # no gateway role yet
        servers.append(server)
        record = GatewayRecord(name="gw1", address=address, underlay=GATEWAY_UNDERLAY,
                               ingress=("in0",), reported_at=time.time())
        etcd_call(etcd, lambda store: _delete(store, keys.gateway("gw1")))
        etcd_call(etcd, lambda store: store.put(keys.gateway("gw1"), record.encode()))
        return fake
    try:
        yield agents, gateway, report
    finally:
        async def forget(store):
            for prefix in (keys.sfcs, keys.statuses, keys.routes, keys.nodes, keys.gateways):
                for key, item in (await store.list(prefix))[0].items():
                    await store.delete_if(key, item.mod_revision)
        etcd_call(etcd, forget)
        for server in servers:
            server.stop(0)


def stored_route(etcd, sfc) -> RouteRecord | None:
    item = etcd_call(etcd, lambda store: store.get(Keys().route(sfc)))
    return None if item is None else RouteRecord.decode(item.value, sfc)


def weights(route: RouteRecord | None) -> dict[str, int]:
    return {s.node: s.weight for s in route.servers} if route else {}


def test_an_sfc_spread_over_two_nodes_is_routed_through_the_gateway(etcd, world):
    agents, register_gateway, _ = world
    gw = register_gateway()
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                            log_level="info")
    try:
        apply(controller, "web", 4)
        st = wait_until(lambda: (s := status(controller.stub, "web")).phase == "Running"
                        and len(s.nodes) == 2 and s, 20, controller.output)
        assert dict(st.nodes) == {"n1": 2, "n2": 2} and st.instances == 4, st
        assert st.node in ("n1", "n2")
        route = stored_route(etcd, "web")
        assert route.tag == 1 and route.vni == 7 and route.match == ({"dst": "10.1.0.0/16"},)
        assert {(s.node, s.ip, s.mac, s.weight) for s in route.servers} == {
            ("n1", "192.0.2.11", "02:00:00:00:00:11", 2),
            ("n2", "192.0.2.12", "02:00:00:00:00:12", 2)}
        for agent in agents.values():  # each runs its share, with the tag and the way back
            request = agent.requests["web"]
            assert agent.runs["web"].replicas == 2
            assert (request.vxlan.tag, request.vxlan.vni, request.vxlan.gateway_ip,
                    request.vxlan.gateway_mac) == (1, 7, "192.0.2.1", "02:00:00:00:00:01")
        # the gateway has the route, both servers, within 200 ms of the last RunSFC answer
        got = wait_until(lambda: gw.first_push_where(lambda r: weights(r.get("web")) ==
                                                     {"n1": 2, "n2": 2}), 5, controller.output)
        last_answer = max(a.answered["web"] for a in agents.values())
        assert got - last_answer < PUSH_BOUND_S, got - last_answer
        assert gw.routes()["web"] == route
        assert gw.pushes[-1][1] > 0   # pushed with the leader's term
        described = controller.stub.GetSFC(pb.GetSFCRequest(name="web"), timeout=5)
        assert RouteRecord.from_message(described.route) == route

        # scaling changes the weights (and each node's share)
        controller.stub.Scale(pb.ScaleRequest(sfc="web", replicas=3), timeout=5)
        wait_until(lambda: weights(gw.routes().get("web")) == {"n1": 2, "n2": 1} or
                   weights(gw.routes().get("web")) == {"n1": 1, "n2": 2}, 10,
                   controller.output)
        shares = {n: a.runs["web"].replicas for n, a in agents.items()}
        assert weights(gw.routes()["web"]) == shares and sum(shares.values()) == 3
        wait_until(lambda: status(controller.stub, "web").instances == 3, 10,
                   controller.output)

        # a second SFC on one node (spread 1) takes the next tag; the set goes sorted by tag
        apply(controller, "one", 2, spread=1)
        wait_until(lambda: list(weights(gw.routes().get("one")).values()) == [2], 10,
                   controller.output)
        assert [r.tag for r in gw.pushes[-1][2]] == [1, 2]
        st = wait_until(lambda: (s := status(controller.stub, "one")).instances == 2 and s, 10,
                        controller.output)
        assert st.phase == "Running" and not st.nodes, st

        # a gateway registered again (a new process) gets the whole set at once
        gw2 = register_gateway()
        wait_until(lambda: set(gw2.routes()) == {"web", "one"}, 5, controller.output)
        assert gw2.routes() == gw.routes()

        # a push of an older term than the gateway has seen is refused, and not retried
        # in a loop: once per change
        gw2.term = 1 << 40
        refused = gw2.refused
        controller.stub.Scale(pb.ScaleRequest(sfc="web", replicas=4), timeout=5)
        wait_until(lambda: gw2.refused > refused, 5, controller.output)
        time.sleep(2.0)  # four resyncs
        assert gw2.refused - refused <= 2, gw2.refused   # the change (and its weights' write)
        assert "refused routes" in controller.output()
        gw2.term = 0

        # deleting the SFC removes its route, stops it, and frees its tag
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="web"), timeout=5)
        wait_until(lambda: set(gw2.routes()) == {"one"}, 10, controller.output)
        wait_until(lambda: all("web" not in a.runs for a in agents.values()), 10,
                   controller.output)
        assert stored_route(etcd, "web") is None
        apply(controller, "again", 2)
        wait_until(lambda: len(weights(gw2.routes().get("again"))) == 2, 10,
                   controller.output)
        assert stored_route(etcd, "again").tag == 1   # the smallest free tag: web's
        pushed = [line for line in controller.output().splitlines()
                  if "ms after the decision" in line]
        assert pushed, controller.output()
        print("\n".join(pushed[-5:]), f"\nfirst push with both servers {got - last_answer:.4f} s "
              "after the last RunSFC answer")
    finally:
        controller.stop()


def test_serpensctl_shows_gateways_nodes_of_an_sfc_and_its_route(etcd, world):
    agents, register_gateway, _ = world
    register_gateway()
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"])
    try:
        apply(controller, "web", 4)
        wait_until(lambda: len(status(controller.stub, "web").nodes) == 2, 20,
                   controller.output)
        wait_until(lambda: controller.stub.GetSFC(pb.GetSFCRequest(name="web"), timeout=5)
                   .route.servers, 10, controller.output)
        infos = controller.stub.ListGateways(pb.ListGatewaysRequest(), timeout=5).gateways
        assert [g.name for g in infos] == ["gw1"]
        assert GatewayRecord.decode(infos[0].record_json, "gw1").underlay == GATEWAY_UNDERLAY

        def ctl(*args):
            r = serpensctl(controller.address, *args)
            assert r.returncode == 0, r.stderr
            return r.stdout
        out = ctl("get", "gateways")
        assert out.splitlines()[0].split() == ["NAME", "ADDRESS", "UNDERLAY", "TERM", "LAST", "REPORT"]
        assert "gw1" in out and "192.0.2.1 02:00:00:00:00:01 mtu 1500" in out
        row = next(line.split() for line in ctl("get", "sfcs").splitlines()[1:]
                   if line.startswith("web "))
        assert "n1,n2" in row, row
        out = ctl("describe", "sfc", "web")
        assert "n1 2, n2 2" in out, out
        assert "tag 1, vni 7; servers: n1 192.0.2.11 weight 2, n2 192.0.2.12 weight 2" in out
    finally:
        controller.stop()



def test_one_node_spills_over_only_when_its_pool_is_full_and_autoscaling_sums_servers(
        etcd, world):
    agents, register_gateway, report = world
    gw = register_gateway()
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                            log_level="info")
    try:
        # spread 1: 8 replicas fit the first node's pool (8 processes)
        apply(controller, "big", 8, spread=1)
        wait_until(lambda: sorted(weights(gw.routes().get("big")).values()) == [8], 10,
                   controller.output)
        first = next(iter(weights(gw.routes()["big"])))
        other = ({"n1", "n2"} - {first}).pop()
        assert "big" not in agents[other].runs
        # 11 do not: the first keeps 8, the other node serves the 3 left
        controller.stub.Scale(pb.ScaleRequest(sfc="big", replicas=11), timeout=5)
        wait_until(lambda: weights(gw.routes().get("big")) == {first: 8, other: 3}, 10,
                   controller.output)
        st = wait_until(lambda: (s := status(controller.stub, "big")).instances == 11 and s,
                        10, controller.output)
        assert st.node == first and dict(st.nodes) == {first: 8, other: 3}, st
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="big"), timeout=5)
        wait_until(lambda: "big" not in gw.routes(), 10, controller.output)

        # autoscaling a spread SFC: its servers' input rates add up (3 x 1000 + 2 x 1000
        # packets/s at 1000 each: 5 replicas, where one server's rate alone would say 3)
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=spec("auto", 2).replace(
            '"min": 1, "max": 16', '"min": 2, "max": 16, "target_pps": 1000')), timeout=10)
        wait_until(lambda: len(status(controller.stub, "auto").nodes) == 2, 10,
                   controller.output)
        report("n1", auto=3000.0)
        report("n2", auto=2000.0)
        wait_until(lambda: sum(weights(gw.routes().get("auto")).values()) == 5, 10,
                   controller.output)
        assert "-> 5 replicas (5000 pps in" in controller.output(), controller.output()

        # a new leader (the controller restarted) pushes the stored routes with its term
        before = gw.routes()
        old_term = gw.pushes[-1][1]
        controller.stop()
        controller = Controller(etcd.endpoint, args=["--identity", "c2", "--resync-s", "0.5"],
                                log_level="info")
        wait_until(lambda: gw.pushes[-1][1] > old_term, 10, controller.output)
        assert gw.routes() == before
    finally:
        controller.stop()
