"""The leader's routes through the gateway (DESIGN §7): SFC tags, route records, and pushing
the route set to every gateway.

One `Routes` per term (the reconciler's, made when it starts leading, closed when the term
ends). The reconciler is the only writer of route records (`routes/<sfc>`, fenced with the
term); this object keeps the term's copy of them, which is what gets pushed.

* Tags: an SFC's tag is the smallest one (1..2^24-1) no route record and no claim of this
  term holds. `tag()` chooses and claims it in one step, with no await between, so two
  workers never take the same; the route record written next makes it durable (before any
  node is told about it), and it stays the SFC's until the SFC is deleted (`delete()`).
* Pushes: every gateway registered (`gateways/<name>`) gets its own task. A route change,
  or a gateway that (re)registers or reports a term older than the leader's, wakes it; it
  sends the whole current set (sorted by tag) with the term (SetRoutes), so changes made
  while a push is in flight coalesce into the next one (latest set wins; nothing queues).
  A failed push is retried with back-off (cut short, and reset, by a change or a
  registration); ABORTED (the gateway has seen a newer term: this
  leader is deposed) and INVALID_ARGUMENT (retrying cannot help) are not retried until the
  next change. The task ends when the gateway leaves or the term ends (its calls cancelled).
  The log says how long each push took from the decision that made it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from serpens.common.records import GatewayRecord, RouteRecord
from serpens.common.route_set import RouteSet, RouteSetError
from serpens.common.rpc import Stubs
from serpens.common.store import Conflict, Election
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_TAG = (1 << 24) - 1
_PUSH_TIMEOUT = 5.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
_STALE_REPUSH_S = 1.0   # a gateway reporting an older term is pushed again at most this often


def smallest_free(used) -> int:
    """The smallest tag in 1..MAX_TAG not in `used` (ValueError when all are taken)."""
    taken = set(used)
    for tag in range(1, len(taken) + 2):
        if tag not in taken:
            if tag > MAX_TAG:
                break
            return tag
    raise ValueError(f"no free SFC tag: all {MAX_TAG} are taken")


class Routes:
    def __init__(self, election: Election, keys, cache):
        self.election, self.keys, self.cache = election, keys, cache
        self.records: dict[str, RouteRecord] = {}     # sfc -> its route (this term's copy)
        self._claimed: dict[str, int] = {}           # sfc -> tag chosen, record not yet written
        self._admitted: dict[str, RouteRecord] = {}  # sfc -> route admitted, not yet written
        self.ingress: frozenset[str] | None = None  # the registered gateways' ingress ports
        self._stubs = Stubs(pb_grpc.GatewayStub)
        self._pushers: dict[str, _Pusher] = {}
        self.pushes = 0                               # successful pushes (for tests and logs)
        self.version = 0                              # route changes this term

    # -- tags and records -------------------------------------------------------------------

    def load(self, records: dict[str, RouteRecord]) -> None:
        """The route records stored when the term starts."""
        self.records = dict(records)

    def tag(self, sfc: str) -> int:
        """The SFC's tag: its route's, else one claimed now (no await: no other worker can
        choose the same)."""
        record = self.records.get(sfc)
        if record is not None:
            return record.tag
        if sfc not in self._claimed:
            self._claimed[sfc] = smallest_free(
                {r.tag for r in self.records.values()} | set(self._claimed.values()))
        return self._claimed[sfc]

    def admit(self, route: RouteRecord) -> str | None:
        """Why the gateway could not hold `route` beside the others (None: it fits, and it
        is counted as theirs from now, with no await between: two workers never admit two
        routes that fit only one at a time). common/route_set.py's limits, and its rules'
        `port` must be an ingress port of a registered gateway."""
        others = {**self.records, **self._admitted}
        others.pop(route.sfc, None)
        fitting = self._fit(others.values())
        try:
            fitting.add(route, f"sfc {route.sfc}: route")
        except RouteSetError as e:
            self._admitted.pop(route.sfc, None)
            return f"the gateway cannot take it beside the {len(fitting.names)} SFCs it " \
                   f"serves: {e}"
        self._admitted[route.sfc] = route
        return None

    def _fit(self, routes, why: dict | None = None) -> RouteSet:
        """The routes (by tag) the gateway can hold together; `why` gets the others'."""
        fitting = RouteSet(self.ingress)
        for r in sorted(routes, key=lambda r: r.tag):
            try:
                fitting.add(r, f"sfc {r.sfc}: route")
            except RouteSetError as e:
                if why is not None:
                    why[r.sfc] = str(e)
        return fitting

    async def put(self, record: RouteRecord, expected: int, decided_at: float) -> int:
        """Write the SFC's route (fenced, compared with `expected` mod revision) if it
        changed; its revision (`expected` when unchanged). Conflict/NotLeader propagate."""
        if self.records.get(record.sfc) == record and expected:
            return expected
        revision = await self.election.put_fenced(self.keys.route(record.sfc),
                                                  record.encode(), expected)
        self.cache.wrote(revision)
        self.records[record.sfc] = record
        self._claimed.pop(record.sfc, None)
        self._admitted.pop(record.sfc, None)
        self._changed(decided_at)
        return revision

    async def delete(self, sfc: str, expected: int, decided_at: float) -> None:
        """The SFC is gone: its route record is deleted and its tag freed."""
        if expected:
            with contextlib.suppress(Conflict):  # deleted or rewritten meanwhile: look again
                self.cache.wrote(await self.election.delete_fenced(self.keys.route(sfc),
                                                                   expected))
        self._claimed.pop(sfc, None)
        self._admitted.pop(sfc, None)
        if self.records.pop(sfc, None) is not None:
            self._changed(decided_at)

    def messages(self) -> list:
        """The route set to push, by tag: never one the gateway must refuse whole (a stored
        route that does not fit, e.g. written before its limits were checked, is left out)."""
        why: dict[str, str] = {}
        fitting = self._fit(self.records.values(), why)
        for sfc, reason in sorted(why.items()):
            log.warning("route of sfc %s left out of the pushed set: %s", sfc, reason)
        return [r.to_message() for r in sorted(self.records.values(), key=lambda r: r.tag)
                if r.sfc in fitting.names]

    # -- gateways ---------------------------------------------------------------------------

    def gateways(self, registered: dict[str, tuple[GatewayRecord, int]]) -> None:
        """The registered gateways now: name -> (record, its key's create revision). A new
        one (or one registered again: a new key, a new address) gets a pusher that pushes
        at once; one reporting a term older than the leader's is pushed again."""
        term = self.election.leader_revision
        # rule ports are checked against the gateways there are (none: nothing to check)
        self.ingress = frozenset(p for record, _ in registered.values()
                                 for p in record.ingress) if registered else None
        for name in [n for n in self._pushers if n not in registered]:
            self._pushers.pop(name).close()
        loop = asyncio.get_running_loop()
        for name, (record, created) in registered.items():
            pusher = self._pushers.get(name)
            if pusher is not None and (pusher.address, pusher.created) != \
                    (record.address, created):
                pusher.close()
                pusher = None
            if pusher is None:
                log.info("gateway %s (%s) registered: pushing its routes", name,
                         record.address)
                pusher = self._pushers[name] = _Pusher(self, name, record.address, created)
                pusher.wake(loop.time())
            elif term is not None and record.term < term and not pusher.refused and \
                    loop.time() - pusher.attempted_at > _STALE_REPUSH_S:
                pusher.wake(loop.time())  # it has lost our routes (restarted in place?)

    async def close(self) -> None:
        for pusher in self._pushers.values():
            pusher.close()
        tasks = [p.task for p in self._pushers.values()]
        self._pushers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stubs.close()

    def _changed(self, decided_at: float) -> None:
        self.version += 1
        for pusher in self._pushers.values():
            pusher.wake(decided_at)

    async def settled(self, timeout: float) -> bool:
        """Wait until every registered gateway has been pushed the routes as they are now
        (drain.py: a route change in effect before flows move or a server stops); False
        if one has not within `timeout` s."""
        version, loop = self.version, asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(p.pushed < version for p in self._pushers.values()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True


class _Pusher:
    """Pushes the route set to one gateway whenever woken (see the module's docstring)."""

    def __init__(self, routes: Routes, name: str, address: str, created: int):
        self.routes, self.name, self.address, self.created = routes, name, address, created
        self._wake = asyncio.Event()
        self.pending_since: float | None = None   # oldest decision not yet pushed here
        self.attempted_at = -1e9
        self.refused = False                      # ABORTED or INVALID_ARGUMENT: until a change
        self.pushed = -1                          # Routes.version of the last set it took
        self.task = asyncio.get_running_loop().create_task(self._run(),
                                                           name=f"push-gateway-{name}")

    def wake(self, decided_at: float) -> None:
        if self.pending_since is None:
            self.pending_since = decided_at
        self.refused = False
        self._wake.set()

    def close(self) -> None:
        self.task.cancel()
        self.routes._stubs.drop(self.address)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        while True:
            await self._wake.wait()
            self._wake.clear()
            term = self.routes.election.leader_revision
            if term is None:
                return  # the term is over
            version = self.routes.version
            request = pb.SetRoutesRequest(routes=self.routes.messages(), term=term)
            self.attempted_at = loop.time()
            since, self.pending_since = self.pending_since, None  # a change from now: next push
            try:
                await self.routes._stubs[self.address].SetRoutes(request,
                                                                 timeout=_PUSH_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.ABORTED, grpc.StatusCode.INVALID_ARGUMENT):
                    log.warning("gateway %s refused routes of term %d: %s: %s; not pushed "
                                "again until they change", self.name, term, code.name,
                                e.details())
                    self.refused = True
                    continue
                log.warning("pushing routes to gateway %s (%s): %s: %s; retrying in %.1f s",
                            self.name, self.address, code.name, e.details(), backoff)
                if since is not None:
                    self.pending_since = min(since, self.pending_since or since)
                # a change or a registration (wake) cuts the back-off short and resets it
                woken = False
                with contextlib.suppress(asyncio.TimeoutError):
                    woken = await asyncio.wait_for(self._wake.wait(), backoff)
                backoff = _BACKOFF_FIRST if woken else min(backoff * 2, _BACKOFF_MAX)
                self._wake.set()
                continue
            backoff = _BACKOFF_FIRST
            self.routes.pushes += 1
            self.pushed = version
            log.info("gateway %s: %d routes pushed (term %d), %.1f ms after the decision",
                     self.name, len(request.routes), term,
                     1000 * (loop.time() - since) if since is not None else 0.0)
