"""The control plane end to end: a real etcd, `serpens-controller` replicas and a
`serpens-agent` running a DPDK node (a capture replayed at a steady rate into the router, a
null sink out), all as subprocesses talking real gRPC. An SFC applied through the API runs
on the node and its packets leave; scale and delete reach the node; a spec the node refuses
shows as Failed with the field named; a killed leader is replaced and traffic never stops."""
import json
import os
import signal
import subprocess
import time

import grpc
import pytest

from serpens.common.bulk import pieces
from serpens.common.limits import LIMITS
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import (BIN, FW_MON_NAT, NODE, ROOT, Agent, Controller,
                             check_health_and_reflection, status, wait_until)
from support.etcd import serpensctl_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(etcd, tmp_path_factory):
    node_path = tmp_path_factory.mktemp("cluster") / "node.yaml"
    node_path.write_text(NODE)
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"],
                            log_level="info")
    agent = Agent(etcd.endpoint, str(node_path))
    yield controller, agent
    assert agent.stop() == 0, agent.output()
    controller.stop()


def test_a_lost_node_s_sfcs_move_to_a_live_node(cluster, etcd, tmp_path):
    controller, agent = cluster
    spare_path = tmp_path / "spare.yaml"
    spare_path.write_text(NODE.replace("name: local", "name: spare"))
    spare = Agent(etcd.endpoint, str(spare_path))
    try:
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
        st = wait_until(lambda: (s := status(controller.stub, "fw-mon-nat")).phase == "Running"
                        and s, 60, controller.output)
        lost, survivor = (agent, spare) if st.node == "local" else (spare, agent)
        lost.proc.send_signal(signal.SIGSTOP)  # frozen: its lease runs out, it answers nothing
        try:
            moved = wait_until(lambda: (s := status(controller.stub, "fw-mon-nat")).node
                               not in ("", st.node) and s.phase == "Running" and s, 30,
                               controller.output)
            out = wait_until(lambda: survivor.sfcs()["fw-mon-nat"].out, 10, survivor.output)
            assert out > 0 and moved.node != st.node
        finally:
            lost.proc.send_signal(signal.SIGCONT)
        # back, it registers again, and the copy it still runs is stopped
        wait_until(lambda: "fw-mon-nat" not in lost.sfcs(), 30, controller.output)
        assert status(controller.stub, "fw-mon-nat").node == moved.node
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
        wait_until(lambda: "fw-mon-nat" not in survivor.sfcs(), 10, controller.output)
    finally:
        assert spare.stop() == 0, spare.output()


def test_the_agent_serves_health_and_reflection(cluster):
    check_health_and_reflection(cluster[1].channel, "serpens.v1.Agent")


def flowing(controller, agent, name):
    """Until the node passes the SFC's packets and the controller says it runs there: state
    calls go through the controller, and the agent passes packets a moment before its
    RunSFC reply is recorded."""
    wait_until(lambda: (s := agent.sfcs().get(name)) and s.out, 60, controller.output)
    wait_until(lambda: status(controller.stub, name).phase == "Running", 30, controller.output)


