"""Storage faults (issue 11, deliverable 6): a full or broken state filesystem never kills the
agent and never leaves a half-made table.

State tables live on a small filesystem of the test's own (a 2 MiB tmpfs, or a hugetlbfs of
a few huge pages) mounted as the node's state_dir. First the state table code alone, then a
real `serpens-agent` (DPDK primary, pool processes, Agent gRPC service) running stock MON:
creating its tables on a full filesystem is RESOURCE_EXHAUSTED with the agent alive and no
file left, and works once space is freed; restoring into a full filesystem is
RESOURCE_EXHAUSTED and leaves the old tables as they were; ResetState drops tables so the
next instance starts empty."""
import contextlib
import json
import os
import shutil
import struct

import grpc
import pytest

from serpens.common.bulk import pieces
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.runtime_cy import _dataplane as dp

from support.cluster import Agent, wait_until
from support.mounts import small_fs
from support.etcd import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

PF = dp.PER_FLOW | dp.READ | dp.WRITE
HUGE = 2 << 20


def fill(fs: str, leave: int = 0) -> str:
    """Take all the free space of `fs` but `leave` bytes, in a file of its own (returned)."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize - leave
    path = os.path.join(fs, "filler")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if free > 0:
            os.posix_fallocate(fd, 0, free)
    finally:
        os.close(fd)
    return path


def files(folder: str) -> list[str]:
    """What is in `folder`, but the agent's usage totals (agent/usage.py) kept there."""
    return sorted(f for f in os.listdir(folder) if not f.startswith(".usage-")) \
        if os.path.isdir(folder) else []


# ---- the state table code alone ------------------------------------------------------------

@pytest.mark.parametrize("fstype,size", [("tmpfs", "2m"), ("hugetlbfs", "4M")])
def test_a_table_that_does_not_fit_is_enospc_and_leaves_no_file(fstype, size):
    with small_fs(fstype, size) as fs:
        with pytest.raises(OSError) as e:
            dp.StateTable(fs, "nf", "big", PF, 16, 64, 40000)  # 5.5 MiB
        assert e.value.errno == 28 and "state filesystem full (ENOSPC)" in str(e.value)
        assert files(os.path.join(fs, "nf")) == []  # neither the table nor its temporary
        t = dp.StateTable(fs, "nf", "small", PF, 16, 64, 1000)  # what fits is made
        t.put(b"k" * 16, b"v" * 64)
        t.close()
        assert files(os.path.join(fs, "nf")) == ["small.tbl"]


def test_a_truncated_or_corrupt_table_file_is_refused_by_name(tmp_path):
    state = str(tmp_path)
    dp.StateTable(state, "nf", "t", PF, 8, 8, 100).close()
    path = os.path.join(state, "nf", "t.tbl")
    whole = open(path, "rb").read()
    for broken, why in [(whole[:100], "truncated"), (b"\0" * len(whole), "not a state table"),
                        (whole[:20] + b"\xff" + whole[21:], "inconsistent header"),
                        (whole[:-4096], "shorter than its table")]:
        with open(path, "wb") as f:
            f.write(broken)
        with pytest.raises(OSError) as e:
            dp.StateTable(state, "nf", "t", PF, 8, 8, 100)
        assert why in str(e.value) and "serpensctl state reset" in str(e.value), why
        assert e.value.errno == 5


def test_a_table_with_holes_is_filled_on_open_or_refused_when_no_room():
    with small_fs("tmpfs", "2m") as fs:
        dp.StateTable(fs, "nf", "t", PF, 16, 64, 4000).close()  # 516 KiB
        path = os.path.join(fs, "nf", "t.tbl")
        data = open(path, "rb").read()
        os.unlink(path)
        with open(path, "wb") as f:  # as ftruncate alone made them: header, then holes
            f.write(data[:4096])
            f.truncate(len(data))
        assert os.stat(path).st_blocks * 512 < len(data)
        filler = fill(fs)
        with pytest.raises(OSError) as e:  # not a SIGBUS on the first touch of a hole
            dp.StateTable(fs, "nf", "t")
        assert e.value.errno == 28
        os.unlink(filler)
        t = dp.StateTable(fs, "nf", "t")
        assert os.stat(path).st_blocks * 512 >= len(data) and len(t) == 0
        t.close()


