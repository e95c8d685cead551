"""etcd store adapter of the control plane (DESIGN §4): revisions, watches, leases, election.

Theory of operation
-------------------
Everything the control plane keeps (NFs, SFCs and their status, nodes, the leader key: see
common/keys.py) lives in etcd under `/serpens/v1/`. etcd stamps every write with a
cluster-wide, increasing *revision*; each key carries the revision that created it and the
one that last modified it (`mod_revision`). This module builds on those numbers alone:

* Optimistic concurrency. Writes are transactions comparing the key's `mod_revision` with the
  one the caller read (`put_if`, `delete_if`; 0 means "only if absent"). A mismatch raises
  `Conflict`, carrying what the key holds now, and the caller reconciles again. A retried
  write whose first attempt landed but whose reply was lost also ends in `Conflict`; that is
  harmless because reconcile handlers are idempotent.
* Bounded calls. Each RPC attempt has a deadline. Failed attempts (etcd down or restarting, no
  raft leader, deadline passed) are retried with jittered exponential back-off, moving on to
  the next endpoint, until the operation's deadline; then `StoreUnavailable`. Nothing waits
  forever.
* Watches by revision. `list(prefix)` returns the items and the revision they were read at;
  `watch(prefix, revision + 1)` then delivers every later change once, in order. The watch
  remembers the revision after the last event it delivered (`Watch.revision`). When the stream
  breaks (etcd restarted, connection lost), it re-creates the stream from there: no gap, no
  duplicate. If etcd compacted that revision away, the missed events are gone, so the watch
  re-lists the range and emits one RESET event with the full current contents, then goes on.
* Leases. `grant(ttl)` starts a task refreshing the lease every ttl/3. The lease is lost
  (`lease.lost` is set, for good) when etcd reports it expired, or when no refresh has
  succeeded for a whole TTL. That TTL is counted from when the last successful refresh was
  sent, so we give the lease up no later than etcd expires it. Keys put with the lease
  vanish when it expires.
* Election and fencing. The leader is whoever created the election key, which is bound to the
  leader's lease. The key is only ever created, never updated, and each creation gets a new
  revision. That `create_revision` is the leader's fencing token: `put_fenced` compares it in
  the same transaction as the write, so a leader whose lease expired (a pause, a partition)
  has its writes refused, even while it still believes it leads.

aetcd 1.0 (the client) talks to one host:port, ends a watch on any stream error and never
refreshes leases by itself: endpoint failover, watch resumption and keep-alive are done here.
It also only dials plain text; `_TLSClient` dials TLS with a client certificate (`identity`),
which is how Serpens authenticates to etcd (etcd --client-cert-auth; with etcd auth enabled
the certificate's CN is the etcd user).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from typing import AsyncIterator, Callable, NamedTuple

import aetcd
import grpc
from aetcd import rpc as etcd_rpc
from aetcd import transactions as txn
from aetcd import watcher as etcd_watcher
from aetcd.utils import prefix_range_end

from serpens.common.pki import Identity
from serpens.common.rpc import channel_credentials
from serpens.common.tasks import cancel_until_done

log = logging.getLogger(__name__)

PUT, DELETE, RESET = "put", "delete", "reset"

# gRPC backs off up to 120 s between attempts to reach a refused address; cap it so that a
# restarted etcd is found again within a second. Keepalive pings detect a dead peer under an
# idle watch; etcd answers pings more frequent than --grpc-keepalive-min-time (5 s) with GOAWAY.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 50,
    "grpc.min_reconnect_backoff_ms": 50,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 64 << 20,  # list() of a large prefix in one reply
}
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0
# Worth another attempt: etcd down or restarting, no raft leader, deadline passed, or the call
# cancelled because we closed its channel to move to another endpoint.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED}


class StoreError(Exception):
    """An etcd request failed for a reason retrying will not fix."""


class StoreUnavailable(StoreError):
    """etcd did not answer before the operation's deadline."""


class Conflict(StoreError):
    """A compared mod_revision did not match; `current` is what the key holds now (or None)."""

    def __init__(self, key: str, expected: int, current: Item | None):
        now = current.mod_revision if current else "absent"
        super().__init__(f"{key}: expected mod_revision {expected}, found {now}")
        self.key, self.expected, self.current = key, expected, current


class NotLeader(StoreError):
    """A fenced write was refused: the election key is gone or belongs to a newer term."""


class LeaseLost(StoreError):
    """The lease expired or was revoked (etcd: "requested lease not found")."""


class _Compacted(StoreError):
    """The requested start revision is older than etcd's compaction point."""


class _Item(NamedTuple):
    value: bytes
    mod_revision: int


