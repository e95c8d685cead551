"""Checkpoints against node loss (issue 14 item 4), end to end with the real programs: etcd
and `serpens-controller` on the host, `serpens-gateway` and three `serpens-agent`s each in its
own network namespace (cli/testbed.py), MON served through the gateway from one server with
`state: {checkpoint_s: 1}`.

Checked: under traffic the server ships checkpoints to a peer (a file in the peer's state
directory); its agent killed -9 (the data plane is in it), the SFC resumes on another server
from the last checkpoint, with MON's counts no older than the checkpoint interval plus one
second (counts at the kill minus what arrived in its last 2 s <= restored <= counts at the
kill), says so in its status (the checkpoint's age; `serpensctl get sfc`), goes on counting
from there, and the lost node's checkpoint is deleted once the new server's own is kept. An
SFC whose node is lost before its first checkpoint starts empty, and its status says so. A
bad period is refused by the API: INVALID_ARGUMENT naming `spec.state.checkpoint_s`."""
import json
import os
import re
import struct
import subprocess
import threading
import time

import grpc
import pytest
from scapy.layers.inet import IP, UDP

from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import BIN, status, wait_until
from support.etcd import serpensctl_config
from support.gateway_bed import gateway_cluster
from support.packets import eth
from support.taps import Tap

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="makes network namespaces: root")]

SERVERS = ("s1", "s2", "s3")
HOSTS = 16                      # MON counts per source host and per flow
PERIOD_S = 1                    # spec.state.checkpoint_s


def mon_sfc(name: str, checkpoint_s: int) -> str:
    return json.dumps({
        "apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": name},
        "spec": {"nfs": {"mon": {"stock": "mon"}}, "chain": ["mon"], "output": "gateway",
                 "scale": {"min": 1, "max": 1}, "state": {"checkpoint_s": checkpoint_s}}})


def frame(i: int) -> bytes:
    f = i % HOSTS
    return bytes(eth() / IP(src=f"10.2.0.{f + 1}", dst="198.51.100.9")
                 / UDP(sport=4000 + f, dport=53) / struct.pack("!I", i))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # agents are killed -9 here: their exit codes say nothing
    with gateway_cluster("k", SERVERS, tmp_path_factory.mktemp("ckpt"),
                         check_exits=False) as c:
        yield c


def apply(c, name: str, checkpoint_s: int) -> str:
    """Apply a MON SFC; the server it runs on once it runs there with a checkpoint peer."""
    c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=mon_sfc(name, checkpoint_s)),
                               timeout=10)
    st = wait_until(lambda: (s := status(c.controller.stub, name)).phase == "Running"
                    and s.checkpoint_to and s, 60, lambda: c.controller.output()[-4000:])
    assert st.checkpoint_to != st.node and st.checkpoint_to in SERVERS
    return st.node


def counts(c, node: str, sfc: str) -> tuple[int, int]:
    """MON's (packets over its flows, packets over its hosts) on `node`, replicas merged."""
    reply = c.agents[node].stub.ReadState(pb.ReadStateRequest(sfc=sfc, nf="mon", merge=True,
                                                              limit=1000), timeout=10)
    tables = {t.name: sum(json.loads(e.decoded)["packets"] for e in t.entries)
              for t in reply.tables}
    return tables.get("flows", 0), tables.get("hosts", 0)


def checkpoint_file(c, keeper: str, of: str, sfc: str) -> str:
    return os.path.join(c.state, keeper, ".checkpoints", of, f"{sfc}.ckpt")