# ---- a real agent on a small state filesystem ----------------------------------------------

NODE = """
apiVersion: serpens/v1
kind: Node
metadata: {{name: faults}}
spec:
  ports:
    wan: net_null_wan,no-rx=1
    lan: net_null_lan,no-rx=1
  input: [wan]
  output: lan
  pool: 2
  state_dir: {state_dir}
"""


def mon_sfc(name: str) -> str:
    """Stock MON with small tables: flows 132 KiB, hosts 12 KiB and one 12 KiB "hosts@rN"
    replica per instance (on hugetlbfs, a huge page each)."""
    return json.dumps({"apiVersion": "serpens/v1", "kind": "SFC", "metadata": {"name": name},
                       "spec": {"nfs": {"mon": {"stock": "mon", "config": {
                           "flow_capacity": 1024, "host_capacity": 64}}}, "chain": ["mon"]}})


@pytest.fixture(scope="module", params=[("tmpfs", "2m"), ("hugetlbfs", "16M")],
                ids=["tmpfs", "hugetlbfs"])
def agent(request, tmp_path_factory):
    """(agent, state_dir): serpens-agent whose state_dir is a small filesystem; no etcd (the
    Agent service answers without it)."""
    fstype, size = request.param
    with small_fs(fstype, size) as fs:
        node = tmp_path_factory.mktemp("faults") / "node.yaml"
        node.write_text(NODE.format(state_dir=fs))
        a = Agent(f"127.0.0.1:{free_port()}", str(node))
        try:
            yield a, fs
        finally:
            assert a.stop() == 0, a.output()


@contextlib.contextmanager
def running(a, fs: str, name: str):
    """SFC `name` (MON) on the agent with one instance; gone with its tables on leaving
    (a stopped SFC's tables stay, and the filesystem is small)."""
    a.stub.RunSFC(pb.RunSFCRequest(spec=mon_sfc(name), replicas=1, generation=1), timeout=60)
    try:
        yield f"{name}.mon"  # the NF's state namespace
    finally:
        stopped(a, fs, name)


def stopped(a, fs: str, name: str):
    a.stub.StopSFC(pb.StopSFCRequest(name=name), timeout=30)
    shutil.rmtree(os.path.join(fs, f"{name}.mon"))


def alive(a) -> bool:
    return a.proc.poll() is None and a.stub.GetNode(pb.GetNodeRequest(), timeout=5).name


def tables(a, sfc: str) -> dict:
    reply = a.stub.ReadState(pb.ReadStateRequest(sfc=sfc, nf="mon"), timeout=10)
    return {t.name: t.count for t in reply.tables}


def put_flow(fs: str, namespace: str, n: int):
    """n entries in MON's flows table, written from outside as a node's traffic would."""
    t = dp.StateTable(fs, namespace, "flows")
    for i in range(n):  # struct serpens_flow: UDP 10.0.0.1:i -> 10.0.0.2:53, IPv4
        key = struct.pack("<16s16s2s2sBB2x", bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                          i.to_bytes(2, "big"), (53).to_bytes(2, "big"), 17, 4)
        t.put(key, struct.pack("<QQ", 1, 100))
    t.close()


