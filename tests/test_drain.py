"""Draining a server under traffic, end to end with the real programs (issue 14's acceptance:
"a drained node ends with no instance and no lost packet"): etcd and `serpens-controller` on
the host, `serpens-gateway` and two `serpens-agent`s each in its own namespace of a
cli/testbed.py testbed (VXLAN over veths and a bridge), the SFC FW -> MON -> NAT spread over
both servers.

While the test sends a steady stream (every flow numbered, frame by frame) into the gateway,
`serpensctl drain node s2 --wait` moves s2's flows with their state to s1 and ends when s2
runs nothing. Checked: every frame sent leaves the egress exactly once and each flow's frames
in order; the gateway's counters (in, to servers, back) and the servers' VXLAN counters
account for every frame; each flow keeps its NAT mapping (its per-flow state moved with it);
s2 then takes no placement until `serpensctl undrain node s2`, after which the SFC spreads
over both again."""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from serpens.cli import multi
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import Gateway, status, wait_until
from support.etcd import serpensctl_config
from support.gateway_bed import gateway_cluster
from test_multinode_gateway import frames, mark, normalized

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

SERVERS = ("s1", "s2")
SFC = "fw-mon-nat"
FLOWS = range(64)
ROUND_S = 0.02          # one frame of every flow each round: 3200 frames/s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with gateway_cluster("d", SERVERS, tmp_path_factory.mktemp("drain")) as c:
        c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=multi.spread_sfc(2)), timeout=10)
        wait_until(lambda: route(c) == set(SERVERS), 90, lambda: c.controller.output()[-4000:])
        yield c


def route(c) -> set[str]:
    """The servers of the SFC's route at the gateway."""
    sfc = c.gateway.status().sfcs.get(SFC)
    return set(sfc.servers) if sfc else set()


def serpensctl(c, *args, timeout=200) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "serpensctl"),
                           "--config", serpensctl_config(), "--server", c.controller.address,
                           *args],
                          capture_output=True, text=True, timeout=timeout)


def counters(c) -> dict:
    """The gateway's counters of the SFC and each server's VXLAN frames taken."""
    g = c.gateway.status().sfcs[SFC]
    nodes = {s: a.stub.GetNode(pb.GetNodeRequest(), timeout=5) for s, a in c.agents.items()}
    return {"rx": g.rx, "tx": g.tx, "back": g.back, "gw_drops": sum(g.drops.values()),
            "vxlan_rx": sum(n.vxlan_rx for n in nodes.values()),
            **{f"vxlan_{why}": sum(n.vxlan_drops.get(why, 0) for n in nodes.values())
               for why in {w for n in nodes.values() for w in n.vxlan_drops}}}


class Stream:
    """Frames of FLOWS, one of each flow per round, sent from a thread until stop(); the
    egress read by another thread meanwhile."""

    def __init__(self, c):
        self.c, self.sent, self.got = c, 0, []
        self._stop = threading.Event()
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reading = True
        c.egress.drain()
        self._reader.start()
        self._sender.start()

    def _send(self):
        seq = 0
        while not self._stop.is_set():
            self.c.ingress.send(frames(FLOWS, 1, first_seq=seq))
            self.sent += len(FLOWS)
            seq += 1
            time.sleep(ROUND_S)

    def _read(self):
        ours = lambda f: (m := mark(f)) is not None and m[0] in FLOWS  # noqa: E731
        while self._reading:
            self.got += self.c.egress.collect(ours, seconds=0.2)

    def stop(self) -> tuple[int, list[bytes]]:
        self._stop.set()
        self._sender.join()
        deadline = time.monotonic() + 10     # until everything sent came out (or not)
        while len(self.got) < self.sent and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)                       # a frame twice would show here
        self._reading = False
        self._reader.join()
        return self.sent, self.got


def test_drain_moves_every_flow_off_a_server_without_losing_a_packet(cluster):
    c = cluster
    assert set(c.agents["s2"].sfcs()) == {SFC}
    before = counters(c)
    stream = Stream(c)
    time.sleep(1.0)                                    # flows pinned to both servers
    r = serpensctl(c, "drain", "node", "s2", "--wait", "--wait-timeout", "120")
    print(r.stdout, *[line for line in c.controller.output().splitlines()
                      if "serpens.controller.moves" in line], sep="\n")
    time.sleep(1.0)                                    # and traffic on s1 alone for a while
    sent, got = stream.stop()
    assert r.returncode == 0, r.stdout + r.stderr + c.controller.output()[-6000:]
    assert "node/s2 cordoned" in r.stdout and "node/s2 drained: it runs nothing" in r.stdout
    assert c.agents["s2"].sfcs() == {}, "s2 still runs an SFC"
    assert route(c) == {"s1"}
    assert sum(moved_flows(c, "s2", "s1")) > 0, "s2 served no flow before the drain"

    nothing_lost(c, before, sent, got)


