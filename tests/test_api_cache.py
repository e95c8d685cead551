"""The controller's watch-fed read cache (controller/cache.py) against a real etcd: it follows
every change, a write made through it is readable at once, and it stands aside (reads go to
etcd, which then answers UNAVAILABLE) while etcd is away, then catches up."""
import asyncio
import time

import pytest

from serpens.common.store import Store
from serpens.controller.cache import Cache

from support.etcd import client_identity, start_etcd

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_cache_follows_changes_and_stands_aside_while_etcd_is_away():
    etcd = start_etcd()

    async def scenario():
        async with await Store.connect(etcd.endpoint, timeout=2, identity=client_identity()) as store:
            await store.put("/c/a", "1")
            cache = Cache(store, "/c/").start()
            await until(lambda: cache.usable)
            assert cache.get("/c/a").value == b"1"
            for i in range(20):  # read-your-writes: each write visible to the next read
                cache.wrote(await store.put("/c/a", str(i)))
                assert await cache.ready() and cache.get("/c/a").value == str(i).encode()
            cache.wrote(await store.delete_if("/c/a", cache.get("/c/a").mod_revision))
            assert await cache.ready() and cache.get("/c/a") is None
            cache.wrote(await store.put("/c/b", "2"))
            await store.put("/other", "x")  # outside the prefix
            assert await cache.ready() and set(cache.list("/c/")) == {"/c/b"}

            etcd.kill()
            await until(lambda: not cache.usable)
            assert await cache.ready() is False
            etcd.start()
            await until(lambda: cache.usable, 20)
            cache.wrote(await store.put("/c/d", "4"))
            assert await cache.ready() and set(cache.list("/c/")) == {"/c/b", "/c/d"}
            await cache.close()
    try:
        asyncio.run(scenario())
    finally:
        etcd.destroy()
