"""serpensctl capture and trace end to end: controller and agent as subprocesses over mTLS,
the node replaying traffic into fw->mon->nat; Serpens.Capture relays Agent.Capture."""
import json
import os
import re
import signal
import subprocess

import grpc
import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import BIN, FW_MON_NAT, NODE, Agent, Controller, status, wait_until
from support.etcd import serpensctl_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def running(etcd, tmp_path_factory):
    node_path = tmp_path_factory.mktemp("capture") / "node.yaml"
    node_path.write_text(NODE)
    controller = Controller(etcd.endpoint, args=["--identity", "c1", "--resync-s", "0.5"])
    agent = Agent(etcd.endpoint, str(node_path))
    try:
        controller.stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
        wait_until(lambda: (s := agent.sfcs().get("fw-mon-nat")) and s.out, 60, controller.output)
        wait_until(lambda: status(controller.stub, "fw-mon-nat").phase == "Running", 30,
                   controller.output)
        yield controller, agent
    finally:
        assert agent.stop() == 0, agent.output()
        controller.stop()


def serpensctl(controller, *args):
    return subprocess.run([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                           "--server", controller.address, *args],
                          capture_output=True, text=True, timeout=60)


def test_serpensctl_capture_writes_pcapng_with_comments(running, tmp_path):
    controller, _ = running
    out = tmp_path / "fw.pcapng"
    done = serpensctl(controller, "capture", "fw-mon-nat", "--nf", "fw", "--at", "out",
                      "-c", "50", "--seconds", "20", "-w", str(out))
    assert done.returncode == 0, done.stderr
    assert "50 packets" in done.stderr and "stopped on count" in done.stderr
    pkts = rdpcap(str(out))
    assert len(pkts) == 50 and all(UDP in p for p in pkts)
    assert all(p.comments[0].decode().startswith("node=local instance=")
               and b"nf=fw verdict=step 1" in p.comments[0] for p in pkts)


def test_serpensctl_trace_names_each_nf_in_chain_order(running):
    controller, _ = running
    done = serpensctl(controller, "trace", "fw-mon-nat", "-c", "3", "-o", "json")
    assert done.returncode == 0, done.stderr
    traces = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(traces) == 3
    for t in traces:
        names = [s["nf"] for s in t["steps"]]
        assert names == ["fw", "mon", "nat"][:len(names)] and names
        assert t["steps"][-1]["label"] in ("out", "drop")
        assert all(s["batch"] >= 1 and s["call_ns"] > 0 for s in t["steps"])
        assert t["summary"].startswith("Ether / IP / UDP "), t["summary"]  # decoded, not Raw


def interruptible():
    """Ctrl-C reaches the child whoever started the suite: a shell without job control runs a
    background job with SIGINT ignored, the child inherits that, and Python then installs no
    KeyboardInterrupt handler (the capture would run out its 60 s)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_capture_leaves_a_whole_file_and_says_what_it_holds(running, tmp_path):
    controller, _ = running
    out = tmp_path / "interrupted.pcapng"
    proc = subprocess.Popen([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                             "--server", controller.address, "capture", "fw-mon-nat",
                             "-c", "1000000", "--seconds", "60", "-w", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 4096, 30)  # packets came
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    written = int(re.search(r"interrupted: (\d+) packets written to (\S+)", err).group(1))
    assert written > 0 and len(rdpcap(str(out))) == written, err


def test_bad_requests_name_the_field_and_a_client_that_goes_away_frees_the_sfc(running):
    controller, _ = running
    bad = serpensctl(controller, "capture", "fw-mon-nat", "--nf", "ids", "-w", "/dev/null")
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr and "nf:" in bad.stderr
    e = pytest.raises(grpc.RpcError, lambda: list(controller.stub.Capture(
        pb.CaptureRequest(sfc="nope"), timeout=10))).value
    assert e.code() == grpc.StatusCode.NOT_FOUND

    call = controller.stub.Capture(pb.CaptureRequest(sfc="fw-mon-nat", count=1_000_000,
                                                     seconds=100))
    assert next(call).HasField("packet")
    second = pytest.raises(grpc.RpcError, lambda: list(controller.stub.Capture(
        pb.CaptureRequest(sfc="fw-mon-nat", count=1), timeout=10))).value
    assert second.code() == grpc.StatusCode.FAILED_PRECONDITION  # one at a time per SFC
    call.cancel()  # the client goes away: the agent disarms and frees the SFC

    def free():
        try:
            return len(list(controller.stub.Capture(pb.CaptureRequest(sfc="fw-mon-nat",
                                                                      count=1), timeout=10)))
        except grpc.RpcError as e:
            errors.append(f"{e.code()}: {e.details()}")
            return 0
    errors = []
    wait_until(free, 10, lambda: errors[-3:])