def test_applied_sfc_runs_on_the_node_scales_and_goes(cluster):
    controller, agent = cluster
    stub = controller.stub
    applied = stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    assert applied.generation == 1
    st = wait_until(lambda: (s := status(stub, "fw-mon-nat")).phase == "Running" and s,
                    60, controller.output)
    assert (st.node, st.generation) == ("local", 1)
    out = wait_until(lambda: agent.sfcs()["fw-mon-nat"].out > 0, 10, agent.output)
    assert out

    stub.Scale(pb.ScaleRequest(sfc="fw-mon-nat", replicas=2), timeout=5)
    wait_until(lambda: agent.sfcs()["fw-mon-nat"].instances == 2, 10, controller.output)
    wait_until(lambda: status(stub, "fw-mon-nat").instances == 2, 10, controller.output)

    # a changed spec is a new generation, replaced in place on the node
    changed = FW_MON_NAT.replace("idle_timeout: 300", "idle_timeout: 200")
    assert stub.ApplySFC(pb.ApplySFCRequest(spec=changed), timeout=10).generation == 2
    wait_until(lambda: agent.sfcs()["fw-mon-nat"].generation == 2, 30, controller.output)
    before = agent.sfcs()["fw-mon-nat"].out
    wait_until(lambda: agent.sfcs()["fw-mon-nat"].out > before, 10, agent.output)
    # a deposed leader's late call with the older spec changes nothing
    running = agent.sfcs()["fw-mon-nat"]
    e = pytest.raises(grpc.RpcError, agent.stub.RunSFC, pb.RunSFCRequest(
        spec=FW_MON_NAT, generation=1, incarnation=running.incarnation), timeout=30).value
    assert e.code() == grpc.StatusCode.ABORTED and "generation 2" in e.details()
    assert agent.sfcs()["fw-mon-nat"].generation == 2

    # deleted and applied again at once: generation 1 again, but a new incarnation, so the
    # node runs the new spec rather than keeping (or refusing it for) the old copy
    stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    again = stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    assert again.generation == 1
    wait_until(lambda: (s := agent.sfcs().get("fw-mon-nat")) and s.generation == 1
               and s.incarnation > running.incarnation, 30, controller.output)
    wait_until(lambda: status(stub, "fw-mon-nat").phase == "Running", 30, controller.output)

    stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, controller.output)


def test_an_sfc_with_a_target_rate_is_autoscaled_from_reported_load(cluster):
    controller, agent = cluster
    # 5000 packets/s arrive; 1000 per instance wanted: 5 instances, but the node's pool has 2
    spec = FW_MON_NAT.replace("name: fw-mon-nat", "name: auto") + \
        "  scale: {min: 1, max: 8, target_pps: 1000}\n"
    sfc = controller.stub.ApplySFC(pb.ApplySFCRequest(spec=spec), timeout=10)
    assert (sfc.scale.min_replicas, sfc.scale.max_replicas, sfc.scale.target_pps) == (1, 8, 1000)
    wait_until(lambda: (s := agent.sfcs().get("auto")) and s.instances == 2, 30,
               controller.output)
    assert controller.stub.GetSFC(pb.GetSFCRequest(name="auto"), timeout=5).scale.replicas == 2
    assert "autoscaling sfc auto: 1 -> 2" in controller.output()
    # capped once a load report shows the full rate (the first ones may not, on a busy host)
    wait_until(lambda: "node local has pool processes for 2" in controller.output(), 10,
               controller.output)
    assert status(controller.stub, "auto").phase == "Running"
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="auto"), timeout=5)
    wait_until(lambda: "auto" not in agent.sfcs(), 10, controller.output)


def test_a_spec_the_node_refuses_is_failed_naming_the_field(cluster):
    controller, agent = cluster
    bad = FW_MON_NAT.replace("name: fw-mon-nat", "name: elsewhere") + "  output: nowhere\n"
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=bad), timeout=10)
    st = wait_until(lambda: (s := status(controller.stub, "elsewhere")).phase == "Failed" and s,
                    30, controller.output)
    assert "spec.output" in st.message and "nowhere" in st.message, st.message
    assert "elsewhere" not in agent.sfcs()
    waited = subprocess.run([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                             "--server", controller.address, "apply", "-f", "-", "--wait"], input=bad, capture_output=True,
                            text=True, timeout=60)
    assert waited.returncode == 1 and "sfc/elsewhere failed" in waited.stderr
    assert "spec.output" in waited.stderr
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="elsewhere"), timeout=5)