def nothing_lost(c, before: dict, sent: int, got: list[bytes]):
    """Every frame of the stream came out once, each flow's in order and with one NAT
    mapping (its per-flow state went with it), and the counters on both sides say so."""
    seen = collections.Counter(mark(f) for f in got)
    twice = [m for m, n in seen.items() if n > 1]
    expected = {(f, s) for s in range(sent // len(FLOWS)) for f in FLOWS}
    lost = expected - set(seen)
    assert not lost and not twice, (f"{len(lost)} lost, {len(twice)} twice of {sent}: "
                                     f"{sorted(lost)[:8]}...\n{where(c, before)}")
    per_flow = collections.defaultdict(list)
    pairs = collections.defaultdict(set)
    for frame in got:
        flow, seq = mark(frame)
        per_flow[flow].append(seq)
        pairs[flow].add(normalized(frame)[0])
    assert all(seqs == sorted(seqs) for seqs in per_flow.values()), "reordered"
    after = wait_until(lambda: (a := counters(c))["back"] - before["back"] >= sent and a, 10,
                       lambda: str(counters(c)))
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["rx"] == delta["tx"] == delta["back"] == sent, delta
    assert delta["vxlan_rx"] == sent and delta["gw_drops"] == 0, delta
    # (not_ours: frames for another address, e.g. the gateway's ARP marker to the source
    # (a broadcast) reaching the other server: none of the stream's)
    assert not any(v for k, v in delta.items() if k.startswith("vxlan_") and
                   k not in ("vxlan_rx", "vxlan_not_ours")), str(delta)
    changed = {f: p for f, p in pairs.items() if len(p) > 1}
    assert not changed, f"NAT mappings changed by the move: {changed}"


def where(c, before: dict) -> str:
    """Where lost frames may have gone: the counters' changes, the gateway's and each server's
    drops by reason and port counters (tx_failed, missed)."""
    after = counters(c)
    g = c.gateway.status()
    nodes = {s: a.stub.GetNode(pb.GetNodeRequest(), timeout=5) for s, a in c.agents.items()}
    return "\n".join([
        f"counters' change: { {k: after[k] - before.get(k, 0) for k in after} } (rx short of "
        "the frames sent: lost before the gateway classified them, e.g. its ingress ring full "
        "while its loop did not run)",
        f"gateway drops {dict(g.drops)}, sfc drops {dict(g.sfcs[SFC].drops)}, held "
        f"{g.sfcs[SFC].held} (dropped {g.sfcs[SFC].held_dropped}), ports "
        f"{ {n: (p.tx_failed, p.missed) for n, p in g.ports.items()} } (tx_failed, missed)",
        *(f"{s}: vxlan drops {dict(n.vxlan_drops)}, ports "
          f"{ {k: (p.tx_failed, p.missed) for k, p in n.ports.items()} }, sfcs "
          f"{ {x.name: (x.dropped, dict(x.drops)) for x in n.sfcs} }"
          for s, n in nodes.items()),
        f"kernel drops on the testbed's links: {c.bed.drops()}, softnet backlog drops "
        f"(per CPU): {softnet_dropped()}"])


def softnet_dropped() -> list[int]:
    with open("/proc/net/softnet_stat") as f:
        return [int(line.split()[1], 16) for line in f]


def test_a_drained_server_takes_no_placement_until_undrained(cluster):
    c = cluster
    stub = c.controller.stub
    if "s2" not in {n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
                    if n.cordoned}:
        assert serpensctl(c, "drain", "node", "s2", "--wait").returncode == 0
    time.sleep(3.0)                                    # six resyncs: nothing goes to s2
    assert route(c) == {"s1"} and c.agents["s2"].sfcs() == {}
    st = status(stub, SFC)
    assert st.phase in ("Running", "Degraded") and st.node == "s1", st
    r = serpensctl(c, "undrain", "node", "s2")
    assert r.returncode == 0 and "node/s2 takes placements again" in r.stdout, r.stderr
    wait_until(lambda: route(c) == set(SERVERS), 60, lambda: c.controller.output()[-4000:])
    assert list(status(stub, SFC).joined) == ["s1", "s2"]


def test_move_sfc_moves_every_flow_to_one_server_without_losing_a_packet(cluster):
    c = cluster
    wait_until(lambda: route(c) == set(SERVERS), 60, lambda: c.controller.output()[-4000:])
    before = counters(c)
    stream = Stream(c)
    time.sleep(1.0)
    r = serpensctl(c, "move", "sfc", SFC, "--to", "s2", "--wait", "--wait-timeout", "120")
    time.sleep(1.0)
    sent, got = stream.stop()
    assert r.returncode == 0, r.stdout + r.stderr + c.controller.output()[-6000:]
    assert f"sfc/{SFC} moving to s2 (from s1, s2)" in r.stdout, r.stdout
    assert f"sfc/{SFC} moved to s2" in r.stdout, r.stdout
    assert sum(moved_flows(c, "s1", "s2")) > 0, "s1 served no flow before the move"
    nothing_lost(c, before, sent, got)


def test_scale_in_moves_the_flows_of_the_server_that_joined_last(cluster):
    c = cluster
    stub = c.controller.stub
    doc = json.loads(multi.spread_sfc(2))
    doc["spec"]["scale"]["min"] = 1                    # one replica: one server is enough
    sfc = stub.ApplySFC(pb.ApplySFCRequest(spec=json.dumps(doc)), timeout=10)
    wait_until(lambda: (s := status(stub, SFC)).generation == sfc.generation and
               s.phase == "Running" and route(c) == set(SERVERS), 60,
               lambda: c.controller.output()[-4000:])
    first, last = status(stub, SFC).joined
    before = counters(c)
    stream = Stream(c)
    time.sleep(1.0)
    stub.Scale(pb.ScaleRequest(sfc=SFC, replicas=1), timeout=10)
    wait_until(lambda: route(c) == {first} and c.agents[last].sfcs() == {}, 60,
               lambda: c.controller.output()[-4000:])
    time.sleep(1.0)
    sent, got = stream.stop()
    assert list(status(stub, SFC).joined) == [first]
    nothing_lost(c, before, sent, got)


def moved_flows(c, source: str, target: str) -> list[int]:
    """The flows counted by each move source -> target the controller logged."""
    return [int(n) for n in re.findall(rf"moved (\d+) flows \(\d+ entries\) {source} -> "
                                       rf"{target}", c.controller.output())]


def test_a_move_whose_gateway_goes_away_waits_for_one_and_keeps_the_flows_state(cluster):
    """Review of issue 14: the gateway stops answering as `move sfc` starts (the hand-over
    fails: it cannot take the route) and its record then expires: the source's per-flow state
    moves only behind a gateway's hold, so the source keeps serving (with its state) until a
    gateway is back, never stopped without handing its flows over; then the move goes on
    and moves the source's per-flow entries before it stops."""
    c = cluster
    stub = c.controller.stub
    stub.ApplySFC(pb.ApplySFCRequest(spec=multi.spread_sfc(2)), timeout=10)
    wait_until(lambda: route(c) == set(SERVERS), 60, lambda: c.controller.output()[-4000:])
    stream = Stream(c)
    time.sleep(1.0)                                    # per-flow entries on both servers
    stream.stop()
    log_from = len(c.controller.output())
    log = lambda: c.controller.output()[log_from:]  # noqa: E731 - this test's part
    os.kill(c.gateway.proc.pid, signal.SIGSTOP)        # answers nothing, renews no lease
    try:
        stub.MoveSFC(pb.MoveSFCRequest(sfc=SFC, node="s1"), timeout=5)
        wait_until(lambda: not stub.ListGateways(pb.ListGatewaysRequest(), timeout=5).gateways,
                   30)
        st = wait_until(lambda: "no gateway is registered (it went away)" in
                        (s := status(stub, SFC)).message and s, 30,
                        lambda: f"{status(stub, SFC)}\n{log()[-4000:]}")
        time.sleep(2.0)                                # four resyncs: it keeps waiting
        assert set(c.agents["s2"].sfcs()) == {SFC}, st
        assert "stopped on node s2" not in log(), log()
    finally:
        c.gateway.kill()
        c.gateway = None                               # (killed: not stopped at the end)
    c.gateway = Gateway(c.etcd.endpoint, str(c.files / "gateway.yaml"),
                        host=c.bed.address[multi.GATEWAY], netns=c.bed.ns[multi.GATEWAY])
    entries = lambda: [int(n) for n in re.findall(  # noqa: E731
        r"moved \d+ flows \((\d+) entries\) s2 -> s1", log())]
    wait_until(lambda: entries() and "stopped on node s2, its state returned to s1" in log(),
               60, lambda: log()[-4000:])
    assert entries()[-1] > 0, "s2's per-flow entries did not move before it stopped"
