"""A node whose agent hangs on every RunSFC stalls no reconciling (review of issue 12): the
real `serpens-controller` (8 workers) over a real etcd, and fake agents over real gRPC and
mTLS: `a-hung` answers GetNode but sits on every RunSFC; `b-fast` runs whatever it is given.

With more SFCs than workers, the controller sends the hung node at most a bounded number of
calls (counting an SFC placed there before the call answers), places the rest on the healthy
node at once, and re-places the hung node's SFCs when their calls time out or when the node
leaves (its calls cancelled). A failure slower than the resync still waits its back-off."""
import re
import threading
import time
from concurrent import futures

import grpc
import pytest

from serpens.common.keys import Keys
from serpens.common.records import NodeRecord
from serpens.common.rpc import server_credentials
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from support.cluster import FW_MON_NAT, Controller, status, wait_until
from support.etcd import identity
from test_reconcile_isolation import _delete, etcd_call

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

N = 20                 # SFCs: more than the controller's 8 workers
RUNS_PER_NODE = 2      # controller/reconciler.py's bound on Run/Scale/StopSFC calls in flight
CALL_TIMEOUT = 5.0     # its deadline of a StopSFC


class FakeAgent(pb_grpc.AgentServicer):
    """Runs what it is told at once; with `hang`, sits on every RunSFC until released or
    cancelled (counted in `cancelled`); with `fail_after`, refuses every RunSFC that long
    after it came (FAILED_PRECONDITION, as a node that cannot take it)."""

    def __init__(self, name, hang=False, fail_after=None):
        self.name, self.hang, self.fail_after = name, hang, fail_after
        self.hang_stops = False  # sit on every StopSFC (until released or cancelled)
        self.stops = 0           # StopSFC calls that came
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.runs: dict[str, pb.AgentSFC] = {}
        self.calls: list[float] = []   # monotonic time each RunSFC came
        self.cancelled = 0

    def GetNode(self, request, context):
        with self.lock:
            return pb.NodeStatus(name=self.name, sfcs=list(self.runs.values()))

    def RunSFC(self, request, context):
        name = re.search(r"name: (\S+)", request.spec).group(1)
        with self.lock:
            self.calls.append(time.monotonic())
        if self.fail_after is not None:
            time.sleep(self.fail_after)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cannot take it (test)")
        if self.hang:
            while not self.release.wait(0.05):
                if not context.is_active():
                    with self.lock:
                        self.cancelled += 1
                    return pb.AgentSFC()
            context.abort(grpc.StatusCode.UNAVAILABLE, "hung agent: released")
        s = pb.AgentSFC(name=name, generation=request.generation, replicas=request.replicas,
                        incarnation=request.incarnation, instances=request.replicas,
                        phase="Running")
        with self.lock:
            self.runs[name] = s
        return s

    def ScaleSFC(self, request, context):
        with self.lock:
            s = self.runs[request.name]
            s.replicas = s.instances = request.replicas
            return s

    def StopSFC(self, request, context):
        with self.lock:
            self.stops += 1
        if self.hang_stops:
            while not self.release.wait(0.05) and context.is_active():
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "hung agent: released")
        with self.lock:
            if self.runs.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"name: no SFC {request.name!r}")
        return pb.StopSFCResponse()


class Node:
    """A fake agent served over mTLS and registered in etcd as node `agent.name`."""

    def __init__(self, etcd, agent: FakeAgent):
        self.etcd, self.agent = etcd, agent
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        pb_grpc.add_AgentServicer_to_server(agent, self.server)
        port = self.server.add_secure_port("127.0.0.1:0", server_credentials(
            identity("serpens-agent", "agent")))
        self.server.start()
        self.key = Keys().node(agent.name)
        record = NodeRecord(name=agent.name, address=f"127.0.0.1:{port}", pool=64)
        etcd_call(etcd, lambda store: store.put(self.key, record.encode()))

    def unregister(self):
        etcd_call(self.etcd, lambda store: _delete(store, self.key))

    def stop(self):
        self.agent.release.set()
        self.unregister()
        self.server.stop(0)


@pytest.fixture
def nodes(etcd):
    made = []

    def make(agent):
        made.append(Node(etcd, agent))
        return made[-1]
    yield make
    for node in made:
        node.stop()
    etcd_call(etcd, _forget_sfcs)  # the etcd is the session's: leave no SFC to later tests


async def _forget_sfcs(store):
    keys = Keys()
    for prefix in (keys.sfcs, keys.statuses):
        for key, item in (await store.list(prefix))[0].items():
            await store.delete_if(key, item.mod_revision)


def controller_with(etcd, *args):
    return Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5", *args],
                      log_level="info")


def apply_all(controller, names):
    for name in names:
        controller.stub.ApplySFC(pb.ApplySFCRequest(
            spec=FW_MON_NAT.replace("name: fw-mon-nat", f"name: {name}")), timeout=10)