def test_dynamic_sfc_with_a_deployed_nf_from_serpensctl_apply(cluster):
    controller, agent = cluster
    ctl = [os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
           "--server", controller.address]
    out = subprocess.run([*ctl, "apply", "-f", os.path.join(ROOT, "examples",
                                                            "dynamic-sfc.yaml"), "--wait"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nf/suspect deployed" in out.stdout and "sfc/dynamic applied" in out.stdout
    assert "sfc/dynamic running on local" in out.stdout
    assert status(controller.stub, "dynamic").phase == "Running"
    wait_until(lambda: agent.sfcs()["dynamic"].out > 0, 10, agent.output)
    shown = subprocess.run([*ctl, "status"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "dynamic" in shown.stdout and "Running" in shown.stdout
    described = subprocess.run([*ctl, "describe", "sfc", "dynamic"], capture_output=True,
                               text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    assert "Phase:" in described.stdout and "Deployed NFs:       suspect" in described.stdout
    for kind, name in (("sfc", "dynamic"), ("nf", "suspect")):
        if kind == "nf":
            wait_until(lambda: "dynamic" not in agent.sfcs(), 10, controller.output)
        gone = subprocess.run([*ctl, "delete", kind, name], capture_output=True, text=True,
                              timeout=30)
        assert gone.returncode == 0, gone.stderr


def test_state_of_a_running_nf_is_read_and_changes_are_watched(cluster):
    import threading
    controller, agent = cluster
    events = []
    stream = controller.stub.Watch(pb.WatchRequest())

    def read():
        try:
            for e in stream:
                events.append(e)
        except grpc.RpcError:
            pass  # cancelled at the end
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
        flowing(controller, agent, "fw-mon-nat")
        merged = agent.stub.MergeState(pb.MergeStateRequest(sfc="fw-mon-nat"), timeout=10)
        assert merged.node == "local" and merged.instances >= 1
        e = pytest.raises(grpc.RpcError, agent.stub.MergeState,
                          pb.MergeStateRequest(sfc="nope"), timeout=10).value
        assert e.code() == grpc.StatusCode.NOT_FOUND and "sfc:" in e.details()
        # merged first: MON's per-host counters are there without waiting for their period
        reply = controller.stub.ReadState(pb.ReadStateRequest(sfc="fw-mon-nat", nf="mon",
                                                              merge=True), timeout=10)
        tables = {t.name: t for t in reply.tables}
        assert reply.node == "local" and set(tables) == {"flows", "hosts"}
        flows = [json.loads(e.decoded) for e in tables["flows"].entries]
        assert tables["flows"].count >= len(flows) > 0
        assert all(f["packets"] > 0 and f["dport"] == 53 for f in flows)
        e = pytest.raises(grpc.RpcError, controller.stub.ReadState,
                          pb.ReadStateRequest(sfc="fw-mon-nat", nf="nope"), timeout=10).value
        assert e.code() == grpc.StatusCode.NOT_FOUND and "nf:" in e.details()
        # a table read is bounded: `limit` entries of it (the first), and only so many asked
        one = controller.stub.ReadState(pb.ReadStateRequest(sfc="fw-mon-nat", nf="mon",
                                                            table="flows", limit=1), timeout=10)
        assert len(one.tables[0].entries) == 1 and one.tables[0].count >= len(flows)
        e = pytest.raises(grpc.RpcError, controller.stub.ReadState, pb.ReadStateRequest(
            sfc="fw-mon-nat", nf="mon", limit=LIMITS.read_entries + 1), timeout=10).value
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit:" in e.details()
        dump = subprocess.run([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                               "--server", controller.address,
                               "state", "dump", "fw-mon-nat", "mon", "--table", "hosts",
                               "-o", "json"], capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0, dump.stderr
        hosts = json.loads(dump.stdout)["tables"][0]["entries"]
        assert hosts and all(h["host"].startswith("10.1.") for h in hosts)
        wait_until(lambda: any(e.kind == "status" and json.loads(e.json)["phase"] == "Running"
                               for e in events if e.json), 10)
        assert any(e.kind == "sfc" and e.name == "fw-mon-nat" and e.type == "put"
                   for e in events)
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
        wait_until(lambda: any(e.kind == "sfc" and e.type == "delete" for e in events), 10)
        wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, controller.output)
    finally:
        stream.cancel()


def mon_packets(stub) -> int:
    reply = stub.ReadState(pb.ReadStateRequest(sfc="fw-mon-nat", nf="mon", table="flows",
                                               limit=100000), timeout=10)
    return sum(json.loads(e.decoded)["packets"] for e in reply.tables[0].entries)


def test_a_snapshot_of_an_nf_s_state_is_restored_while_traffic_flows(cluster, tmp_path):
    controller, agent = cluster
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    flowing(controller, agent, "fw-mon-nat")
    ctl = [os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
           "--server", controller.address, "state"]
    snap_file = tmp_path / "mon.snap"
    time.sleep(0.5)
    before_snapshot = mon_packets(controller.stub)
    took = subprocess.run(ctl + ["snapshot", "fw-mon-nat", "mon", "-f", str(snap_file)],
                          capture_output=True, text=True, timeout=60)
    assert took.returncode == 0, took.stderr
    at_snapshot = mon_packets(controller.stub)
    snap = pb.StateSnapshot.FromString(snap_file.read_bytes())
    assert (snap.sfc, snap.nf, snap.node) == ("fw-mon-nat", "mon", "local")
    assert {"flows", "hosts"} <= {t.name for t in snap.tables}
    later = wait_until(lambda: (n := mon_packets(controller.stub)) > at_snapshot + 2000 and n,
                       30, controller.output)
    out = agent.sfcs()["fw-mon-nat"].out
    put = subprocess.run(ctl + ["restore", "fw-mon-nat", "mon", "-f", str(snap_file)],
                         capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    assert "restored from fw-mon-nat.mon of local" in put.stdout
    # the counters went back to the snapshot's (between what was read just before it was
    # taken and just after, at 5k packets/s: the latter may come a while after it on a busy
    # host) and count on from there; traffic never stopped
    assert before_snapshot <= mon_packets(controller.stub) < later - 1000
    wait_until(lambda: agent.sfcs()["fw-mon-nat"].out > out + 500, 10, controller.output)
    wait_until(lambda: mon_packets(controller.stub) > later, 30, controller.output)
    snap.tables[0].zdata = b"not zlib"
    e = pytest.raises(grpc.RpcError, controller.stub.RestoreState, pieces(
        pb.RestoreStateRequest(sfc="fw-mon-nat", nf="mon", snapshot=snap)), timeout=30).value
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "snapshot: table" in e.details()
    assert mon_packets(controller.stub) > later  # a bad snapshot changed nothing
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, controller.output)


def test_serpensctl_state_reset_drops_a_table_and_the_nf_counts_from_zero(cluster):
    controller, agent = cluster
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    flowing(controller, agent, "fw-mon-nat")
    ctl = [os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
           "--server", controller.address, "state", "reset", "fw-mon-nat", "mon"]
    before = wait_until(lambda: (n := mon_packets(controller.stub)) > 5000 and n, 30,
                        controller.output)
    reset = subprocess.run(ctl + ["--table", "flows"], capture_output=True, text=True,
                           timeout=60)
    assert reset.returncode == 0, (reset.stderr, controller.output()[-3000:])
    assert reset.stdout.strip() == "fw-mon-nat.mon on local: deleted flows"
    assert mon_packets(controller.stub) < before - 2000  # counting again from zero
    wait_until(lambda: mon_packets(controller.stub) > 0, 10, controller.output)  # traffic on
    unknown = subprocess.run(ctl + ["--table", "nope"], capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode != 0 and "NOT_FOUND" in unknown.stderr
    assert "no table 'nope'" in unknown.stderr
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, controller.output)


def test_a_crashing_nf_shows_in_the_sfc_status_within_2_s(cluster):
    """Its instances crash on their first packet: the SFC's status turns Degraded naming the
    NF and the signal within 2 s of the first crash, then Failed; the node lives on."""
    controller, agent = cluster
    with open(os.path.join(ROOT, "bench", "nfs", "misbehave.c")) as f:
        controller.stub.DeployNF(pb.DeployNFRequest(name="crasher", source=f.read()),
                                 timeout=60)
    spec = json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": "crashy"},
                       "spec": {"nfs": {"bad": {"nf": "crasher", "config_hex": "4e"}},
                                "chain": ["bad"], "match": [{"src": "10.0.0.0/8"}],
                                "faults": {"restarts": 2, "window_s": 60}}})
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=spec), timeout=10)
    try:
        crashed_at = wait_until(lambda: "crashy" in (sfcs := agent.sfcs()) and
                                sfcs["crashy"].crashes and time.monotonic(), 60,
                                controller.output)
        # (a status of before the crash may say Degraded for another reason first: its
        # instance waited for a pool process; the crash's names the NF)
        st = wait_until(lambda: (s := status(controller.stub, "crashy")).phase in
                        ("Degraded", "Failed") and "NF 'crashy.bad'" in s.message and s, 10,
                        controller.output)
        assert time.monotonic() - crashed_at < 2.0
        assert "NF 'crashy.bad'" in st.message and "SIGSEGV" in st.message, st
        st = wait_until(lambda: (s := status(controller.stub, "crashy")).phase == "Failed" and s,
                        30, controller.output)
        assert "crashed 3 times" in st.message, st
        # failed: its packets are dropped and counted, not held
        wait_until(lambda: agent.sfcs()["crashy"].drops["sfc_failed"] > 0, 10, agent.output)
        assert agent.proc.poll() is None
    finally:
        controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="crashy"), timeout=5)
        wait_until(lambda: "crashy" not in agent.sfcs(), 30, controller.output)
        controller.stub.DeleteNF(pb.DeleteNFRequest(name="crasher"), timeout=5)