class Item(_Item):
    """(value, mod_revision), equal to that plain tuple; `create_revision` is the key's
    create revision where the read knew it (list, get), else 0."""
    create_revision: int = 0


def _item(kv) -> Item:
    item = Item(kv.value, kv.mod_revision)
    item.create_revision = kv.create_revision
    return item


class _Event(NamedTuple):
    type: str                 # PUT, DELETE or RESET
    key: str                  # RESET: the start of the watched range
    value: bytes | None       # None for DELETE and RESET
    mod_revision: int         # RESET: the revision the listing was read at
    items: dict[str, Item] | None = None  # RESET only: the whole range, replacing any cache


class Event(_Event):
    """A watched change, equal to the plain tuple; a PUT's `create_revision` is the key's
    create revision (a deleted and re-created key has a new one), else 0."""
    create_revision: int = 0

    def item(self) -> Item:
        """A PUT's value as list() and get() give it."""
        item = Item(self.value, self.mod_revision)
        item.create_revision = self.create_revision
        return item


class Leader(NamedTuple):
    identity: str
    revision: int             # create revision of the election key: the term's fencing token


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode()


def _key_text(key: bytes) -> str:
    # Keys are ours and UTF-8, but anyone with etcd access may write others under the
    # prefix: one such key must not fail every list and watch of it.
    return key.decode(errors="replace")


def _permanent(e: BaseException) -> StoreError | None:
    """The error to raise for a failed attempt, or None when another attempt may succeed."""
    if isinstance(e, (TimeoutError, aetcd.WatchTimeoutError)):
        return None
    if isinstance(e, aetcd.RevisionCompactedError):
        return _Compacted(str(e))
    rpc = e if isinstance(e, grpc.aio.AioRpcError) else e.__cause__
    code = rpc.code() if isinstance(rpc, grpc.aio.AioRpcError) else None
    if code in _TRANSIENT:
        return None
    if code == grpc.StatusCode.NOT_FOUND:  # the only NOT_FOUND of etcd's KV and lease APIs
        return LeaseLost(str(e))
    return StoreError(str(e))