def running_on(controller, names, node):
    return {n for n in names if (s := status(controller.stub, n)).phase == "Running"
            and s.node == node}


NAMES = [f"s{i:02d}" for i in range(N)]


def test_more_sfcs_than_workers_run_beside_a_node_that_hangs_every_run(etcd, nodes):
    run_timeout = 8.0
    hung = nodes(FakeAgent("a-hung", hang=True)).agent  # sorts first: wins load ties
    fast = nodes(FakeAgent("b-fast")).agent
    controller = controller_with(etcd, "--run-timeout-s", str(run_timeout))
    try:
        applied = time.monotonic()
        apply_all(controller, NAMES)
        # all but the calls the hung node holds run on the healthy node well within the
        # deadline: no worker waits on the hung node, nor is every new SFC sent there
        wait_until(lambda: len(running_on(controller, NAMES, "b-fast")) >= N - RUNS_PER_NODE,
                   run_timeout / 2, controller.output)
        assert time.monotonic() - applied < run_timeout / 2
        assert 1 <= len(hung.calls) <= RUNS_PER_NODE, hung.calls
        # those calls time out: their SFCs are placed on the healthy node, and the hung
        # node, now suspect, gets no new call
        wait_until(lambda: len(running_on(controller, NAMES, "b-fast")) == N,
                   run_timeout + 10, controller.output)
        assert len(hung.calls) <= RUNS_PER_NODE, hung.calls
        assert sorted(fast.runs) == NAMES
    finally:
        controller.stop()


def test_a_node_that_leaves_has_its_calls_cancelled_and_its_sfcs_placed_again(etcd, nodes):
    hung_node = nodes(FakeAgent("a-hung", hang=True))
    hung, fast = hung_node.agent, nodes(FakeAgent("b-fast")).agent
    controller = controller_with(etcd)  # RunSFC's deadline: the default 120 s
    try:
        apply_all(controller, NAMES[:4])
        wait_until(lambda: len(hung.calls) >= 1 and
                   len(running_on(controller, NAMES[:4], "b-fast")) == 4 - len(hung.calls),
                   20, controller.output)
        assert hung.cancelled == 0
        left = time.monotonic()
        hung_node.unregister()
        wait_until(lambda: len(running_on(controller, NAMES[:4], "b-fast")) == 4, 20,
                   controller.output)
        wait_until(lambda: hung.cancelled == len(hung.calls), 10, controller.output)
        assert time.monotonic() - left < 30  # far from the 120 s deadline
        assert sorted(fast.runs) == NAMES[:4]
    finally:
        controller.stop()


def test_a_node_that_hangs_on_every_stop_holds_no_more_workers_than_its_bound(etcd, nodes):
    """Every SFC a node runs is deleted while the node sits on each StopSFC: the stops it is
    sent at once are bounded as its runs are, the rest wait their back-off, and SFCs applied
    meanwhile run on the other node without waiting for the stops' deadline."""
    stuck = nodes(FakeAgent("a-stuck")).agent
    controller = controller_with(etcd)
    try:
        apply_all(controller, NAMES)
        wait_until(lambda: len(running_on(controller, NAMES, "a-stuck")) == N, 30,
                   controller.output)
        fast = nodes(FakeAgent("b-fast")).agent
        stuck.hang_stops = True
        for name in NAMES:
            controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=name), timeout=10)
        wait_until(lambda: stuck.stops >= 1, 10, controller.output)
        later = [f"t{i:02d}" for i in range(4)]
        applied = time.monotonic()
        apply_all(controller, later)
        wait_until(lambda: len(running_on(controller, later, "b-fast")) == len(later),
                   CALL_TIMEOUT, controller.output)
        assert time.monotonic() - applied < CALL_TIMEOUT * 0.8
        assert sorted(fast.runs) == later
        assert stuck.stops <= RUNS_PER_NODE, stuck.stops  # (the rest wait out a back-off)
    finally:
        stuck.release.set()
        controller.stop()


def test_a_failure_slower_than_the_resync_still_waits_its_back_off(etcd, nodes):
    """Each RunSFC fails after 0.6 s; the resync (every 0.5 s) re-adds the SFC meanwhile. The
    next attempt must still come only after its back-off (0.2 s, doubling), not at once."""
    slow = nodes(FakeAgent("a-slow", fail_after=0.6)).agent
    controller = controller_with(etcd)
    try:
        apply_all(controller, ["s00"])
        wait_until(lambda: len(slow.calls) >= 5, 30, controller.output)
        gaps = [b - a for a, b in zip(slow.calls, slow.calls[1:])]
        for i, gap in enumerate(gaps[:4]):
            backoff = 0.2 * 2 ** i  # controller/reconciler.py's _BACKOFF_FIRST, doubling
            assert gap >= 0.6 + 0.95 * backoff, (i, gaps)
        assert status(controller.stub, "s00").phase == "Pending"
    finally:
        controller.stop()