def test_an_etcd_restart_stops_no_traffic_and_the_control_loop_comes_back(cluster, etcd):
    controller, agent = cluster
    controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    wait_until(lambda: status(controller.stub, "fw-mon-nat").phase == "Running", 60,
               controller.output)
    etcd.kill()
    out = agent.sfcs()["fw-mon-nat"].out
    time.sleep(3)  # longer than every lease: the leader's and the agent's
    assert agent.sfcs()["fw-mon-nat"].out > out  # packets kept leaving
    e = pytest.raises(grpc.RpcError, controller.stub.Scale,
                      pb.ScaleRequest(sfc="fw-mon-nat", replicas=2), timeout=15).value
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    etcd.start()

    def scaled():
        try:
            controller.stub.Scale(pb.ScaleRequest(sfc="fw-mon-nat", replicas=2), timeout=5)
            return True
        except grpc.RpcError:
            return False
    wait_until(scaled, 20, controller.output)
    wait_until(lambda: agent.sfcs()["fw-mon-nat"].instances == 2, 30, controller.output)
    controller.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, controller.output)


def test_a_killed_leader_is_replaced_and_traffic_never_stops(cluster, etcd):
    # last in this module: the module's controller does not survive it
    first, agent = cluster
    first.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    wait_until(lambda: status(first.stub, "fw-mon-nat").phase == "Running", 60, first.output)
    standby = Controller(etcd.endpoint, args=["--identity", "c2", "--resync-s", "0.5"],
                         log_level="info")
    try:
        first.proc.kill()  # no resignation: the standby waits out the lease
        first.proc.wait()
        killed = time.monotonic()
        out = agent.sfcs()["fw-mon-nat"].out
        standby.stub.Scale(pb.ScaleRequest(sfc="fw-mon-nat", replicas=2), timeout=5)
        wait_until(lambda: agent.sfcs()["fw-mon-nat"].instances == 2, 15, standby.output)
        assert time.monotonic() - killed < 10
        assert "c2 leads" in standby.output()
        assert agent.sfcs()["fw-mon-nat"].out > out  # packets kept leaving
        standby.stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
        wait_until(lambda: "fw-mon-nat" not in agent.sfcs(), 10, standby.output)
    finally:
        assert standby.stop() == 0