def checkpoint_seq(path: str) -> int:
    """The number of the checkpoint a peer keeps (its file's header, agent/checkpoints.py)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    (n,) = struct.unpack_from("<I", head, 8)
    return json.loads(head[12:12 + n])["seq"]


class Sender(threading.Thread):
    """Frames into the gateway at about `pps`, remembering when each was sent."""

    def __init__(self, tap: Tap, pps: int = 400):
        super().__init__(daemon=True)
        self.tap, self.gap, self.sent = tap, 1.0 / pps, []   # [monotonic time of frame i]
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            self.tap.sock.send(frame(i))
            self.sent.append(time.monotonic())
            i += 1
            time.sleep(self.gap)

    def before(self, t: float) -> int:
        return sum(1 for s in self.sent if s < t)


def test_a_bad_checkpoint_period_is_refused_by_field(cluster):
    for bad in (0, 3601, "1"):
        with pytest.raises(grpc.RpcError) as e:
            cluster.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=mon_sfc("bad", bad)),
                                             timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("spec.state.checkpoint_s: seconds 1..3600")


def test_a_lost_nodes_sfc_resumes_elsewhere_from_its_last_checkpoint(cluster):
    c, sfc = cluster, "mon-ckpt"
    node = apply(c, sfc, PERIOD_S)
    peer = status(c.controller.stub, sfc).checkpoint_to
    sender = Sender(c.ingress)
    sender.start()
    try:
        wait_until(lambda: counts(c, node, sfc)[0] > 0, 20, lambda: c.agents[node].output())
        time.sleep(4 * PERIOD_S)   # several checkpoints, the later ones incremental
        # the peer keeps the last of several checkpoints; only the first was sent whole
        seq = checkpoint_seq(checkpoint_file(c, peer, node, sfc))
        assert seq >= 3, seq
        assert len(re.findall(rf"checkpoint \d+ of {sfc} to {peer}: whole",
                              c.agents[node].output())) == 1, c.agents[node].output()
        killed_at = time.monotonic()
        c.agents[node].proc.kill()   # kill -9: the agent and its data plane (the router)
        at_kill = sender.before(killed_at)
        c.agents[node].proc.wait()
    finally:
        sender.stop.set()
        sender.join()
    lower = sender.before(killed_at - (PERIOD_S + 1))
    st = wait_until(lambda: (s := status(c.controller.stub, sfc)).phase == "Running" and
                    s.node != node and s.restored_of and s, 60,
                    lambda: c.controller.output()[-6000:])
    restored_at = time.monotonic()
    assert st.restored_of == node and 0 <= st.restored_age_ms, st
    # (its age at the restore: the kill, the lease running out, the placement, then the pull)
    assert st.restored_age_ms <= (restored_at - killed_at + PERIOD_S + 1) * 1000, st
    new = st.node
    flows, hosts = counts(c, new, sfc)
    assert lower <= flows <= at_kill, (lower, flows, at_kill)
    assert lower <= hosts <= at_kill, (lower, hosts, at_kill)
    assert lower > 0   # (traffic ran longer than the bound's window: it says something)

    # `serpensctl get sfc` says how old the checkpoint was
    out = subprocess.run([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                          "--server", c.controller.address, "get", "sfc", sfc],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"of {node}: {st.restored_age_ms / 1000:.1f}s old" in out.stdout, out.stdout

    # it counts on from there: every frame sent now is counted once, on top
    more = 300
    c.ingress.send([frame(10 ** 6 + i) for i in range(more)])
    wait_until(lambda: counts(c, new, sfc) == (flows + more, hosts + more), 20,
               lambda: f"{counts(c, new, sfc)} != {(flows + more, hosts + more)}")

    # the new server checkpoints to a live peer; the lost node's checkpoint is then deleted
    st = wait_until(lambda: (s := status(c.controller.stub, sfc)).checkpoint_to and s, 20)
    assert st.checkpoint_to not in (node, new)
    wait_until(lambda: os.path.exists(checkpoint_file(c, st.checkpoint_to, new, sfc)), 20,
               lambda: c.agents[new].output()[-4000:])
    wait_until(lambda: not os.path.exists(checkpoint_file(c, peer, node, sfc)), 20,
               lambda: c.agents[new].output()[-4000:])

    # deleting the SFC deletes its checkpoint
    keeper = st.checkpoint_to
    c.controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=sfc), timeout=10)
    wait_until(lambda: not os.path.exists(checkpoint_file(c, keeper, new, sfc)), 20,
               lambda: c.agents[new].output()[-4000:])

    c.start_agent(node)   # the lost server comes back for the next test


def test_a_lost_node_without_a_checkpoint_starts_empty_and_says_so(cluster):
    c, sfc = cluster, "mon-late"
    wait_until(lambda: len(c.controller.stub.ListNodes(pb.ListNodesRequest(),
                                                       timeout=5).nodes) == 3, 60)
    node = apply(c, sfc, 3600)           # its first checkpoint an hour away
    c.ingress.send([frame(i) for i in range(50)])
    wait_until(lambda: counts(c, node, sfc)[0] == 50, 20)
    c.agents[node].proc.kill()
    c.agents[node].proc.wait()
    st = wait_until(lambda: (s := status(c.controller.stub, sfc)).phase == "Running" and
                    s.node != node and s.restored_of and s, 60,
                    lambda: c.controller.output()[-6000:])
    assert st.restored_of == node and st.restored_age_ms == -1, st
    assert "no checkpoint" in st.restore and "started empty" in st.restore, st.restore
    assert counts(c, st.node, sfc) == (0, 0)
    c.controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=sfc), timeout=10)
    c.start_agent(node)


def test_a_spread_sfcs_lost_node_is_restored_by_the_node_taking_its_place(cluster):
    """Spread over two servers (review of issue 14): the first one's agent killed -9, the
    server taking its place (one not running the SFC) restores its checkpoint, kept by its
    own peer, instead of a seed: MON's counts of the lost server are back, on the new one."""
    c, sfc = cluster, "mon-spread"
    wait_until(lambda: len(c.controller.stub.ListNodes(pb.ListNodesRequest(),
                                                       timeout=5).nodes) == 3, 60)
    doc = json.loads(mon_sfc(sfc, PERIOD_S))
    doc["spec"].update(placement={"spread": 2}, scale={"min": 2, "max": 2})
    c.controller.stub.ApplySFC(pb.ApplySFCRequest(spec=json.dumps(doc)), timeout=10)
    st = wait_until(lambda: (s := status(c.controller.stub, sfc)).phase == "Running" and
                    len(s.checkpoint_peers) == 2 and s, 60,
                    lambda: c.controller.output()[-4000:])
    lost, other = st.node, next(n for n in st.nodes if n != st.node)
    third = next(n for n in SERVERS if n not in st.nodes)
    assert dict(st.checkpoint_peers)[lost] == other, st
    sent = 400
    c.ingress.send([frame(i) for i in range(sent)])
    wait_until(lambda: counts(c, lost, sfc)[0] + counts(c, other, sfc)[0] == sent, 20)
    time.sleep(3 * PERIOD_S)         # checkpoints of what it counted
    had = counts(c, lost, sfc)       # (no traffic since: its last checkpoints have it all)
    assert had[0] > 0, had           # (the gateway sent it some of the flows)
    c.agents[lost].proc.kill()
    c.agents[lost].proc.wait()
    st = wait_until(lambda: (s := status(c.controller.stub, sfc)).phase == "Running" and
                    set(s.nodes) == {other, third} and s.restored_of and s, 60,
                    lambda: c.controller.output()[-6000:])
    assert st.restored_of == lost and st.restored_age_ms >= 0, st
    assert f"kept by {other}" in st.restore, st.restore
    assert counts(c, third, sfc) == had      # its counts, from its checkpoint (not a seed)
    assert f"sfc {sfc}: seeded from" not in c.agents[third].output()
    c.controller.stub.DeleteSFC(pb.DeleteSFCRequest(name=sfc), timeout=10)
    c.start_agent(lost)
