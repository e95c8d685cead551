"""serpens.common.store against a real etcd 3.4 (tests/support/etcd.py): revisions and
conditional writes, watches that resume across an etcd restart and re-list after compaction,
lease expiry, leader election with fencing, and bounded failure when etcd is unreachable.

Each test body is a coroutine run by asyncio.run in its own event loop (no pytest plugin);
a `PartitionProxy` cuts one client off from etcd while the others still reach it."""
import asyncio
import contextlib
import functools
import socket

import pytest

from serpens.common.store import (DELETE, PUT, RESET, Conflict, Election, Event, Leader,
                                  LeaseLost, NotLeader, Store, StoreUnavailable)

from support.etcd import PartitionProxy, client_identity, free_port, start_etcd

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(30)]


@pytest.fixture
def prefix(request):
    return f"/t/{request.node.name}/"


def run(test):
    """Run the async test in a fresh event loop; pytest still sees its fixture arguments."""
    @functools.wraps(test)
    def sync_test(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))
    return sync_test


@contextlib.asynccontextmanager
async def partition_proxy(etcd):
    proxy = await PartitionProxy(etcd.endpoint).start()
    try:
        yield proxy
    finally:
        await proxy.close()


def now() -> float:
    return asyncio.get_running_loop().time()


async def next_event(events, timeout=3.0) -> Event:
    return await asyncio.wait_for(anext(events), timeout)


@run
async def test_crud_with_revisions(etcd, prefix):
    a, b, outside = prefix + "a", prefix + "b", prefix[:-1] + "0"  # "0" sorts after "/"
    async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
        assert await store.get(a) is None
        r1 = await store.put_if(a, b"one", 0)
        assert await store.get(a) == (b"one", r1)
        r2 = await store.put_if(a, "two", r1)
        assert r2 > r1 and await store.get(a) == (b"two", r2)
        r3 = await store.put(b, b"bee")
        await store.put(outside, b"not listed")
        items, revision = await store.list(prefix)
        assert items == {a: (b"two", r2), b: (b"bee", r3)} and revision > r3
        r4 = await store.delete_if(a, r2)
        assert r4 > revision and await store.get(a) is None
        assert await store.list(prefix) == ({b: (b"bee", r3)}, r4)


@run
async def test_put_if_conflict(etcd, prefix):
    key = prefix + "k"
    async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
        r1 = await store.put_if(key, b"v1", 0)
        with pytest.raises(Conflict) as e:
            await store.put_if(key, b"create again", 0)
        assert e.value.current == (b"v1", r1)
        r2 = await store.put_if(key, b"v2", r1)
        with pytest.raises(Conflict):
            await store.put_if(key, b"stale", r1)
        with pytest.raises(Conflict):
            await store.delete_if(key, r1)
        assert await store.get(key) == (b"v2", r2)
        with pytest.raises(Conflict) as e:
            await store.put_if(prefix + "absent", b"x", r2)
        assert e.value.current is None and await store.get(prefix + "absent") is None
        # Writers racing from the same revision: exactly one wins.
        results = await asyncio.gather(*(store.put_if(key, b"w%d" % i, r2) for i in range(5)),
                                       return_exceptions=True)
        winners = [r for r in results if isinstance(r, int)]
        assert len(winners) == 1 and sum(isinstance(r, Conflict) for r in results) == 4
        assert (await store.get(key)).mod_revision == winners[0]


@run
async def test_watch_sees_events(etcd, prefix):
    a = prefix + "a"
    async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
        _, revision = await store.list(prefix)
        async with store.watch(prefix, revision + 1) as events:
            r1 = await store.put_if(a, b"1", 0)
            r2 = await store.put_if(a, b"2", r1)
            await store.put(prefix[:-1] + "0", b"outside the prefix")
            r3 = await store.delete_if(a, r2)
            r4 = await store.put(prefix + "b", b"3")
            got = [await next_event(events) for _ in range(4)]
        assert got == [Event(PUT, a, b"1", r1), Event(PUT, a, b"2", r2),
                       Event(DELETE, a, None, r3), Event(PUT, prefix + "b", b"3", r4)]
        # A watch from an old revision replays the same history.
        async with store.watch(prefix, r1) as events:
            assert [await next_event(events) for _ in range(4)] == got