def _error_kind(e: BaseException) -> str:
    """A failed etcd attempt's kind, for metrics: "timeout", the gRPC status code's name,
    or the aetcd error's class name (bounded: aetcd's few classes)."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code().name
    return type(e).__name__


class _TLSClient(aetcd.Client):
    """aetcd.Client over TLS: its connect() with a secure channel instead of a plain one."""

    def __init__(self, *args, credentials: grpc.ChannelCredentials, **kwargs):
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}",
                                                   self._credentials, options=self._options.items())
            self.kvstub = etcd_rpc.KVStub(self.channel)
            self.clusterstub = etcd_rpc.ClusterStub(self.channel)
            self.leasestub = etcd_rpc.LeaseStub(self.channel)
            self.maintenancestub = etcd_rpc.MaintenanceStub(self.channel)
            self._watcher = etcd_watcher.Watcher(etcd_rpc.WatchStub(self.channel),
                                                 timeout=self._timeout, metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


class Store:
    """etcd through aetcd: `store = await Store.connect(["127.0.0.1:2379"], timeout=5.0)`.

    `timeout` bounds each operation, retries included; one attempt gets `attempt_timeout`
    (a third of `timeout` by default, so a black-holed endpoint still leaves room to retry).
    `identity` (common/pki.py): dial TLS and present that client certificate; None: plain text.
    """

    def __init__(self, endpoints: list[str], timeout: float, attempt_timeout: float,
                 identity: Identity | None = None):
        if not endpoints:
            raise ValueError("endpoints: at least one host:port is required")
        self.endpoints, self.timeout, self.attempt_timeout = endpoints, timeout, attempt_timeout
        self.errors: collections.Counter = collections.Counter()  # failed attempts, by kind
        self._credentials = None
        if identity is not None:
            self._credentials = channel_credentials(identity)
        self._index = 0
        self._client = self._new_client()
        self._leases: set[Lease] = set()
        self._closing: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    async def connect(cls, endpoints: str | list[str], timeout: float = 5.0, *,
                      attempt_timeout: float | None = None,
                      identity: Identity | None = None) -> Store:
        endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        store = cls(endpoints, timeout, attempt_timeout or timeout / 3, identity)
        try:
            # aetcd connects lazily; a read proves that a member answers and has a raft
            # leader (a linearizable read needs one), as `etcdctl endpoint health` does.
            await store._call(lambda c: c.get(b"health"))
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Stop keep-alives (our leases then expire after their TTL) and close the channel."""
        self._closed = True
        leases = list(self._leases)
        for lease in leases:
            lease._stop()
        for lease in leases:
            await cancel_until_done(lease._task)
        await self._client.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _new_client(self) -> aetcd.Client:
        host, _, port = self.endpoints[self._index].rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if self._credentials is not None:
            return _TLSClient(host, int(port), timeout=self.attempt_timeout,
                              options=_CHANNEL_OPTIONS, credentials=self._credentials)
        return aetcd.Client(host, int(port), timeout=self.attempt_timeout,
                            options=_CHANNEL_OPTIONS)

    def _next_endpoint(self, failed: aetcd.Client) -> None:
        # With one endpoint, gRPC reconnects by itself (back-off capped above). Only the first
        # of several concurrent failures on the same client moves on.
        if len(self.endpoints) == 1 or failed is not self._client:
            return
        self._index = (self._index + 1) % len(self.endpoints)
        self._client = self._new_client()
        # Closing ends the old client's watch streams; each Watch resumes on the new client.
        task = asyncio.get_running_loop().create_task(failed.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _call(self, request: Callable, deadline: float | None = None):
        """`await request(client)`, retrying transient failures with back-off until `deadline`
        seconds (the store's timeout by default) have passed, then StoreUnavailable."""
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.timeout if deadline is None else deadline)
        delay, error = _BACKOFF_FIRST, None
        while (left := end - loop.time()) > 0:
            client = self._client
            try:
                return await asyncio.wait_for(request(client), min(self.attempt_timeout, left))
            except (TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError) as e:
                self.errors[_error_kind(e)] += 1
                if (permanent := _permanent(e)) is not None:
                    raise permanent from e
                error = e
            self._next_endpoint(client)
            await asyncio.sleep(max(0.0, min(delay * random.uniform(0.5, 1.0), end - loop.time())))
            delay = min(2 * delay, _BACKOFF_MAX)
        raise StoreUnavailable(f"etcd {','.join(self.endpoints)}: no answer within "
                               f"{self.timeout if deadline is None else deadline:.2f}s "
                               f"({error!r})") from error

    async def _range(self, key: bytes, range_end: bytes) -> tuple[dict[str, Item], int]:
        reply = await self._call(lambda c: c.get_range(key, range_end))
        items = {_key_text(kv.key): _item(kv) for kv in reply}
        return items, reply.header.revision

    # -- keys -------------------------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        kv = await self._call(lambda c: c.get(_b(key)))
        return None if kv is None else _item(kv)

    async def list(self, prefix: str) -> tuple[dict[str, Item], int]:
        """Every key under `prefix` and the revision they were read at (watch from it + 1)."""
        if not prefix:
            raise ValueError("prefix: must not be empty")
        return await self._range(_b(prefix), prefix_range_end(_b(prefix)))

    async def put(self, key: str, value: bytes | str, lease: Lease | None = None) -> int:
        """Unconditional write (e.g. a node's leased heartbeat key); returns its revision."""
        lease_id = lease.id if lease else 0
        reply = await self._call(lambda c: c.put(_b(key), _b(value), lease=lease_id))
        return reply.header.revision

    async def put_if(self, key: str, value: bytes | str, expected_mod_revision: int,
                     lease: Lease | None = None) -> int:
        """Write only if the key's mod_revision is `expected_mod_revision` (0: only if absent);
        returns the new revision, or raises Conflict."""
        k = _b(key)
        ok, replies = await self._call(lambda c: c.transaction(
            compare=[txn.Mod(k) == expected_mod_revision],
            success=[txn.Put(k, _b(value), lease=lease.id if lease else 0)],
            failure=[txn.Get(k)]))
        if not ok:
            raise Conflict(key, expected_mod_revision, _first(replies[0]))
        return replies[0].response_put.header.revision

    async def delete_if(self, key: str, expected_mod_revision: int) -> int:
        """Delete only if the key's mod_revision is `expected_mod_revision`; returns the
        revision of the deletion, or raises Conflict."""
        if expected_mod_revision <= 0:
            raise ValueError("expected_mod_revision: must be the revision of an existing key")
        k = _b(key)
        ok, replies = await self._call(lambda c: c.transaction(
            compare=[txn.Mod(k) == expected_mod_revision], success=[txn.Delete(k)],
            failure=[txn.Get(k)]))
        if not ok:
            raise Conflict(key, expected_mod_revision, _first(replies[0]))
        return replies[0].response_delete_range.header.revision

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`; waits until applied, so later watches see it."""
        await self._call(lambda c: c.compact(revision, physical=True))

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events under `prefix` from `start_revision` (inclusive) on, as an async iterator;
        use as `async with store.watch(p, rev) as events: async for ev in events: ...`."""
        if not prefix:
            raise ValueError("prefix: must not be empty")
        return Watch(self, _b(prefix), prefix_range_end(_b(prefix)), start_revision)

    # -- leases -----------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A lease of `ttl` seconds (etcd may grant more), kept alive until revoked or lost."""
        sent = asyncio.get_running_loop().time()
        granted = await self._call(lambda c: c.lease(ttl))
        return Lease(self, granted.id, granted.ttl, sent)


def _first(got: list) -> Item | None:
    """The Item of a transaction's one-key Get (aetcd gives [(value, kv)] or [])."""
    return Item(got[0][1].value, got[0][1].mod_revision) if got else None


class Watch:
    """Events on [key, range_end) from `revision` on, resumed across broken streams; see the
    module docstring. Raises StoreUnavailable when etcd stays unreachable for the store's
    timeout: `revision` then tells where a new watch should start."""

    def __init__(self, store: Store, key: bytes, range_end: bytes, revision: int):
        if revision < 1:
            raise ValueError("start_revision: must be at least 1 (list()'s revision + 1)")
        self.revision = revision  # the next revision to deliver
        self.reconnects = 0       # streams re-created after a break (for logs and tests)
        self.connected = False    # a stream is open: every change reaches us (caches check)
        self._store, self._key, self._range_end = store, key, range_end
        self._events = self._run()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _run(self) -> AsyncIterator[Event]:
        delay = _BACKOFF_FIRST
        while True:
            compacted = False
            try:
                stream = await self._store._call(lambda c: c.watch(
                    self._key, range_end=self._range_end, start_revision=self.revision))
            except _Compacted:
                stream, compacted = None, True
            if stream is not None:
                self.connected = True
                try:
                    async for ev in stream:
                        # etcd sends a transaction's events in one response and aetcd queues
                        # them before any error, so a break never falls inside a revision.
                        self.revision = ev.kv.mod_revision + 1
                        delay = _BACKOFF_FIRST
                        event = Event(PUT if ev.kind == "PUT" else DELETE,
                                      _key_text(ev.kv.key),
                                      ev.kv.value if ev.kind == "PUT" else None,
                                      ev.kv.mod_revision)
                        event.create_revision = ev.kv.create_revision
                        yield event
                except aetcd.RevisionCompactedError:
                    compacted = True
                except Exception as e:  # noqa: BLE001 - aetcd re-raises whatever broke the stream
                    log.info("watch %s broke at revision %d: %r", self._key, self.revision, e)
                finally:
                    self.connected = False
                    # aetcd forgets a broken stream itself; this only matters on aclose().
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(stream.cancel(), self._store.attempt_timeout)
            if compacted:
                items, revision = await self._store._range(self._key, self._range_end)
                self.revision = revision + 1
                yield Event(RESET, self._key.decode(), None, revision, items)
                continue
            # The stream broke or ended (its client was closed): resume from self.revision,
            # pausing a little longer after each break that delivered nothing.
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(2 * delay, _BACKOFF_MAX)


class Lease:
    """A granted lease, refreshed by a background task until revoked, lost or the store
    closes. `lost` is set once etcd may have expired it; that is final."""

    def __init__(self, store: Store, lease_id: int, ttl: int, sent: float):
        self.id, self.ttl = lease_id, ttl
        self.lost = asyncio.Event()
        self._store = store
        store._leases.add(self)
        self._task = asyncio.get_running_loop().create_task(
            self._keep_alive(sent + ttl), name=f"etcd-lease-{lease_id:x}")

    async def _keep_alive(self, expires: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.lost.is_set():  # (set by _stop)
                # A third of the TTL leaves room for two failed refreshes before expiry.
                await asyncio.sleep(self.ttl / 3)
                sent = loop.time()
                try:
                    reply = await self._store._call(lambda c: c.refresh_lease(self.id),
                                                    deadline=expires - sent)
                except StoreUnavailable:
                    if loop.time() >= expires:
                        log.warning("lease %x: no refresh for %ds, given up", self.id, self.ttl)
                        return
                    continue
                if reply is not None and reply.TTL <= 0:
                    log.warning("lease %x expired or was revoked on etcd", self.id)
                    return
                if reply is not None:
                    expires = sent + reply.TTL  # counted from sending: never later than etcd
        except StoreError as e:
            log.warning("lease %x: keep-alive failed: %s", self.id, e)
        finally:
            self.lost.set()
            self._store._leases.discard(self)

    def _stop(self) -> None:
        self._task.cancel()
        self.lost.set()
        self._store._leases.discard(self)

    async def revoke(self) -> None:
        """Revoke now: etcd deletes the lease's keys at once instead of after the TTL."""
        self._stop()
        with contextlib.suppress(LeaseLost):  # already expired: same outcome
            await self._store._call(lambda c: c.revoke_lease(self.id))


class Election:
    """Leader election on the key `name` (e.g. /serpens/v1/leader) among candidates that each
    hold a lease of `ttl` seconds; see the module docstring."""

    def __init__(self, store: Store, name: str, identity: str, ttl: int):
        self.key, self.identity, self.ttl = name, identity, ttl
        self.lease: Lease | None = None
        self.leader_revision: int | None = None  # our fencing token while we lead
        self._store, self._k = store, _b(name)

    @property
    def is_leader(self) -> bool:
        """Our local belief; only put_fenced's check on etcd is authoritative."""
        return self.leader_revision is not None and not self.lease.lost.is_set()

    async def campaign(self) -> int:
        """Wait until we lead; return the fencing token (also in `leader_revision`). Cancel
        it to stop campaigning; resign() then releases the lease."""
        while True:
            if self.lease is None or self.lease.lost.is_set():
                self.lease = await self._store.grant(self.ttl)
            lease = self.lease
            try:
                ok, replies = await self._store._call(lambda c: c.transaction(
                    compare=[txn.Create(self._k) == 0],
                    success=[txn.Put(self._k, _b(self.identity), lease=lease.id)],
                    failure=[txn.Get(self._k)]))
            except LeaseLost:  # expired between grant and use: take a new one
                lease._stop()
                continue
            if ok:
                self.leader_revision = replies[0].response_put.header.revision
                return self.leader_revision
            if not replies[0]:
                continue  # deleted between the compare and the get: try again
            holder = replies[0][0][1]
            if holder.lease == lease.id:  # an earlier attempt landed but its reply was lost
                self.leader_revision = holder.create_revision
                return self.leader_revision
            await self._wait_deleted(holder.mod_revision + 1)

    async def _wait_deleted(self, revision: int) -> None:
        async with Watch(self._store, self._k, self._k + b"\0", revision) as events:
            async for ev in events:
                if ev.type == DELETE or (ev.type == RESET and not ev.items):
                    return

    async def leader(self) -> Leader | None:
        return _leader(await self._store.get(self.key))

    async def observe(self) -> AsyncIterator[Leader | None]:
        """The current leader (None while there is none), then each change."""
        items, revision = await self._store._range(self._k, self._k + b"\0")
        current = _leader(items.get(self.key))
        yield current
        async with Watch(self._store, self._k, self._k + b"\0", revision + 1) as events:
            async for ev in events:
                if ev.type == RESET:
                    new = _leader(ev.items.get(self.key))
                else:
                    new = _leader(Item(ev.value, ev.mod_revision) if ev.type == PUT else None)
                if new != current:
                    current = new
                    yield new

    async def put_fenced(self, key: str, value: bytes | str, expected_mod_revision: int) -> int:
        """put_if that also requires the election key to still be ours (same create revision),
        in one transaction. Raises NotLeader when it is not, Conflict on `key`'s revision."""
        reply = await self._fenced(key, expected_mod_revision,
                                   lambda k: txn.Put(k, _b(value)))
        return reply.response_put.header.revision

    async def delete_fenced(self, key: str, expected_mod_revision: int) -> int:
        """delete_if, fenced as put_fenced is."""
        reply = await self._fenced(key, expected_mod_revision, txn.Delete)
        return reply.response_delete_range.header.revision

    async def _fenced(self, key: str, expected_mod_revision: int, operation):
        token = self.leader_revision
        if token is None:
            raise NotLeader(f"{self.key}: {self.identity} has not won an election")
        k = _b(key)
        ok, replies = await self._store._call(lambda c: c.transaction(
            compare=[txn.Create(self._k) == token, txn.Mod(k) == expected_mod_revision],
            success=[operation(k)],
            failure=[txn.Get(self._k), txn.Get(k)]))
        if ok:
            return replies[0]
        holder = replies[0][0][1] if replies[0] else None
        if holder is None or holder.create_revision != token:
            self.leader_revision = None
            raise NotLeader(f"{self.key}: term {token} of {self.identity} is over")
        raise Conflict(key, expected_mod_revision, _first(replies[1]))

    async def resign(self) -> None:
        """Step down; revoking the lease deletes the election key with it."""
        self.leader_revision = None
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await lease.revoke()


def _leader(item: Item | None) -> Leader | None:
    # The election key is only ever created, so its mod_revision is its create revision.
    return None if item is None else Leader(item.value.decode(), item.mod_revision)
