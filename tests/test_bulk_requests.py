"""Large requests travel in pieces (common/bulk.py): a bulk call's pieces make its request
again, up to a bound read no further; an SFC naming more deployed C source than one RunSFC
may carry to an agent is refused when applied; deltas go in pushes far below an agent's
receive limit. (Real servers refusing large messages: tests/test_auth.py.)"""
import asyncio
import dataclasses
from types import SimpleNamespace

import grpc
import pytest

from serpens.common import bulk, rpc
from serpens.common.records import NFRecord, ScaleRecord, SFCRecord
from serpens.controller import api
from serpens.proto.serpens.v1 import serpens_pb2 as pb

pytestmark = pytest.mark.unit


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code, details):
        raise Aborted(code, details)


async def stream(chunks):
    for chunk in chunks:
        yield chunk


def assemble(chunks, message_type, limit=bulk.MAX_MESSAGE):
    return asyncio.run(bulk.assembled(stream(chunks), message_type, Context(), limit))


def test_the_pieces_of_a_request_make_it_again():
    snap = pb.StateSnapshot(sfc="s", nf="mon", tables=[
        pb.TableImage(name=f"t{i}", size=1 << 20, zdata=bytes([i]) * (700 << 10))
        for i in range(5)])
    request = pb.RestoreStateRequest(sfc="s", nf="mon", snapshot=snap, force=True)
    chunks = list(bulk.pieces(request))
    assert len(chunks) == 4 and all(len(c.data) <= bulk.CHUNK_BYTES for c in chunks)
    assert all(c.ByteSize() < rpc.RECEIVE_LIMIT for c in chunks)
    assert assemble(chunks, pb.RestoreStateRequest) == request
    empty = list(bulk.pieces(pb.RestoreStateRequest()))
    assert len(empty) == 1 and assemble(empty, pb.RestoreStateRequest) == pb.RestoreStateRequest()


def test_pieces_past_the_bound_are_refused_and_not_read_on():
    read = []

    def endless():
        while True:
            read.append(1)
            yield pb.BulkChunk(data=b"x" * 1000)
    with pytest.raises(Aborted) as e:
        assemble(endless(), pb.RestoreStateRequest, limit=10_000)
    code, details = e.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 10000 bytes" in details
    assert len(read) == 11
    with pytest.raises(Aborted) as e:
        assemble([pb.BulkChunk(data=b"\xff\xff\xff")], pb.RestoreStateRequest)
    assert "not a RestoreStateRequest" in e.value.args[1]


class Store:
    """What ApplySFC reads of etcd: the deployed NFs."""

    def __init__(self, records):
        self.items = {k: SimpleNamespace(value=v.encode().encode()) for k, v in records.items()}

    async def list(self, prefix):
        return {k: v for k, v in self.items.items() if k.startswith(prefix)}, 1


def nf(name, size):
    return NFRecord(name=name, description="", source="/*" + "x" * (size - 4) + "*/",
                    source_sha256="0" * 64, image_size=1, created=0, updated=0)


SPEC = """apiVersion: serpens/v1
kind: SFC
metadata: {name: big}
spec:
  nfs: {a: {nf: a}, b: {nf: b}, c: {nf: a}}
  chain: [a, b, c]
"""


def test_an_sfc_naming_more_source_than_one_run_carries_is_refused(monkeypatch):
    monkeypatch.setattr(api, "LIMITS", dataclasses.replace(api.LIMITS,
                                                           chain_source_bytes=3000))
    servicer = api.SerpensServicer(None)
    servicer.store = Store({servicer.nfs_prefix + "a": nf("a", 2000),
                            servicer.nfs_prefix + "b": nf("b", 1001)})
    with pytest.raises(Aborted) as e:
        asyncio.run(servicer.ApplySFC(pb.ApplySFCRequest(spec=SPEC), Context()))
    code, details = e.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("spec.nfs: the deployed NFs it names hold 3001 bytes") \
        and "at most 3000" in details, details  # (`a` twice in the chain counts once)


def test_a_new_source_that_would_take_an_sfc_over_the_bound_is_refused(monkeypatch):
    monkeypatch.setattr(api, "LIMITS", dataclasses.replace(api.LIMITS,
                                                           chain_source_bytes=3000))
    servicer = api.SerpensServicer(None)
    user = SFCRecord(name="big", spec=SPEC, doc={}, nfs=("a", "b"), generation=1,
                     scale=ScaleRecord(1, 1, 1), created=0, updated=0)
    servicer.store = Store({servicer.nfs_prefix + "a": nf("a", 2000),
                            servicer.nfs_prefix + "b": nf("b", 900),
                            servicer.sfcs_prefix + "big": user})
    with pytest.raises(Aborted) as e:   # (refused before it is compiled)
        asyncio.run(servicer.DeployNF(pb.DeployNFRequest(name="b", source="x" * 1001),
                                      Context()))
    code, details = e.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("source: SFC big names this NF") and "3001 bytes" in details
