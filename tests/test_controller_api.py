"""The controller's gRPC API (controller/api.py, controller/main.py) end to end: a real etcd
(tests/support/etcd.py), the real `serpens-controller` console script as a subprocess on a
free port, and real gRPC channels (plus `serpensctl` as a subprocess). NFs are compiled and
verified by the real builder; errors must arrive as status codes naming the field."""
import asyncio
import json
import os
import subprocess
import time

import grpc
import pytest

from serpens.common.store import Store
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from support.cluster import BIN, FW_MON_NAT, Controller, check_health_and_reflection, sfc_spec
from support.etcd import client_identity, free_port, serpensctl_config, start_etcd
from support.nfs import nf_source

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(30)]

@pytest.fixture(scope="module")
def controller(etcd):
    c = Controller(etcd.endpoint)
    yield c
    assert c.stop() == 0  # SIGTERM is a graceful stop


@pytest.fixture
def stub(controller):
    return controller.stub


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    return info.value


def test_deploy_nf_compiled_verified_and_stored(stub):
    before = time.time()
    nf = stub.DeployNF(pb.DeployNFRequest(name="pass1", source=nf_source("pass.c"),
                                          description="passes packets"), timeout=30)
    assert nf.name == "pass1" and nf.revision > 0 and nf.image_size > 0
    assert nf.created.ToSeconds() >= int(before) and nf.updated == nf.created
    got = stub.GetNF(pb.GetNFRequest(name="pass1"), timeout=5)
    assert got.source == nf_source("pass.c") and got.description == "passes packets"
    assert got.revision == nf.revision
    listed = {n.name: n for n in stub.ListNFs(pb.ListNFsRequest(), timeout=5).nfs}
    assert listed["pass1"].source == "" and listed["pass1"].revision == nf.revision
    again = stub.DeployNF(pb.DeployNFRequest(name="pass1", source=nf_source("pass.c")),
                          timeout=30)
    assert again.revision > nf.revision and again.created == nf.created
    e = rpc_error(stub.DeployNF, pb.DeployNFRequest(name="pass1", source=nf_source("pass.c"),
                                                    expected_revision=nf.revision))
    assert e.code() == grpc.StatusCode.ABORTED and "expected_revision" in e.details()