@run
async def test_watch_resumes_after_etcd_restart():
    server = start_etcd()  # its own: this test kills it
    try:
        async with await Store.connect(server.endpoint, timeout=3.0, identity=client_identity()) as store:
            _, revision = await store.list("/r/")
            async with store.watch("/r/", revision + 1) as events:
                r1 = await store.put("/r/a", b"1")
                assert await next_event(events) == Event(PUT, "/r/a", b"1", r1)
                await asyncio.to_thread(server.kill)
                # Sent while etcd is down: the store retries it until etcd is back.
                write = asyncio.create_task(store.put("/r/b", b"2"))
                await asyncio.sleep(0.2)
                assert not write.done()
                await asyncio.to_thread(server.start)  # same ports, same data dir
                # Written before the watch gets a chance to resume: it must go on from its
                # last revision, not from "now".
                r2 = await write
                r3 = await store.put("/r/a", b"3")
                assert [await next_event(events) for _ in range(2)] == [
                    Event(PUT, "/r/b", b"2", r2), Event(PUT, "/r/a", b"3", r3)]
                assert r2 > r1 and events.reconnects >= 1
    finally:
        server.destroy()


@run
async def test_compacted_start_revision_resets(etcd, prefix):
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
        r1 = await store.put(a, b"1")
        r2 = await store.put(b, b"2")
        r3 = await store.put(a, b"3")
        await store.delete_if(b, r2)
        r5 = await store.put(c, b"5")
        await store.compact(r5)
        async with store.watch(prefix, r1) as events:
            reset = await next_event(events)
            assert reset.type == RESET and reset.mod_revision >= r5
            assert reset.items == {a: (b"3", r3), c: (b"5", r5)}
            r6 = await store.put(prefix + "d", b"6")
            assert await next_event(events) == Event(PUT, prefix + "d", b"6", r6)


@run
async def test_compaction_while_disconnected_resets(etcd, prefix):
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    async with (await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store,
                partition_proxy(etcd) as proxy,
                await Store.connect(proxy.endpoint, timeout=3.0, identity=client_identity()) as cut_off):
        _, revision = await store.list(prefix)
        async with cut_off.watch(prefix, revision + 1) as events:
            r1 = await store.put(a, b"1")
            assert await next_event(events) == Event(PUT, a, b"1", r1)
            proxy.partition()
            r2 = await store.put(b, b"2")
            await store.delete_if(a, r1)
            r4 = await store.put(c, b"3")
            await store.compact(await store.delete_if(c, r4))
            proxy.heal()
            reset = await next_event(events, timeout=5.0)
            assert reset.type == RESET and reset.items == {b: (b"2", r2)}
            assert events.reconnects >= 1


@run
async def test_lease_keepalive_and_expiry(etcd, prefix):
    key = prefix + "node"
    async with (await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store,
                partition_proxy(etcd) as proxy,
                await Store.connect(proxy.endpoint, timeout=2.0, identity=client_identity()) as holder):
        lease = await holder.grant(1)
        r1 = await holder.put(key, b"alive", lease=lease)
        async with store.watch(prefix, r1 + 1) as events:
            await asyncio.sleep(2.5)  # two and a half TTLs: only the keep-alive holds the key
            assert await store.get(key) == (b"alive", r1) and not lease.lost.is_set()
            proxy.partition()  # the holder can no longer refresh
            start = now()
            gone = await next_event(events, timeout=5.0)
            assert gone == Event(DELETE, key, None, gone.mod_revision)
            assert now() - start < 2.5  # TTL + etcd's 0.5 s expiry scan + slack
            await asyncio.wait_for(lease.lost.wait(), 1.5)
            proxy.heal()
            with pytest.raises(LeaseLost):
                await holder.put(key, b"on an expired lease", lease=lease)
        # Revoking deletes the lease's keys at once.
        lease = await store.grant(30)
        await store.put_if(key, b"again", 0, lease=lease)
        await lease.revoke()
        assert lease.lost.is_set() and await store.get(key) is None


