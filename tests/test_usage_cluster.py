"""Usage through the control plane (paper §VI, Billing): a real etcd, `serpens-controller` and a
`serpens-agent` metering FW -> MON -> NAT under a replayed capture. Serpens.GetUsage sums what
the agents meter and answers viewers; Agent.GetUsage answers only the controller; `serpensctl
usage` prints it; the totals survive the agent killed with SIGKILL and started again."""
import json
import os
import shutil
import subprocess
import time

import grpc
import pytest

from serpens.cli.cluster import local_node
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc
from serpens.runtime_cy.primary import remove_stale_files

from support.cluster import BIN, FW_MON_NAT, Agent, Controller, status, wait_until
from support.etcd import identity, secure_channel, serpensctl_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

NODE = "metered"
FRAME = 64  # every frame of examples/traffic.pcap (the node's replayed capture) is 64 bytes


@pytest.fixture(scope="module")
def cluster(etcd, tmp_path_factory):
    state_dir = f"/dev/shm/serpens-usage-test-{os.getpid()}"
    node_path = tmp_path_factory.mktemp("usage") / "node.yaml"
    node_path.write_text(local_node(NODE, 5000, pool=2, state_dir=state_dir))
    controller = Controller(etcd.endpoint, args=["--resync-s", "0.5"])
    c = {"controller": controller, "node_path": str(node_path), "state_dir": state_dir,
         "agent": Agent(etcd.endpoint, str(node_path))}
    try:
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
        wait_until(lambda: status(controller.stub, "fw-mon-nat").phase == "Running", 60,
                   controller.output)
        yield c
    finally:
        assert c["agent"].stop() == 0, c["agent"].output()
        controller.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def usage(stub, **kw):
    reply = stub.GetUsage(pb.GetUsageRequest(**kw), timeout=10)
    return {s.sfc: s for s in reply.sfcs}, reply


def test_getusage_sums_the_nodes_and_answers_viewers(cluster):
    controller = cluster["controller"]
    with secure_channel(controller.address, identity("vera", "viewer")) as channel:
        stub = serpens_pb2_grpc.SerpensStub(channel)
        rows = wait_until(lambda: (r := usage(stub, sfc="fw-mon-nat")[0]) and
                          r["fw-mon-nat"].total.packets > 1000 and r, 30, controller.output)
        u = rows["fw-mon-nat"]
        assert list(u.nodes) == [NODE] and u.nodes[NODE] == u.total
        assert u.total.bytes == FRAME * u.total.packets  # exactly the frames processed
        assert 0 < u.total.cpu_seconds < 60
        assert u.total.state_byte_seconds > 0  # MON's and NAT's tables, over time
        # the agent's own counters: what it processed so far is at least what was metered
        node = cluster["agent"].sfcs()["fw-mon-nat"]
        assert node.out + node.dropped >= u.total.packets
        # since: from that minute on, within the totals
        t = int(time.time() - 30)
        rows, reply = usage(stub, since=_ts(t))
        assert reply.since.seconds == t // 60 * 60
        assert 0 < rows["fw-mon-nat"].total.packets
        # refused by name
        for request, field, code in (
                (pb.GetUsageRequest(sfc="Not_A_Name"), "sfc", grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetUsageRequest(since=_ts(time.time() - 2 * 86400)), "since",
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetUsageRequest(since=_ts(time.time() + 3600)), "since",
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetUsageRequest(sfc="nope"), "sfc", grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.RpcError) as e:
                stub.GetUsage(request, timeout=10)
            assert e.value.code() == code and e.value.details().startswith(f"{field}:"), \
                e.value.details()
    # the Agent service: the controller's identity only
    agent = cluster["agent"]
    for who in (identity("admin", "admin"), identity("vera", "viewer")):
        with secure_channel(agent.address, who) as channel:
            with pytest.raises(grpc.RpcError) as e:
                serpens_pb2_grpc.AgentStub(channel).GetUsage(pb.GetUsageRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    mine = agent.stub.GetUsage(pb.GetUsageRequest(), timeout=5)
    assert mine.node == NODE and "fw-mon-nat" in {s.sfc for s in mine.sfcs}


def test_serpensctl_usage_prints_a_table_and_json(cluster):
    ctl = [os.path.join(BIN, "serpensctl"), "--config", serpensctl_config("vera", "viewer"),
           "--server", cluster["controller"].address]
    out = subprocess.run(ctl + ["usage", "fw-mon-nat", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (row,) = doc["sfcs"]
    assert row["sfc"] == "fw-mon-nat" and row["bytes"] == FRAME * row["packets"] > 0
    assert set(row["nodes"]) == {NODE} and doc["since"] is None and doc["unreachable"] == []
    out = subprocess.run(ctl + ["usage", "--since", "10m"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("since ") and lines[1].split()[:3] == ["SFC", "PACKETS", "BYTES"]
    cells = lines[2].split()
    assert cells[0] == "fw-mon-nat" and int(cells[2]) == FRAME * int(cells[1]) and \
        cells[-1] == NODE
    out = subprocess.run(ctl + ["usage", "--since", "yesterday"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--since" in out.stderr


def test_totals_survive_the_agent_killed_and_started_again(cluster, etcd):
    controller, agent = cluster["controller"], cluster["agent"]
    before = agent.stub.GetUsage(pb.GetUsageRequest(sfc="fw-mon-nat"), timeout=5)
    packets = before.sfcs[0].total.packets
    assert packets > 0
    path = os.path.join(cluster["state_dir"], f".usage-{NODE}.json")
    # written every report period: wait until the file holds what was read
    wait_until(lambda: json.load(open(path))["totals"]["fw-mon-nat"][0] >= packets, 10)
    agent.proc.kill()  # SIGKILL: no last sample, no deregistration
    agent.proc.wait()
    agent.channel.close()
    remove_stale_files(f"serpens-node-{NODE}-{agent.proc.pid}")
    cluster["agent"] = agent = Agent(etcd.endpoint, cluster["node_path"])
    # the totals are back before the agent answers anything
    again = agent.stub.GetUsage(pb.GetUsageRequest(sfc="fw-mon-nat"), timeout=5)
    after = again.sfcs[0].total
    assert after.packets >= packets and after.bytes == FRAME * after.packets
    assert after.cpu_seconds >= before.sfcs[0].total.cpu_seconds
    assert after.state_byte_seconds >= before.sfcs[0].total.state_byte_seconds
    # the controller runs the SFC there again, and the totals go on from there
    wait_until(lambda: usage(controller.stub, sfc="fw-mon-nat")[0]["fw-mon-nat"].total.packets
               > after.packets + 1000, 60, controller.output)
    rows, _ = usage(controller.stub, sfc="fw-mon-nat")
    assert rows["fw-mon-nat"].total.bytes == FRAME * rows["fw-mon-nat"].total.packets


def _ts(seconds):
    from google.protobuf.timestamp_pb2 import Timestamp
    t = Timestamp()
    t.FromSeconds(int(seconds))
    return t
