"""What a Watch may hold on the controller: one subscriber's pending events are bounded by
count and by the bytes of their values (past either it gets one RESET and lists again), and
one identity holds at most WATCHES_PER_IDENTITY streams open at once."""
import asyncio
import contextlib

import grpc
import pytest

from serpens.common.store import PUT, RESET, Event
from serpens.controller import api
from serpens.controller.cache import Cache
from serpens.proto.serpens.v1 import serpens_pb2 as pb

pytestmark = pytest.mark.unit


def test_a_subscriber_behind_by_bytes_gets_one_reset_instead():
    cache = Cache(None, "/p/")
    queue = cache.subscribe(depth=1000, max_bytes=3 << 20)
    for i in range(6):
        cache._publish(Event(PUT, f"/p/nfs/n{i}", b"x" * (1 << 20), i + 1))
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [e.type for e in got] == [RESET, PUT]  # (4 MiB held: the 5th reset it)
    assert queue.bytes == 0
    small = cache.subscribe(depth=1000, max_bytes=3 << 20)
    for i in range(100):
        cache._publish(Event(PUT, f"/p/sfcs/s{i}", b"{}", i + 1))
    assert small.qsize() == 100 and small.bytes == 200


class Context:
    def __init__(self):
        self.aborted = None

    def auth_context(self):
        return {}   # (plain text: no identity, counted as one)

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.RpcError(details)


def test_one_identity_holds_a_bounded_number_of_watches(monkeypatch):
    monkeypatch.setattr(api, "WATCHES_PER_IDENTITY", 3)

    async def scenario():
        servicer = api.SerpensServicer(None, cache=Cache(None, "/serpens/v1/"))
        streams = [servicer.Watch(pb.WatchRequest(), Context()) for _ in range(3)]
        waiting = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)  # (open, waiting for events)
        refused = Context()
        with pytest.raises(grpc.RpcError):
            await servicer.Watch(pb.WatchRequest(), refused).__anext__()
        assert refused.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 watches open" in refused.aborted[1]
        waiting[0].cancel()  # one closes: another may open
        with contextlib.suppress(asyncio.CancelledError):
            await waiting[0]
        await streams[0].aclose()
        again = asyncio.ensure_future(servicer.Watch(pb.WatchRequest(), Context()).__anext__())
        await asyncio.sleep(0.05)
        assert not again.done()
        assert sum(servicer._watches.values()) == 3
        for w in (*waiting[1:], again):
            w.cancel()
        await asyncio.gather(*waiting[1:], again, return_exceptions=True)
        for stream in streams[1:]:
            await stream.aclose()
        await asyncio.sleep(0)
        assert not servicer._watches  # (each closed stream gave its place back)
    asyncio.run(scenario())