@run
async def test_election_expired_leader_is_fenced(etcd, prefix):
    key, data = prefix + "leader", prefix + "placement"
    async with (await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store,
                partition_proxy(etcd) as proxy,
                await Store.connect(proxy.endpoint, timeout=2.0, identity=client_identity()) as a_store):
        a, b = Election(a_store, key, "a", ttl=1), Election(store, key, "b", ttl=1)
        token_a = await asyncio.wait_for(a.campaign(), 3)
        b_won = asyncio.create_task(b.campaign())
        r1 = await a.put_fenced(data, b"from a", 0)
        await asyncio.sleep(0.3)
        assert not b_won.done() and await b.leader() == Leader("a", token_a) and a.is_leader
        proxy.partition()  # a is cut off: its lease expires on etcd, b takes over
        start = now()
        token_b = await asyncio.wait_for(b_won, 5)
        assert now() - start < 2.5 and token_b > token_a
        assert await b.leader() == Leader("b", token_b)
        await asyncio.wait_for(a.lease.lost.wait(), 1.5)
        assert not a.is_leader
        proxy.heal()
        # a still holds its old token; etcd refuses the write although `data` is unchanged.
        with pytest.raises(NotLeader):
            await a.put_fenced(data, b"stale leader", r1)
        assert await store.get(data) == (b"from a", r1)
        r2 = await b.put_fenced(data, b"from b", r1)
        with pytest.raises(Conflict):
            await b.put_fenced(data, b"stale revision", r1)
        assert await store.get(data) == (b"from b", r2)
        await b.resign()


@run
async def test_election_revoked_lease_hands_over(etcd, prefix):
    key, data = prefix + "leader", prefix + "placement"
    async with await Store.connect(etcd.endpoint, timeout=2.0, identity=client_identity()) as store:
        a, b = Election(store, key, "a", ttl=5), Election(store, key, "b", ttl=5)
        observer = Election(store, key, "observer", ttl=5).observe()
        assert await next_event(observer) is None
        token_a = await a.campaign()
        assert await next_event(observer) == Leader("a", token_a)
        b_won = asyncio.create_task(b.campaign())
        await a.lease.revoke()  # e.g. `etcdctl lease revoke`; a keeps its token
        token_b = await asyncio.wait_for(b_won, 2)
        assert [await next_event(observer) for _ in range(2)] == [None, Leader("b", token_b)]
        with pytest.raises(NotLeader):
            await a.put_fenced(data, b"from a", 0)
        await b.put_fenced(data, b"from b", 0)
        await b.resign()
        assert await next_event(observer) is None
        token_a2 = await asyncio.wait_for(a.campaign(), 2)
        assert token_a2 > token_b and await a.leader() == Leader("a", token_a2)
        await a.resign()
        await observer.aclose()


@run
async def test_unreachable_etcd_raises_store_unavailable(etcd, prefix):
    # Nothing listening: attempts are refused at once and retried until the deadline.
    start = now()
    with pytest.raises(StoreUnavailable):
        await Store.connect(f"127.0.0.1:{free_port()}", timeout=1.0, identity=client_identity())
    assert 0.9 < now() - start < 1.5
    # A black hole: the kernel accepts the connection, nobody ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = now()
        with pytest.raises(StoreUnavailable):
            await Store.connect("127.0.0.1:%d" % silent.getsockname()[1], timeout=1.0, identity=client_identity())
        assert 0.9 < now() - start < 1.5
    # etcd goes away under a connected store: operations and watches give up in time.
    async with (partition_proxy(etcd) as proxy,
                await Store.connect(proxy.endpoint, timeout=1.0, identity=client_identity()) as store):
        revision = await store.put(prefix + "k", b"v")
        events = store.watch(prefix, revision + 1)
        proxy.partition()
        start = now()
        with pytest.raises(StoreUnavailable):
            await store.get(prefix + "k")
        assert 0.9 < now() - start < 1.5
        with pytest.raises(StoreUnavailable):
            await next_event(events, timeout=3.0)
        assert events.revision == revision + 1


@run
async def test_failover_to_next_endpoint(etcd, prefix):
    dead = f"127.0.0.1:{free_port()}"
    async with await Store.connect([dead, etcd.endpoint], timeout=2.0, identity=client_identity()) as store:
        revision = await store.put_if(prefix + "k", b"v", 0)
        assert await store.get(prefix + "k") == (b"v", revision)