def test_creating_tables_on_a_full_state_filesystem_fails_cleanly_until_space_is_freed(agent):
    a, fs = agent
    filler = fill(fs, leave=4096)
    try:
        with pytest.raises(grpc.RpcError) as e:
            a.stub.RunSFC(pb.RunSFCRequest(spec=mon_sfc("full"), replicas=1, generation=1),
                          timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        assert "state filesystem full (ENOSPC)" in e.value.details()
        assert "flows.tbl" in e.value.details()
        assert alive(a)
        assert files(os.path.join(fs, "full.mon")) == []  # nothing half-made
        with pytest.raises(grpc.RpcError) as again:  # and again: nothing stuck either
            a.stub.ScaleSFC(pb.ScaleSFCRequest(name="full", replicas=1), timeout=30)
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        os.unlink(filler)
    try:
        a.stub.ScaleSFC(pb.ScaleSFCRequest(name="full", replicas=1), timeout=30)
        assert a.sfcs()["full"].instances == 1
        assert tables(a, "full") == {"flows": 0, "hosts": 0}
    finally:
        stopped(a, fs, "full")


def test_a_restore_into_a_full_state_filesystem_is_refused_and_changes_nothing(agent):
    a, fs = agent
    with running(a, fs, "restored") as ns:
        put_flow(fs, ns, 3)
        snap = a.stub.SnapshotState(pb.SnapshotStateRequest(sfc="restored", nf="mon"),
                                    timeout=30)
        put_flow(fs, ns, 5)  # the state moves on after the snapshot
        before = {f: open(os.path.join(fs, ns, f), "rb").read() for f in files(
            os.path.join(fs, ns))}
        filler = fill(fs, leave=4096)
        try:
            with pytest.raises(grpc.RpcError) as e:
                a.stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="restored", nf="mon",
                                                           snapshot=snap)), timeout=60)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
            assert "ENOSPC" in e.value.details()
            assert alive(a)
            assert files(fs) == ["filler", ns]  # no staging copy left
            after = {f: open(os.path.join(fs, ns, f), "rb").read() for f in files(
                os.path.join(fs, ns))}
            assert after == before
            assert tables(a, "restored")["flows"] == 5
        finally:
            os.unlink(filler)
        a.stub.RestoreState(pieces(pb.RestoreStateRequest(sfc="restored", nf="mon",
                                                          snapshot=snap)),
                            timeout=60)  # with room, the same restore goes through
        assert tables(a, "restored")["flows"] == 3


def test_state_reset_drops_broken_or_unwanted_tables_and_the_nf_starts_empty(agent):
    a, fs = agent
    with running(a, fs, "reset") as ns:
        put_flow(fs, ns, 4)
        assert tables(a, "reset") == {"flows": 4, "hosts": 0}
        with pytest.raises(grpc.RpcError) as e:
            a.stub.ResetState(pb.ResetStateRequest(sfc="reset", nf="mon", table="nope"),
                              timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "table" in e.value.details()

        # a table broken while no instance ran (as a crash of older code left them)
        a.stub.ScaleSFC(pb.ScaleSFCRequest(name="reset", replicas=0), timeout=30)
        os.truncate(os.path.join(fs, ns, "flows.tbl"), 0)  # hugetlbfs: whole pages only
        with pytest.raises(grpc.RpcError) as e:
            a.stub.ScaleSFC(pb.ScaleSFCRequest(name="reset", replicas=1), timeout=30)
        assert "truncated" in e.value.details() and "state reset" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            tables(a, "reset")
        assert e.value.code() == grpc.StatusCode.DATA_LOSS and "flows" in e.value.details()
        assert alive(a)
        reply = a.stub.ResetState(pb.ResetStateRequest(sfc="reset", nf="mon", table="flows"),
                                  timeout=30)
        assert list(reply.tables) == ["flows"] and reply.node == "faults"
        a.stub.ScaleSFC(pb.ScaleSFCRequest(name="reset", replicas=1), timeout=30)
        assert tables(a, "reset") == {"flows": 0, "hosts": 0}

        put_flow(fs, ns, 2)  # every table of the NF, instances running
        reply = a.stub.ResetState(pb.ResetStateRequest(sfc="reset", nf="mon"), timeout=30)
        assert {t.split("@")[0] for t in reply.tables} == {"flows", "hosts"}
        assert a.sfcs()["reset"].instances == 1  # back after the pause, on fresh tables
        assert tables(a, "reset") == {"flows": 0, "hosts": 0}