def test_deploy_nf_compile_error_returns_compiler_message(stub):
    e = rpc_error(stub.DeployNF, pb.DeployNFRequest(name="broken", source=nf_source("bad_syntax.c")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken.c:8" in e.details() and "error: expected expression" in e.details()
    assert rpc_error(stub.GetNF, pb.GetNFRequest(name="broken")).code() == \
        grpc.StatusCode.NOT_FOUND


def test_deploy_nf_forbidden_symbol_refused_by_verifier(stub):
    e = rpc_error(stub.DeployNF, pb.DeployNFRequest(name="libc", source=nf_source("bad_libc.c")))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "verifier" in e.details() and "printf" in e.details() and "malloc" in e.details()
    assert rpc_error(stub.GetNF, pb.GetNFRequest(name="libc")).code() == \
        grpc.StatusCode.NOT_FOUND
    e = rpc_error(stub.DeployNF, pb.DeployNFRequest(name="Bad Name", source="x"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("name:")


def test_sfc_apply_get_list_update_delete(stub):
    sfc = stub.ApplySFC(pb.ApplySFCRequest(spec=FW_MON_NAT), timeout=10)
    assert sfc.name == "fw-mon-nat" and sfc.spec == FW_MON_NAT and sfc.revision > 0
    assert json.loads(sfc.spec_json)["spec"]["chain"] == ["fw", "mon", "nat"]
    assert sfc.status.phase == "Pending" and sfc.scale.replicas == 1
    # the record as applied (its status is the reconciler's: no node runs here, so Pending)
    for got in (stub.GetSFC(pb.GetSFCRequest(name="fw-mon-nat"), timeout=5),
                *stub.ListSFCs(pb.ListSFCsRequest(), timeout=5).sfcs):
        assert got.status.phase == "Pending"
        got.ClearField("status")
        expected = pb.SFC()
        expected.CopyFrom(sfc)
        expected.ClearField("status")
        assert got == expected
    assert sfc.generation == 1
    changed = FW_MON_NAT.replace("idle_timeout: 300", "idle_timeout: 60")
    updated = stub.ApplySFC(pb.ApplySFCRequest(spec=changed), timeout=10)
    assert updated.revision > sfc.revision and updated.created == sfc.created
    assert updated.generation == 2
    assert json.loads(updated.spec_json)["spec"]["nfs"]["nat"]["config"]["idle_timeout"] == 60
    e = rpc_error(stub.ApplySFC, pb.ApplySFCRequest(spec=FW_MON_NAT,
                                                    expected_revision=sfc.revision))
    assert e.code() == grpc.StatusCode.ABORTED
    assert stub.GetSFC(pb.GetSFCRequest(name="fw-mon-nat"), timeout=5).revision == \
        updated.revision
    deleted = stub.DeleteSFC(pb.DeleteSFCRequest(name="fw-mon-nat"), timeout=5)
    assert deleted.revision > updated.revision
    assert rpc_error(stub.GetSFC, pb.GetSFCRequest(name="fw-mon-nat")).code() == \
        grpc.StatusCode.NOT_FOUND
    assert rpc_error(stub.DeleteSFC, pb.DeleteSFCRequest(name="fw-mon-nat")).code() == \
        grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("spec, field", [
    (FW_MON_NAT.replace("port_range: 1024-65535", "port_range: 70000-80000"),
     "spec.nfs.nat.config.port_range"),
    (FW_MON_NAT.replace("chain: [fw, mon, nat]", "chain: [fw, mon, nat, vpn]"), "spec.chain[3]"),
    (sfc_spec("local", {"x": {"source": "/etc/hostname"}}, ["x"]), "spec.nfs.x.source"),
    (sfc_spec("ghost", {"x": {"nf": "nosuchnf"}}, ["x"]), "spec.nfs.x.nf"),
    ("{not json", "spec"),
])
def test_bad_spec_invalid_argument_names_field(stub, spec, field):
    e = rpc_error(stub.ApplySFC, pb.ApplySFCRequest(spec=spec))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().startswith(field + ":"), e.details()
    names = [s.name for s in stub.ListSFCs(pb.ListSFCsRequest(), timeout=5).sfcs]
    assert "fw-mon-nat" not in names and "local" not in names and "ghost" not in names


def test_scale_stored_in_desired_state(stub):
    spec = sfc_spec("scaled", {"m": {"stock": "mon"}}, ["m"])
    first = stub.ApplySFC(pb.ApplySFCRequest(spec=spec), timeout=10)
    scaled = stub.Scale(pb.ScaleRequest(sfc="scaled", replicas=3, min_replicas=2,
                                        max_replicas=8), timeout=5)
    assert (scaled.scale.replicas, scaled.scale.min_replicas, scaled.scale.max_replicas) == \
        (3, 2, 8) and scaled.revision > first.revision
    assert stub.GetSFC(pb.GetSFCRequest(name="scaled"), timeout=5).scale == scaled.scale
    # Re-applying the spec keeps the scale; unset bounds keep the stored ones.
    stub.ApplySFC(pb.ApplySFCRequest(spec=spec), timeout=10)
    again = stub.Scale(pb.ScaleRequest(sfc="scaled", replicas=5), timeout=5)
    assert (again.scale.replicas, again.scale.min_replicas, again.scale.max_replicas) == (5, 2, 8)
    e = rpc_error(stub.Scale, pb.ScaleRequest(sfc="scaled", replicas=9, max_replicas=8))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("replicas:")
    e = rpc_error(stub.Scale, pb.ScaleRequest(sfc="nope", replicas=1))
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.details().startswith("sfc:")
    stub.DeleteSFC(pb.DeleteSFCRequest(name="scaled"), timeout=5)


def test_delete_nf_refused_while_an_sfc_uses_it(stub):
    stub.DeployNF(pb.DeployNFRequest(name="marker", source=nf_source("mark.c")), timeout=30)
    sfc = stub.ApplySFC(pb.ApplySFCRequest(spec=sfc_spec(
        "uses-marker", {"fw": {"stock": "fw"}, "mk": {"nf": "marker", "config_hex": "01"}},
        ["fw", "mk"])), timeout=10)
    assert list(sfc.nfs) == ["marker"]
    e = rpc_error(stub.DeleteNF, pb.DeleteNFRequest(name="marker"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "uses-marker" in e.details()
    assert stub.GetNF(pb.GetNFRequest(name="marker"), timeout=5).name == "marker"
    stub.DeleteSFC(pb.DeleteSFCRequest(name="uses-marker"), timeout=5)
    stub.DeleteNF(pb.DeleteNFRequest(name="marker"), timeout=5)
    assert rpc_error(stub.GetNF, pb.GetNFRequest(name="marker")).code() == \
        grpc.StatusCode.NOT_FOUND


def test_list_nodes_reads_node_records(stub, etcd):
    assert list(stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes) == []

    async def register():
        async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
            return await store.put("/serpens/v1/nodes/server-a", '{"address": "10.0.0.1"}')
    revision = asyncio.run(register())
    nodes = list(stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes)
    assert [(n.name, json.loads(n.record_json), n.revision) for n in nodes] == \
        [("server-a", {"address": "10.0.0.1"}, revision)]


def test_health_serving_and_reflection_lists_service(controller):
    check_health_and_reflection(controller.channel, "serpens.v1.Serpens")


def serpensctl(server, *args, stdin=None):
    return subprocess.run([os.path.join(BIN, "serpensctl"), "--config", serpensctl_config(),
                           "--server", server, *args],
                          capture_output=True, text=True, timeout=60, input=stdin)


def test_serpensctl_apply_get_scale_delete(controller, tmp_path):
    (tmp_path / "mine.c").write_text(nf_source("pass.c"))
    (tmp_path / "nf.yaml").write_text("apiVersion: serpens/v1\nkind: NF\n"
                                      "metadata: {name: cli-nf}\nsource: ./mine.c\n")
    (tmp_path / "sfc.yaml").write_text(
        "apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: cli-sfc}\n"
        "spec:\n  nfs:\n    a: {nf: cli-nf}\n  chain: [a]\n")
    s = controller.address
    r = serpensctl(s, "apply", "-f", str(tmp_path / "nf.yaml"))
    assert r.returncode == 0 and "nf/cli-nf deployed" in r.stdout, r.stderr
    r = serpensctl(s, "apply", "-f", str(tmp_path / "sfc.yaml"))
    assert r.returncode == 0 and "sfc/cli-sfc applied" in r.stdout, r.stderr
    r = serpensctl(s, "get", "sfcs")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:3] == \
        ["NAME", "REVISION", "REPLICAS"]
    assert any(line.split()[0] == "cli-sfc" for line in r.stdout.splitlines()[1:])
    r = serpensctl(s, "scale", "cli-sfc", "--replicas", "2", "--max", "4")
    assert r.returncode == 0, r.stderr
    r = serpensctl(s, "get", "sfc", "cli-sfc", "-o", "json")
    got = json.loads(r.stdout)
    assert got["name"] == "cli-sfc" and got["nfs"] == ["cli-nf"]
    assert got["scale"] == {"replicas": 2, "min_replicas": 1, "max_replicas": 4}
    r = serpensctl(s, "get", "nfs", "cli-nf", "-o", "yaml")
    assert r.returncode == 0 and "name: cli-nf" in r.stdout
    r = serpensctl(s, "delete", "nf", "cli-nf")
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "cli-sfc" in r.stderr
    bad = (tmp_path / "sfc.yaml").read_text().replace("[a]", "[a, b]")
    r = serpensctl(s, "apply", "-f", "-", stdin=bad)
    assert r.returncode == 1 and "INVALID_ARGUMENT: spec.chain[1]" in r.stderr
    assert serpensctl(s, "delete", "sfc", "cli-sfc").returncode == 0
    assert serpensctl(s, "delete", "nf", "cli-nf").returncode == 0
    r = serpensctl(s, "get", "nf", "cli-nf")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    r = serpensctl(s, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    r = serpensctl(f"127.0.0.1:{free_port()}", "--timeout", "2", "get", "sfcs")
    assert r.returncode == 3 and "UNAVAILABLE" in r.stderr


def test_dead_etcd_gives_unavailable_quickly():
    etcd = start_etcd()
    controller = None
    try:
        controller = Controller(etcd.endpoint, etcd_timeout=1.0)
        assert list(controller.stub.ListSFCs(pb.ListSFCsRequest(), timeout=5).sfcs) == []
        etcd.kill()
        for call, request in ((controller.stub.ListSFCs, pb.ListSFCsRequest()),
                              (controller.stub.ApplySFC, pb.ApplySFCRequest(spec=FW_MON_NAT))):
            start = time.monotonic()
            e = rpc_error(call, request)
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
            assert time.monotonic() - start < 2.0  # the --etcd-timeout, and little more
            assert "store is unavailable" in e.details()
        etcd.start()  # and it recovers once etcd is back
        deadline = time.monotonic() + 10
        while True:
            try:
                controller.stub.ListSFCs(pb.ListSFCsRequest(), timeout=5)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        if controller is not None:
            assert controller.stop() == 0
        etcd.destroy()


def test_a_file_of_documents_applies_whole_or_stops_before_its_sfcs(controller, tmp_path):
    """Every document is checked before the first is sent (a deployed NF an SFC names
    included), NFs go before SFCs, and a refusal names its document."""
    s, stub = controller.address, controller.stub
    (tmp_path / "mine.c").write_text(nf_source("pass.c"))
    (tmp_path / "broken.c").write_text("int serpens_nf_process(; /* does not compile */\n")
    sfc = ("apiVersion: serpens/v1\nkind: SFC\nmetadata: {name: doc-sfc}\n"
           "spec:\n  nfs:\n    a: {nf: NAME}\n  chain: [a]\n")
    nf = "apiVersion: serpens/v1\nkind: NF\nmetadata: {name: NAME}\nsource: ./FILE\n"

    def names():
        return ({n.name for n in stub.ListNFs(pb.ListNFsRequest(), timeout=10).nfs},
                {x.name for x in stub.ListSFCs(pb.ListSFCsRequest(), timeout=10).sfcs})
    before = names()
    # an SFC naming an NF nobody deployed: refused by the document, nothing sent
    (tmp_path / "a.yaml").write_text(nf.replace("NAME", "doc-ok").replace("FILE", "mine.c")
                                     + "---\n" + sfc.replace("NAME", "doc-typo"))
    r = serpensctl(s, "apply", "-f", str(tmp_path / "a.yaml"))
    assert r.returncode == 2 and "(document 2): spec.nfs.a.nf: no deployed NF named " \
        "'doc-typo'" in r.stderr, r.stderr
    assert names() == before
    # the SFC first in the file: the NF it names is deployed before it; an NF that does not
    # compile stops the SFC, and the refusal names its document
    (tmp_path / "b.yaml").write_text(sfc.replace("NAME", "doc-bad") + "---\n"
                                     + nf.replace("NAME", "doc-bad").replace("FILE", "broken.c"))
    r = serpensctl(s, "apply", "-f", str(tmp_path / "b.yaml"))
    assert r.returncode == 1 and "(document 2): INVALID_ARGUMENT: source:" in r.stderr, r.stderr
    assert names() == before
    (tmp_path / "c.yaml").write_text(sfc.replace("NAME", "doc-ok") + "---\n"
                                     + nf.replace("NAME", "doc-ok").replace("FILE", "mine.c"))
    r = serpensctl(s, "apply", "-f", str(tmp_path / "c.yaml"))
    assert r.returncode == 0 and r.stdout.index("nf/doc-ok") < r.stdout.index("sfc/doc-sfc")
    assert serpensctl(s, "delete", "sfc", "doc-sfc").returncode == 0
    assert serpensctl(s, "delete", "nf", "doc-ok").returncode == 0
    (tmp_path / "empty.yaml").write_text("---\n")
    r = serpensctl(s, "apply", "-f", str(tmp_path / "empty.yaml"))
    assert r.returncode == 2 and "no documents" in r.stderr
