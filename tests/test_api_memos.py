"""The API's reply messages are built once per record revision (controller/api.py _memo), and
kept only for records that still exist: a List drops those of records deleted meanwhile, also
through another replica, and the memo never holds more than MEMO_ENTRIES. Records here are
unreadable on purpose: the API answers them as Failed SFCs, which is all a memo needs."""
import asyncio
from types import SimpleNamespace

import pytest

from serpens.controller import api
from serpens.proto.serpens.v1 import serpens_pb2 as pb

pytestmark = pytest.mark.unit


class Store:
    """What the API reads of etcd for a List: every key under a prefix."""

    def __init__(self):
        self.items = {}

    async def list(self, prefix):
        return {k: v for k, v in self.items.items() if k.startswith(prefix)}, 1


def put(store, key, revision=1):
    store.items[key] = SimpleNamespace(value=b"not a record", mod_revision=revision)


def sfc_memos(servicer):
    return sorted(k[1] for k in servicer._messages if k[0] == "sfc")


def test_a_list_forgets_the_messages_of_records_deleted_meanwhile(caplog):
    store = Store()
    servicer = api.SerpensServicer(store)
    for name in ("a", "b", "c"):
        put(store, servicer.sfcs_prefix + name)
    listed = asyncio.run(servicer.ListSFCs(pb.ListSFCsRequest(), None))
    assert [s.name for s in listed.sfcs] == ["a", "b", "c"]
    assert sfc_memos(servicer) == ["a", "b", "c"]
    del store.items[servicer.sfcs_prefix + "b"]  # (deleted through another replica)
    listed = asyncio.run(servicer.ListSFCs(pb.ListSFCsRequest(), None))
    assert [s.name for s in listed.sfcs] == ["a", "c"] and sfc_memos(servicer) == ["a", "c"]


def test_the_memo_never_holds_more_than_its_bound(monkeypatch, caplog):
    monkeypatch.setattr(api, "MEMO_ENTRIES", 8)
    servicer = api.SerpensServicer(Store())
    for i in range(50):
        servicer._memo(("sfc", f"s{i}"), (1,), lambda: pb.SFC(name=f"s{i}"))
        assert len(servicer._messages) <= 8
    assert servicer._memo(("sfc", "s49"), (1,), lambda: None).name == "s49"  # (a hit)
