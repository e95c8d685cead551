"""The controller's reconciler: make the nodes run what etcd says (DESIGN §4).

Theory of operation
-------------------
Several controllers may run; one leads. Each campaigns in the store's election
(`<prefix>leader`, bound to a lease of `ttl` seconds); the winner's term is the election key's
create revision, and every write it makes is fenced with it (Election.put_fenced), so a
deposed leader (paused, cut off) cannot overwrite its successor. A killed leader's lease
expires within `ttl` and a standby takes over; a stopped one resigns at once.

The leader reconciles each SFC on its own: a work queue keyed by SFC name
(controller/workqueue.py) and `workers` tasks taking keys from it. Keys come from

* the controller's watch-fed copy of etcd (controller/cache.py, shared with the API): an
  SFC's record changed, a deployed NF it names changed, a node came or went;
* the nodes' view (controller/nodes.py): each agent is asked what it runs (Agent.GetNode)
  every `resync_s`, each node on its own; an SFC whose state there changed is queued;
* a resync every `resync_s` that queues every SFC (agents' counters move without etcd
  events, and drift gets fixed), except those being processed or waiting out a back-off.

A key is never processed by two workers at once; an SFC whose reconcile fails (an agent that
does not answer, a conflict, etcd away) is retried with its own exponential back-off (an add
made while the failing attempt ran waits for it too). An agent call that hangs holds its worker until its deadline, so a
node gets at most _RUNS_PER_NODE calls that change what it runs (RunSFC, ScaleSFC, StopSFC)
at once (an SFC counts as its load from the moment the call is sent); a busy node is skipped
(a stop or scale there waits for its back-off), and a node whose RunSFC times out or fails
to answer is suspect for _SUSPECT_S (the SFC is placed elsewhere at once, new ones avoid it).
A node that leaves has its calls cancelled (nodes.py closes its channel). A hung node thus
holds at most _RUNS_PER_NODE of the `workers`. Reconciling an SFC is idempotent:

* Desired state: its record (`sfcs/<name>`: spec text, generation, scale).
* Observed state: the live nodes (registered, and their last GetNode answered) and what each
  runs.
* It stays on the node that runs it; without a live node it goes to the node running the
  fewest SFCs (counting those placed there and not yet running), preferring nodes neither
  busy nor suspect. A node that cannot run it beside its other SFCs (a second SFC taking
  unmatched packets, a taken tag: FAILED_PRECONDITION), a busy one, or one whose RunSFC timed
  out is skipped for the next; if none can, it stays Pending (and an older generation keeps
  running where it runs). The agent is told to run the spec's generation
  (RunSFC, with the C source of the deployed NFs it names) and the desired replicas
  (ScaleSFC); copies on other nodes, or of a deleted SFC, are stopped (StopSFC).
* Autoscaling: an SFC whose spec sets `scale.target_pps` gets replicas = its reported input
  rate / target_pps (rounded up, within [min, max], and no more than the node's pool
  processes the other SFCs there leave), written to its record like a Scale call: scale-out
  at once, scale-in only 10 s after the last change and with 20% room to spare.
* The outcome goes to `status/<name>` (phase Pending, Running, Degraded or Failed, node,
  generation, instances), written only when it changed; Degraded and Failed with the agent's
  message when the SFC's instances crash (agent/faults.py). An agent refusing a spec
  (INVALID_ARGUMENT: the field or the compiler's text) marks it Failed until the spec
  changes; an agent that does not answer leaves it Pending (or placed elsewhere), retried
  with back-off.

Routed SFCs (DESIGN §7: served through the gateway over VXLAN). Once a gateway is registered
(`gateways/<name>`) and a live node has an underlay address, an SFC to be run (or one whose
spec says `placement: {spread: N}`, N > 1) is *routed*, for its life: the term's Routes
(controller/routes.py) gives it a tag, stored in its route record (`routes/<name>`) before
any node is told. Its replicas are split over live underlay nodes (controller/placement.py:
up to `spread` nodes; with spread 1 one node, the rest spilling over only when that node's
free pool processes cannot hold them), preferring the nodes that serve it, then the least
loaded; each node gets RunSFC with its share and `vxlan` (the tag, spec.vni, and the first
gateway's underlay address for the way back), all nodes at once; a node that refuses is left
out and the rest placed again (a node that runs a copy, though, stays in the route whatever
a later RunSFC/ScaleSFC answers: a route never goes to no servers while a node runs it). No
node is asked for more replicas than its pool holds beside the other SFCs there; an agent
answering UNAVAILABLE "process pool: ..." (no free process) runs the SFC short of instances
(the node is not suspect). An SFC running on fewer instances than asked is Degraded, saying
so, not Pending; a node whose pool has room again is asked (ScaleSFC) to start the missing
ones. Its route record then lists the nodes that run it, weighted by
their replicas, and every change is pushed to the gateways (routes.py) before copies on other
nodes are stopped. Its status: node the first server, `nodes` each one's instances (when
several), instances their sum, phase the worst of theirs; autoscaling sums their input
rates. Deleting the SFC deletes its route (freeing its tag) before stopping it. Without a
gateway or underlay nodes everything is as above: one node, its own ports; an SFC whose
spec says `output: gateway` then waits Pending (no agent is asked) until both are there.

The route set stays one the gateway can hold (common/route_set.py: at most 16 SFCs and 64
match rules, one default, distinct VLAN tags, rule ports among the gateways' ingress ports):
an SFC whose route would break it stays Pending, naming why, and out of the pushed set (the
check and the claim are one step, routes.py `admit`). The route carries spec.match as the
parser normalises it. Servers lost go from the route before RunSFC is sent to new nodes (a
compile takes seconds); a node whose reported VXLAN route differs from the one wanted (a new
gateway address) gets RunSFC again, which only sets its gateway. A server leaving for any
other reason (its node cordoned by DrainNode, a MoveSFC elsewhere, scale-in: the servers
that joined last leave first) stays in the route until the servers staying run the SFC, then
hands its flows and state over to one of them (controller/drain.py: move_flows, the route
without it, StopSFC with return_to); a cordoned node takes no new placement.

A node lost (its lease expired, or it stops answering) takes its SFCs with it: they are
placed again on the nodes left (those with `state: {checkpoint_s: N}` restored from their last
checkpoint, kept by the peer node they ship it to: controller/checkpoints.py). Losing the controller or etcd stops no traffic: agents keep
running what they run.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from dataclasses import replace

import grpc
from prometheus_client import Histogram

from serpens.common.keys import Keys
from serpens.common.records import (GatewayRecord, MalformedRecord, MoveRecord, NFRecord,
                                    NodeRecord, Reported, RouteRecord, RouteServer, SFCRecord,
                                    SFCStatus, decode)
from serpens.common.rpc import Stubs
from serpens.common.spec import OUTPUT_GATEWAY, SFCSpec, SpecError, parse_sfc
from serpens.common.store import (DELETE, PUT, RESET, Conflict, Election, Item, NotLeader,
                                  Store, StoreError, StoreUnavailable)
from serpens.common.tasks import sleep_unless
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from . import checkpoints, drain, placement
from .cache import Cache
from .nodes import Nodes
from .peers import PeerPlan
from .routes import Routes
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

_RUN_TIMEOUT = 120.0     # RunSFC compiles NFs (about a second each when not cached)
_CALL_TIMEOUT = 5.0
_RUNS_PER_NODE = 2       # Run/Scale/StopSFC calls in flight to one node; more wait or go elsewhere
_SUSPECT_S = 30.0        # a node whose RunSFC timed out or failed gets no new SFC this long
                         # while another node can take it
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0
# a pass is a cache read, or RunSFC calls that compile NFs (seconds)
_PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)

_NEW_NODE_WAIT_S = 3.0   # a spread SFC's first placement waits this long for nodes just registered
_SCALE_IN_AFTER_S = 10.0  # autoscaling: no scale-in sooner than this after a change
_SCALE_IN_SLACK = 0.8    # ... nor unless the fewer instances would stay under 80% of target


class Reconciler:
    def __init__(self, store: Store, cache: Cache, keys: Keys, identity: str, *,
                 ttl: int = 2, resync_s: float = 2.0, workers: int = 8,
                 run_timeout: float = _RUN_TIMEOUT):
        if workers < 1:
            raise ValueError("workers: at least 1")
        if not run_timeout > 0:
            raise ValueError("run_timeout: must be > 0")
        self.store, self.cache, self.keys, self.identity = store, cache, keys, identity
        self.ttl, self.resync_s, self.workers = ttl, resync_s, workers
        self.run_timeout = run_timeout
        self.election: Election | None = None
        self.leading = asyncio.Event()      # set while this controller leads
        self.passes = collections.Counter()  # reconcile passes by result (metrics)
        self.pass_seconds = Histogram("serpens_controller_reconcile_seconds",
                                      "Duration of one SFC's reconcile pass",
                                      buckets=_PASS_BUCKETS, registry=None)
        self.pushes_before = 0              # route pushes of past terms (metrics)
        self.agents = Stubs(pb_grpc.AgentStub)
        self.queue: WorkQueue | None = None  # the term's; None while not leading
        self.nodes: Nodes | None = None
        self.routes: Routes | None = None   # the term's routes through the gateway
        # sfc -> node it was last placed on (this term), set before RunSFC is sent: a node
        # with calls in flight counts them as load
        self._placement: dict[str, str] = {}
        self._spread: dict[str, tuple[str, ...]] = {}  # routed sfc -> the nodes serving it
        self._peers_sent: dict = {}  # (sfc, node) -> the peers last given (controller/peers.py)
        self._unanswered_since: dict[str, float] = {}  # node registered, not answered yet
        self._gateway_names: set[str] = set()
        # a gateway was registered since this process started: a routed SFC's flows may be
        # pinned and their per-flow state must move behind a gateway's hold (_hand_over)
        self._gateway_seen = False
        # routed sfc -> nodes that ran it before it was routed (run again with its tag)
        self._unrouted: dict[str, set[str]] = {}
        # sfc -> ((incarnation, generation), its parsed spec or None): routed SFCs' spec.vni,
        # match, tag and placement, parsed once per generation
        self._specs: dict[str, tuple[tuple[int, int], SFCSpec | None]] = {}
        self._runs: dict[str, int] = {}          # node -> Run/Scale/StopSFC calls in flight
        self._suspect: dict[str, float] = {}     # node -> loop time until it is avoided
        # SFCs left Pending for want of a node (busy ones included): queued again whenever a
        # RunSFC call ends, rather than only after their back-off
        self._unplaced_names: set[str] = set()
        # sfc -> (spec text, why a node refused it), the last refused spec only (a deleted
        # and re-applied SFC starts at generation 1 again, so the text says "the same spec")
        self._failed: dict[str, tuple[str, str]] = {}
        self._reported = Reported()   # malformed records, logged once per revision
        self._decoded: dict[str, tuple[int, object]] = {}  # key -> (revision, record|error)
        self._deposed: NotLeader | None = None  # a worker's write found the term over
        self._lost: dict[str, checkpoints.LostNodes] = {}  # sfc -> its lost nodes' restores
        self._unrestored: dict[str, tuple[str, str]] = {}  # sfc -> (lost node, why not restored)
        self._move_outcomes: dict[str, drain.MoveOutcome] = {}  # sfc -> its MoveSFC's sources
        self._deposed_event = asyncio.Event()

    # ---- leadership -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event):
        """Campaign, lead until the term ends, campaign again; until `stop` is set."""
        backoff = _BACKOFF_FIRST
        while not stop.is_set():
            self.election = Election(self.store, self.keys.leader, self.identity, self.ttl)
            try:
                if not await _until(self.election.campaign(), stop):
                    break
                log.info("%s leads (term %d)", self.identity, self.election.leader_revision)
                self.leading.set()
                await self._lead(stop)
                backoff = _BACKOFF_FIRST
            except (StoreError, NotLeader) as e:
                log.warning("%s: %s; campaigning again", self.identity, e)
                await sleep_unless(stop, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:  # noqa: BLE001 - a bug must not end the control loop for good
                log.exception("%s: reconciler failed; campaigning again", self.identity)
                await sleep_unless(stop, _BACKOFF_MAX)
            finally:
                if self.leading.is_set():
                    log.info("%s no longer leads", self.identity)
                self.leading.clear()
                # etcd away: the lease then lapses by itself within its TTL
                with contextlib.suppress(StoreError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.election.resign(), 2.0)
        await self.close()

    async def close(self):
        await self.agents.close()

    def route_pushes(self) -> int:
        """Route sets pushed to gateways (accepted), this process's terms together."""
        routes = self.routes
        return self.pushes_before + (routes.pushes if routes is not None else 0)

    async def _lead(self, stop: asyncio.Event):
        lost = self.election.lease.lost
        events = self.cache.subscribe()
        self.queue = WorkQueue(_BACKOFF_FIRST, _BACKOFF_MAX)
        self.nodes = Nodes(self.agents, self._nodes_changed, period=self.resync_s,
                           timeout=_CALL_TIMEOUT)
        self._placement, self._runs, self._suspect, self._deposed = {}, {}, {}, None
        self._spread, self._gateway_names, self._unrouted = {}, set(), {}
        self.routes = Routes(self.election, self.keys, self.cache)
        self._unplaced_names = set()
        self._lost, self._move_outcomes, self._unrestored = {}, {}, {}
        self._deposed_event.clear()
        workers: list[asyncio.Task] = []
        try:
            if not await _until(self.cache.wait_ready(), stop, lost):
                return
            self.nodes.update(self._node_records())
            self.routes.load(self._records("route", self.keys.routes))
            registered = self._gateway_records()
            self._gateway_names = set(registered)
            self._gateway_seen |= bool(registered)
            self.routes.gateways(registered)  # each gets this term's routes at once
            if not await _until(self.nodes.polled(), stop, lost):
                return
            self._queue_all(resync=False)
            loop = asyncio.get_running_loop()
            workers = [loop.create_task(self._work(), name=f"reconcile-{i}")
                       for i in range(self.workers)]
            resync_at = loop.time() + self.resync_s
            while not stop.is_set() and not lost.is_set():
                if self._deposed is not None:
                    raise self._deposed
                for task in workers:
                    if task.done():
                        task.result()  # a worker's bug: lead again from scratch
                getter = asyncio.ensure_future(events.get())
                await _first_of(getter, lost.wait(), stop.wait(), self._deposed_event.wait(),
                                timeout=max(0.0, resync_at - loop.time()))
                if getter.done():
                    self._on_event(getter.result())
                    while not events.empty():
                        self._on_event(events.get_nowait())
                if loop.time() >= resync_at:
                    self.nodes.update(self._node_records())
                    self._queue_all(resync=True)
                    resync_at = loop.time() + self.resync_s
        finally:
            self.cache.unsubscribe(events)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.nodes.close()
            await self.routes.close()
            self.queue.close()
            self.pushes_before += self.routes.pushes
            self.queue = self.nodes = self.routes = None

    def _on_event(self, ev):
        if ev.type == RESET:  # a re-list: anything may have changed
            self._decoded.clear()
            self.nodes.update(self._node_records())
            self.routes.gateways(self._gateway_records())
            self._queue_all(resync=False)
            return
        if ev.type == DELETE:
            self._decoded.pop(ev.key, None)
            self._reported.forget(ev.key)
        where = self.keys.split(ev.key)
        if where is None:
            return  # the leader key (lease.lost tells when the term ends), or a stray key
        kind, name = where
        if kind == "sfc":
            self.queue.add(name)
        elif kind == "gateway":  # pushed to when it comes (again) or reports an older term
            registered = self._gateway_records()
            self._gateway_seen |= bool(registered)
            self.routes.gateways(registered)
            if set(registered) != self._gateway_names:  # SFCs may be routed now
                self._gateway_names = set(registered)
                self._queue_all(resync=False)
        elif kind == "cordon":  # drain.py: its SFCs leave it (or it takes placements again)
            self._queue_all(resync=False)
        elif kind == "move":
            self.queue.add(name)
        elif kind == "nf":  # an SFC waiting for its NF, or naming one that was deleted
            for sfc, record in self._records("sfc", self.keys.sfcs).items():
                if name in record.nfs:
                    self.queue.add(sfc)
        elif kind == "node":
            record = self._record("node", ev.key, self.cache.get(ev.key)) if ev.type == PUT \
                else None
            if record is None:
                self.nodes.remove(name)
                return
            self.nodes.put(record)
            for sfc in record.load.sfcs:  # its load report moves the autoscaled ones
                sfc_record = self._record("sfc", self.keys.sfc(sfc),
                                          self.cache.get(self.keys.sfc(sfc)))
                if sfc_record is not None and sfc_record.scale.target_pps:
                    self.queue.add(sfc)
        # status: this leader's own writes

    def _nodes_changed(self, names: set[str] | None):
        if self.queue is None:
            return
        if names is None:
            self._queue_all(resync=False)
        else:
            for name in names:
                self.queue.add(name)

    def _queue_all(self, resync: bool):
        """Queue every SFC there is a trace of: a record, a status, a copy on a node. A
        resync leaves alone the keys being processed (their worker sees the same state) and
        those waiting out a back-off."""
        names = {k[len(self.keys.sfcs):] for k in self.cache.list(self.keys.sfcs)}
        names |= {k[len(self.keys.statuses):] for k in self.cache.list(self.keys.statuses)}
        names |= {k[len(self.keys.routes):] for k in self.cache.list(self.keys.routes)}
        for view in self.nodes.views.values():
            names |= set(view)
        for name in sorted(names):
            if not (resync and (name in self.queue.processing or
                                self.queue.backing_off(name))):
                self.queue.add(name)

    async def _work(self):
        """One worker: take an SFC, reconcile it, forget its back-off or retry it."""
        while True:
            name = await self.queue.get()
            started, result = time.perf_counter(), "error"
            try:
                ok = await self.reconcile(name)
                result = "done" if ok else "retry"
            except NotLeader as e:
                self._deposed = e  # the term is over: _lead campaigns again
                self._deposed_event.set()
                self.queue.done(name)
                return
            except StoreError as e:
                log.warning("sfc %s: %s; retrying", name, e)
                ok = False
            except Exception:  # noqa: BLE001 - a bug costs this SFC a retry, not the others
                log.exception("sfc %s: reconcile failed; retrying", name)
                ok = False
            finally:
                self.passes[result] += 1
                self.pass_seconds.observe(time.perf_counter() - started)
            if ok:
                self.queue.forget(name)
            else:
                self.queue.retry(name)  # before done(): a re-add meanwhile waits the back-off
            self.queue.done(name)

    # ---- records, from the cache ----------------------------------------------------------

    def _record(self, kind: str, key: str, item: Item | None):
        """The decoded record of `kind` stored as `item` under `key` (decoded once per
        revision), or None if absent or malformed (reported once per revision)."""
        try:
            return self._decode(kind, key, item)
        except MalformedRecord:
            return None

    def _decode(self, kind: str, key: str, item: Item | None):
        """As _record, but raising MalformedRecord."""
        if item is None:
            return None
        hit = self._decoded.get(key)
        if hit is None or hit[0] != item.mod_revision:
            try:
                record = decode(kind, item.value, self.keys.split(key)[1])
            except MalformedRecord as e:
                self._reported(key, item.mod_revision, e)
                record = e
            hit = self._decoded[key] = (item.mod_revision, record)
        if isinstance(hit[1], MalformedRecord):
            raise hit[1]
        return hit[1]

    def _records(self, kind: str, prefix: str) -> dict:
        return {key[len(prefix):]: record for key, item in self.cache.list(prefix).items()
                if (record := self._record(kind, key, item)) is not None}

    def _node_records(self) -> dict[str, NodeRecord]:
        return self._records("node", self.keys.nodes)

    def _gateway_records(self) -> dict[str, tuple[GatewayRecord, int]]:
        """name -> (record, its key's create revision: a new one is a gateway registered
        again)."""
        prefix = self.keys.gateways
        return {key[len(prefix):]: (record, item.create_revision)
                for key, item in self.cache.list(prefix).items()
                if (record := self._record("gateway", key, item)) is not None}

    # ---- one SFC --------------------------------------------------------------------------

    async def reconcile(self, name: str) -> bool:
        """Bring SFC `name` where its record says; False if something is left to retry."""
        if not await self.cache.ready():
            raise StoreUnavailable("the controller's copy of etcd is not in sync")
        key, status_key = self.keys.sfc(name), self.keys.status(name)
        item, status_item = self.cache.get(key), self.cache.get(status_key)
        # A malformed status is as good as none: the next write replaces it.
        status = self._record("status", status_key, status_item)
        if item is None:
            return await self._gone(name, status_item)
        try:
            record = self._decode("sfc", key, item)
        except MalformedRecord as e:
            return await self._malformed(name, e, status, status_item)
        record, ok = await self._autoscale(record, item, status)
        spec = await self._routed_spec(record, item)
        if spec is not None:
            return await self._reconcile_routed(record, item, spec, status, status_item) and ok
        if (record.doc.get("spec") or {}).get("output") == OUTPUT_GATEWAY:
            # no node could run it yet (agents refuse it without a VXLAN route): it waits,
            # and runs when a gateway and an underlay node are there (their events queue it)
            return await self._waiting(name, "waiting for a gateway and a node with an "
                                             "underlay (spec.output: gateway)",
                                       status, status_item) and False
        refused: dict[str, str] = {}  # node -> why it cannot run it beside its SFCs
        node = self._place(name, status)
        while node is not None:
            self._placement[name] = node  # its load from now on, the call in flight included
            try:
                restores = self._restores(record, status, [node])  # checkpoints.py
                new, done = await self._converge(
                    record, item, node, ckpt=self._checkpoint_fields(
                        record, node, status, restores.get(node)))
                self._not_restored(name, restores, [node])
                break
            except _Refused as e:  # cannot take it, busy, or failed to answer: the next one
                refused[node] = str(e)
                if name in self.nodes.views.get(node, {}):  # an update it cannot take: stay
                    node = None
                    break
                node = self._place(name, status, exclude=refused)
        self._unplaced_names.discard(name)
        if node is None:
            self._unplaced_names.add(name)
            new, done = self._unplaced(name, refused)
            node = new.node or None  # an older generation still running stays
        if node is None:
            self._placement.pop(name, None)
        else:
            self._placement[name] = node
        ok &= done
        ok &= await self._stop_strays(name, {node} if node else ())
        return await self._write_status(name, new, status, status_item) and ok

    async def _gone(self, name: str, status_item: Item | None) -> bool:
        """The SFC was deleted: stopped wherever it runs, and its status goes."""
        self._placement.pop(name, None)
        self._spread.pop(name, None)
        self._specs.pop(name, None)
        self._unrouted.pop(name, None)
        self._failed.pop(name, None)
        self._lost.pop(name, None)
        self._move_outcomes.pop(name, None)
        self._unrestored.pop(name, None)
        self._unplaced_names.discard(name)
        for key in [k for k in self._peers_sent if k[0] == name]:
            del self._peers_sent[key]
        route_item = self.cache.get(self.keys.route(name))
        # the gateway stops sending it frames before its servers stop
        await self.routes.delete(name, route_item.mod_revision if route_item else 0,
                                 asyncio.get_running_loop().time())
        ok = await self._stop_strays(name, ())
        move_item = self.cache.get(self.keys.move(name))  # a MoveSFC of it: moot now
        if move_item is not None:
            with contextlib.suppress(Conflict):
                self.cache.wrote(await self.election.delete_fenced(self.keys.move(name),
                                                                   move_item.mod_revision))
        if status_item is not None:
            with contextlib.suppress(Conflict):
                self.cache.wrote(await self.election.delete_fenced(
                    self.keys.status(name), status_item.mod_revision))
        return ok

    async def _waiting(self, name: str, why: str, status, status_item) -> bool:
        """Pending for `why`, no agent called: a copy of an older generation keeps running
        where it runs."""
        self._unplaced_names.discard(name)
        keep = next((n for n, view in sorted(self.nodes.views.items()) if name in view), "")
        return await self._write_status(name, SFCStatus("Pending", why, node=keep), status,
                                        status_item)

    async def _malformed(self, name: str, why: MalformedRecord, status, status_item) -> bool:
        """Skipped, not stopped: a copy a node runs keeps running until the record is
        written again or deleted."""
        keep = next((n for n, view in sorted(self.nodes.views.items()) if name in view), "")
        ok = await self._stop_strays(name, {keep} if keep else ())
        new = SFCStatus("Failed", f"malformed record {self.keys.sfc(name)} skipped: {why}; "
                        "apply the SFC again or delete it", node=keep)
        return await self._write_status(name, new, status, status_item) and ok

    # ---- routed SFCs: served through the gateway, over one or several nodes --------------

    def _gateway(self) -> GatewayRecord | None:
        """The gateway whose underlay address routed SFCs send their packets back to (the
        first registered, by name)."""
        registered = self._gateway_records()
        return registered[min(registered)][0] if registered else None

    def _underlay_nodes(self) -> list[str]:
        """Live nodes with an underlay address (a routed SFC runs only there)."""
        return sorted(node for node in self.nodes.views
                      if (r := self.nodes.records.get(node)) is not None and r.underlay)

    def _just_registered(self) -> list[str]:
        """Nodes with an underlay whose record appeared less than _NEW_NODE_WAIT_S ago and
        whose agent has not answered yet. A spread SFC's first placement waits for them: the
        gateway pins a flow to the servers there are when it starts, so a server joining a
        moment later would get only the flows that start after it (serpens up starts the
        agents and applies at once)."""
        now = asyncio.get_running_loop().time()
        waiting = []
        for node, record in self.nodes.records.items():
            if node in self.nodes.views or not record.underlay:
                continue
            if now - self._unanswered_since.setdefault(node, now) < _NEW_NODE_WAIT_S:
                waiting.append(node)
        return sorted(waiting)

    async def _routed_spec(self, record: SFCRecord, item: Item) -> SFCSpec | None:
        """The parsed spec of an SFC served through the gateway, None for one served as
        before (on one node, from its ports). An SFC is routed once it has a route (for its
        life: its tag is in the route record and on its nodes); it gets one when a gateway
        is registered and a live node has an underlay address, and it is to be run (not
        running its generation yet), or its spec spreads it over several nodes. (One that
        runs before a gateway registers is left as it runs: routing it would restart it.)"""
        name = record.name
        routed = name in self.routes.records
        if not routed and not (self._gateway_records() and self._underlay_nodes()):
            return None
        key = (item.create_revision, record.generation)
        hit = self._specs.get(name)
        if hit is None or hit[0] != key:
            try:  # off the event loop, as the API parses it (the lease shares the loop)
                spec = await asyncio.to_thread(parse_sfc, record.spec, allow_source=False)
            except SpecError as e:  # the API checked it: a record written by other means
                log.warning("sfc %s: its spec does not parse (%s); not routed", name, e)
                spec = None
            hit = self._specs[name] = (key, spec)
        spec = hit[1]
        if not routed and spec is not None and spec.spread == 1 and any(
                (s := view.get(name)) is not None and s.generation == record.generation and
                s.incarnation == item.create_revision for view in self.nodes.views.values()):
            return None
        return spec

    def _shares(self, name: str, replicas: int, spread: int, status: SFCStatus | None,
                exclude) -> dict[str, int]:
        """node -> replicas of a routed SFC (placement.py): over live underlay nodes not in
        `exclude`, those serving it first (the first of them first), then the least loaded,
        preferring nodes neither busy nor suspect."""
        live = [n for n in self._underlay_nodes() if n not in exclude]
        views = self.nodes.views
        first = status.node if status else ""
        serving = set(self._spread.get(name, ())) | {n for n in live if name in views[n]}
        if status:
            serving |= {n for n, _ in status.nodes} | {first}
        joined = status.joined if status else ()

        def rank(node):  # (scale-in: the servers that joined last leave first, drain.py)
            return (node != first or node not in serving, node not in serving,
                    drain.rank_joined(joined, node) if node in serving else 0,
                    not (name in views[node] or self._usable(node)), self._load(node, name),
                    node)
        ordered = sorted(live, key=rank)
        return placement.split(replicas, [(n, self._free_processes(n, name)) for n in ordered],
                               spread)

    async def _reconcile_routed(self, record: SFCRecord, item: Item, spec: SFCSpec,
                                status: SFCStatus | None, status_item: Item | None) -> bool:
        """Run the SFC on the nodes its placement gives (each its share of the replicas,
        with its VXLAN tag and the gateway's address), write its route (servers: the nodes
        that run it, weighted by their replicas), stop it elsewhere, and write its status."""
        name = record.name
        loop = asyncio.get_running_loop()
        route_item = self.cache.get(self.keys.route(name))
        revision = route_item.mod_revision if route_item else 0
        # spec.match as the spec parser normalised it (proto numbers, [lo, hi] port ranges)
        rules = tuple({k: list(v) if isinstance(v, tuple) else v for k, v in rule.items()}
                      for rule in spec.match)
        route = RouteRecord(sfc=name, tag=self.routes.tag(name), vni=spec.vni,
                            match=rules, vlan=spec.tag or 0)
        why = self.routes.admit(route)
        if why is not None:  # never a set the gateway must refuse whole: this one waits
            return await self._waiting(name, why, status, status_item) and False
        if name not in self.routes.records:  # routed from now: copies running unrouted run again
            self._unrouted[name] = {n for n, view in self.nodes.views.items() if name in view}
        try:
            if name not in self.routes.records:  # the tag is stored before any node knows it
                revision = await self.routes.put(route, revision, loop.time())
        except Conflict:
            return False  # written meanwhile: again with what is stored now
        if spec.spread > 1 and not any(self._copy_of(name, n, item) is not None
                                       for n in self.nodes.views) and \
                (new := self._just_registered()):
            return await self._waiting(name, f"waiting for node(s) {', '.join(new)} to "
                                             "answer (registered moments ago)",
                                       status, status_item) and False
        gateway = self._gateway()
        vxlan = None if gateway is None else pb.VxlanRoute(
            tag=route.tag, vni=spec.vni, gateway_ip=gateway.underlay.ip,
            gateway_mac=gateway.underlay.mac)
        refused: dict[str, str] = {}   # node -> why it cannot run it now
        outcome: dict[str, tuple[SFCStatus, bool]] = {}
        asked: dict[str, int] = {}     # node -> replicas it was brought to
        shares: dict[str, int] = {}
        unrouted = self._unrouted.get(name, set())
        move = self._record("move", self.keys.move(name), self.cache.get(self.keys.move(name)))
        away, waits, stuck = self._away(move, {  # drain.py: nodes its servers leave
            n for n in self.nodes.views if self._copy_of(name, n, item) is not None})
        while True:  # until no node refuses (then placed again without it)
            shares = self._shares(name, record.scale.replicas, spec.spread, status,
                                  set(refused) | away)
            if not shares:
                break
            self._placement[name], self._spread[name] = next(iter(shares)), tuple(shares)
            todo = {node: n for node, n in shares.items() if asked.get(node) != n}
            # servers lost or leaving it go from the route before new ones are run (a
            # RunSFC may take a compile's time)
            current = self.routes.records.get(name)
            if current is not None:
                staying = tuple(s for s in current.servers if s.node in self.nodes.views and
                                (s.node in shares or s.node in refused or
                                 self._copy_of(name, s.node, item) is not None))  # drain.py
                if staying != current.servers:
                    try:
                        revision = await self.routes.put(replace(current, servers=staying),
                                                         revision, loop.time())
                    except Conflict:
                        return False
            peers = PeerPlan(self._peers_sent, name, shares, self.nodes.records,  # xstate
                             self.nodes.views, item.create_revision)
            restores = self._restores(record, status, list(shares))  # checkpoints.py
            todo, waiting = peers.first_alone(todo)  # xstate: one node first, then seed
            results = await asyncio.gather(*(
                self._converge(record, item, node, n, routed=True, vxlan=vxlan,
                               rerun=node in unrouted or peers.changed(node), peers=peers,
                               ckpt=self._checkpoint_fields(  # checkpoints.py
                                   record, node, status, restores.get(node)))
                for node, n in todo.items()), return_exceptions=True)
            again = False
            for (node, n), result in zip(todo.items(), results):
                if isinstance(result, _Refused):
                    refused[node] = str(result)
                    again = True
                elif isinstance(result, BaseException):
                    raise result
                else:
                    outcome[node], asked[node] = result, n
                    if result[0].phase in ("Running", "Degraded"):
                        unrouted.discard(node)
            if not again and not waiting:
                break
        if not unrouted:
            self._unrouted.pop(name, None)
        if shares and not refused:  # (a node refused: it may take the place next time)
            self._not_restored(name, restores, list(shares))  # checkpoints.py
        # a node may have left while the others' calls were in flight
        outcome = {node: outcome[node] for node in shares
                   if node in outcome and node in self.nodes.records}
        weight = {node: max(1, shares[node]) for node in outcome}
        decided_at = loop.time()
        # nodes refusing an update of what they run keep running it (as on one node), and
        # serving it: a route never loses a node that runs a copy
        keep = set(shares)
        for node, why in refused.items():
            copy = self.nodes.views.get(node, {}).get(name)
            if copy is None or copy.incarnation != item.create_revision or \
                    node not in self.nodes.records:
                continue
            keep.add(node)
            if node not in outcome:
                outcome[node] = (SFCStatus("Degraded", f"node {node}: {why}", node=node,
                                           generation=copy.generation,
                                           instances=copy.instances), False)
                weight[node] = max(1, copy.instances)
        underlay = {n: self.nodes.records[n].underlay for n in outcome}
        route = replace(route, servers=tuple(
            RouteServer(node, underlay[node].ip, underlay[node].mac, weight[node])
            for node, (st, _) in sorted(outcome.items())
            if st.phase in ("Running", "Degraded")))
        # servers leaving it (not lost) hand their flows and state over first (drain.py)
        leaving = sorted(n for n in self.nodes.views if n not in outcome and
                         self._copy_of(name, n, item) is not None)
        unmoved: dict[str, str] = {}   # node -> why its flows could not move (it stays)
        if leaving and not route.servers:  # no server to hand them to: they keep serving
            previous = self.routes.records.get(name)
            route = replace(route, servers=tuple(
                s for s in (previous.servers if previous else ()) if s.node in leaving))
            unmoved = {n: "no other node runs it now" for n in leaving}
            keep |= set(leaving)
        try:
            if leaving and not unmoved:
                revision, unmoved = await self._hand_over(name, route, revision, decided_at,
                                                          leaving)
                keep |= set(unmoved)
                if move is not None:  # drain.py: what became of the move's sources' flows
                    outcome_of = self._move_outcomes.get(name)
                    if outcome_of is None or outcome_of.asked_at != move.asked_at:
                        outcome_of = self._move_outcomes[name] = drain.MoveOutcome(move.asked_at)
                    outcome_of.note(leaving, unmoved)
            else:
                await self.routes.put(route, revision, decided_at)
        except Conflict:
            return False
        ok = await self._stop_strays(name, keep, peers=peers if shares else None)
        self._unplaced_names.discard(name)
        if not outcome:
            self._unplaced_names.add(name)
            self._placement.pop(name, None)
            self._spread.pop(name, None)
            new, _ = self._unplaced(name, refused)
            if not self._underlay_nodes():
                new = replace(new, message="served through the gateway, and no live node "
                                           "has an underlay address")
            await self._write_status(name, new, status, status_item)
            return False
        statuses = [st for st, _ in outcome.values()]
        nodes = sorted(outcome)
        phase = placement.worst_phase(st.phase for st in statuses)
        messages = [st.message for st in statuses if st.message]
        if unmoved:  # it serves their flows where they are, retried with back-off
            phase = placement.worst_phase((phase, "Degraded"))
            messages += [f"node {n}: flows not moved: {why}" for n, why in sorted(unmoved.items())]
            ok = False
        if waits:
            messages.append(waits)
        if stuck:  # it stays where it is, saying so (drain --wait ends on it)
            messages.append(stuck)
            phase = placement.worst_phase((phase, "Degraded"))
        instances, asked = sum(st.instances for st in statuses), record.scale.replicas
        if instances < asked and phase in ("Running", "Degraded"):
            # it runs, on fewer instances than asked (the pools hold no more, or a node
            # refused): said so, not hidden behind Running
            phase = "Degraded"
            if shares and sum(shares.values()) < asked:
                messages.insert(0, f"{sum(shares.values())} of {asked} replicas placed: the "
                                   f"pools of {', '.join(sorted(shares))} hold no more")
        served = {s.node for s in self.routes.records[name].servers} \
            if name in self.routes.records else set()
        moved = move is not None and served == {move.node} and not unmoved
        move_error = status.move_error if status else ""
        if moved:  # drain.py: flows of its sources that did not move, said
            outcome_of = self._move_outcomes.pop(name, None)
            if outcome_of is None or outcome_of.asked_at != move.asked_at:
                outcome_of = drain.MoveOutcome(move.asked_at)
            move_error = outcome_of.error(move.sources, move.node, self.nodes.views)
        new = SFCStatus(
            phase, "; ".join(messages),
            node=next(iter(outcome)), generation=min(st.generation for st in statuses),
            instances=instances,
            nodes=tuple((n, outcome[n][0].instances) for n in nodes) if len(nodes) > 1 else (),
            joined=drain.joined_order(status.joined if status else (), served),
            moving_to=move.node if move is not None and not moved else "",
            moves=(status.moves if status else 0) + moved, stuck=stuck, move_error=move_error,
            **self._restore_said(name, checkpoints.spread_fields(  # checkpoints.py
                next(iter(outcome)), {n: st for n, (st, _) in outcome.items()})))
        done = all(d for _, d in outcome.values())
        written = await self._write_status(name, new, status, status_item)
        if moved and written:  # MoveSFC done (and counted): its record goes (fenced)
            with contextlib.suppress(Conflict):
                self.cache.wrote(await self.election.delete_fenced(
                    self.keys.move(name), self.cache.get(self.keys.move(name)).mod_revision))
        return written and ok and done

    # ---- servers leaving an SFC with their flows (controller/drain.py) --------------------

    def _cordoned(self) -> set[str]:
        """Nodes cordoned by DrainNode: no new placement, their SFCs move off."""
        return set(self._records("cordon", self.keys.cordons))

    def _away(self, move: MoveRecord | None,
              serving: set[str]) -> tuple[set[str], str, str]:
        """(nodes a routed SFC's servers leave and no new server joins: the cordoned ones, or
        with a MoveSFC every node but its target; why a move waits; why its servers on
        cordoned nodes cannot leave, when no other node could take it: then those of
        `serving` stay, and a cordoned node it does not run on still takes none of it)."""
        underlay, cordoned = set(self._underlay_nodes()), self._cordoned()
        if move is not None:
            if move.node in cordoned:
                return cordoned & underlay, f"move to {move.node} waits: it is cordoned", ""
            if move.node not in underlay:
                return cordoned & underlay, \
                    f"move to {move.node} waits: it is not a live node with an underlay", ""
            return underlay - {move.node}, "", ""
        away = cordoned & underlay
        stay = away & serving
        if stay and not underlay - away:
            return away - stay, "", f"cordoned {', '.join(sorted(stay))} cannot be " \
                                    "drained: no other live node with an underlay can take it"
        return away, "", ""

    def _copy_of(self, name: str, node: str, item: Item) -> pb.AgentSFC | None:
        """What live `node` runs of this incarnation of SFC `name` (None: nothing)."""
        copy = self.nodes.views.get(node, {}).get(name)
        if copy is None or copy.incarnation != item.create_revision or \
                node not in self.nodes.records:
            return None
        return copy

    def _endpoint(self, node: str) -> drain.Endpoint:
        record = self.nodes.records[node]
        return drain.Endpoint(node, record.address, record.underlay.ip if record.underlay else "")

    async def _hand_over(self, name: str, route: RouteRecord, revision: int,
                         decided_at: float, leaving: list[str]) -> tuple[int, dict]:
        """Route `route` (the servers staying, all running it) and hand the flows and state
        of each `leaving` node to one of them (drain.py's sequence); (the route's revision,
        node -> why its flows could not move: it stays in the route, serving them)."""
        loop = asyncio.get_running_loop()
        staying = {s.node: s.weight for s in route.servers}
        previous = self.routes.records.get(name)
        routed = {s.node: s for s in previous.servers} if previous is not None else {}
        gateway = self._gateway_records()
        self._gateway_seen |= bool(gateway)
        gateway = gateway[min(gateway)][0].address if gateway else None
        # the targets join the route before any flow moves; the leaving still serve theirs
        with_leaving = replace(route, servers=tuple(sorted(
            route.servers + tuple(routed[n] for n in leaving if n in routed),
            key=lambda s: s.node)))
        revision = await self.routes.put(with_leaving, revision, decided_at)
        unmoved: dict = {}
        for node in leaving:
            target = drain.target_for(node, staying)
            source, to = self._endpoint(node), self._endpoint(target)
            try:
                if node in routed:
                    if gateway is None and self._gateway_seen:
                        raise drain.HandOverFailed(
                            "no gateway is registered (it went away): its flows' per-flow "
                            "state moves only behind a gateway's hold; waiting for one")
                    if gateway is not None:  # (none ever: no flow to hold, none pinned)
                        if not await self.routes.settled(_CALL_TIMEOUT):
                            raise drain.HandOverFailed("the gateway has not taken the route "
                                                       f"with {target} yet")
                        await drain.move_off(gateway, name, source, to)
                    with_leaving = replace(with_leaving, servers=tuple(
                        s for s in with_leaving.servers if s.node != node))
                    revision = await self.routes.put(with_leaving, revision, loop.time())
                    await self.routes.settled(_CALL_TIMEOUT)  # no new flow goes there now
                stub = self.agents[source.address]
                await drain.stop_returning(
                    lambda request, timeout: _agent_call(stub.StopSFC(request, timeout=timeout)),
                    name, node, to)
                self.nodes.ran(node, name, None)
            except drain.HandOverFailed as e:
                log.warning("sfc %s: node %s keeps its flows: %s", name, node, e)
                unmoved[node] = e   # (str() in the status; drain.MoveOutcome reads it)
        return revision, unmoved

    async def _autoscale(self, record: SFCRecord, item: Item,
                         status: SFCStatus | None) -> tuple[SFCRecord, bool]:
        """The record, with replicas set from the reported load when its spec asks for it
        (scale.target_pps): out at once, in only after a quiet while with room to spare."""
        name, scale = record.name, record.scale
        node = status.node if status else ""
        # a routed SFC served by several nodes: the sum of their loads
        nodes = [n for n, _ in status.nodes] if status and status.nodes else [node]
        loads = [load for n in nodes if (r := self.nodes.records.get(n)) is not None
                 and (load := r.load.sfcs.get(name)) is not None]
        if not scale.target_pps or scale.target_pps <= 0 or not loads:
            return record, True
        in_pps, replicas = sum(load.in_pps for load in loads), scale.replicas
        want = min(max(math.ceil(in_pps / scale.target_pps), scale.min), scale.max)
        # a routed SFC spills over to other nodes (placement.py): no one node's room bounds it
        free = None if name in self.routes.records else self._free_processes(node, name)
        room = None if free is None else max(free, replicas, scale.min)
        if room is not None and want > room:
            log.info("autoscaling sfc %s: %d replicas wanted, node %s has pool processes "
                     "for %d", name, want, node, room)
            want = room
        if want < replicas:
            recent = time.time() - scale.changed_at < _SCALE_IN_AFTER_S
            if recent or in_pps > _SCALE_IN_SLACK * scale.target_pps * want:
                return record, True
        if want == replicas:
            return record, True
        log.info("autoscaling sfc %s: %d -> %d replicas (%.0f pps in, target %.0f each)",
                 name, replicas, want, in_pps, scale.target_pps)
        scaled = replace(record, scale=replace(scale, replicas=want, changed_at=time.time()))
        try:
            self.cache.wrote(await self.election.put_fenced(
                self.keys.sfc(name), scaled.encode(), item.mod_revision))
        except Conflict:
            return record, False  # changed meanwhile (an apply, a Scale): again after it
        return scaled, True

    def _free_processes(self, node: str, name: str) -> int | None:
        """Pool processes of `node` the other SFCs there leave to `name` (None: unknown)."""
        record, view = self.nodes.records.get(node), self.nodes.views.get(node)
        if record is None or not record.pool or view is None:
            return None
        return max(0, record.pool - sum(max(s.replicas, s.instances)
                                        for other, s in view.items() if other != name))

    def _room_now(self, node: str, name: str, running: pb.AgentSFC) -> bool:
        """`running` is short of instances for want of pool processes, and `node`'s pool now
        has them (another SFC left): a ScaleSFC starts them (the agent does not by itself)."""
        if running.phase != "Running" or running.instances >= running.replicas:
            return False  # (a crashing SFC restarts its instances with its own back-off)
        free = self._free_processes(node, name)
        return free is not None and free >= running.replicas

    def _place(self, name: str, status: SFCStatus | None, exclude=()) -> str | None:
        """Where `name` was placed if that node lives (and, unless it runs `name` there,
        is neither busy nor suspect), else a node that runs it, else the live node running
        (or given) the fewest SFCs, preferring nodes neither busy nor suspect; never a node
        in `exclude`."""
        live = {node: view for node, view in self.nodes.views.items() if node not in exclude}
        for current in (self._placement.get(name), status.node if status else None):
            if current in live and (name in live[current] or self._usable(current)):
                return current
        for node, view in sorted(live.items()):
            if name in view:
                return node
        fresh = [node for node in live if node not in self._cordoned()]  # drain.py
        if not fresh:
            return None

        def load(node):
            return not self._usable(node), self._load(node, name), node
        return min(fresh, key=load)

    def _load(self, node: str, name: str) -> int:
        """SFCs other than `name` that `node` runs or was given (and not yet runs)."""
        others = set(self.nodes.views.get(node, ())) | \
            {s for s, n in self._placement.items() if n == node} | \
            {s for s, nodes in self._spread.items() if node in nodes}
        return len(others - {name})

    def _usable(self, node: str) -> bool:
        """Free for one more RunSFC, and not suspect (its last one timed out or failed)."""
        if self._runs.get(node, 0) >= _RUNS_PER_NODE:
            return False
        until = self._suspect.get(node)
        if until is not None and until <= asyncio.get_running_loop().time():
            del self._suspect[node]
            until = None
        return until is None

    def _unplaced(self, name: str, refused: dict) -> tuple[SFCStatus, bool]:
        """(status, done) of an SFC no node takes now: Pending, kept where an older
        generation of it runs (if anywhere), retried."""
        views = self.nodes.views
        keep = next((node for node, view in sorted(views.items()) if name in view), "")
        cordoned = sorted(set(views) & self._cordoned())  # drain.py: no new placement
        refused = {**refused, **{node: "cordoned (drained)" for node in cordoned
                                 if node not in refused}}
        message = "no node is registered" if not views else \
            "no node can take it now: " + \
            "; ".join(f"{node}: {why}" for node, why in sorted(refused.items()))
        return SFCStatus("Pending", message, node=keep), False

    async def _converge(self, record: SFCRecord, item: Item, node: str,
                        replicas: int | None = None, routed: bool = False,
                        vxlan: pb.VxlanRoute | None = None,
                        rerun: bool = False, peers: PeerPlan | None = None,
                        ckpt: dict | None = None) -> tuple[SFCStatus, bool]:
        """Bring `node` to the record (`replicas` there: default the record's); (status,
        done). A routed SFC is run with `vxlan` (None: no gateway to give it, so it is not
        run), and run again even at the same generation with `rerun` (it was not routed).
        `ckpt`: RunSFC's checkpoint fields (_checkpoint_fields)."""
        name, generation = record.name, record.generation
        replicas = record.scale.replicas if replicas is None else replicas
        incarnation = item.create_revision
        running = self.nodes.views[node].get(name)
        if running is not None and running.incarnation != incarnation:
            running = None  # a copy of an SFC deleted since: replace it
        status = SFCStatus("Running", node=node, generation=generation)
        failed = self._failed.get(name)
        if failed is not None and failed[0] == record.spec and \
                (running is None or running.generation != generation):
            return replace(status, phase="Failed", message=failed[1]), True
        stub = self.agents[self.nodes.records[node].address]
        try:
            if running is not None and vxlan is not None and \
                    running.HasField("vxlan") and running.vxlan != vxlan:
                rerun = True  # e.g. the gateway's address changed: the agent updates it
            ckpt = ckpt or {}
            if running is not None and running.checkpoint_to != \
                    (ckpt["checkpoint_to"].node if "checkpoint_to" in ckpt else ""):
                rerun = True  # its checkpoint peer is new (or gone)
            if running is None or running.generation != generation or rerun:
                if routed and vxlan is None:
                    return replace(status, phase="Pending", message="served through the "
                                   "gateway, and no gateway is registered"), False
                sources = self._sources(record.nfs)
                running = await self._run(node, stub, pb.RunSFCRequest(
                    spec=record.spec, nf_sources=sources, generation=generation,
                    replicas=replicas, incarnation=incarnation, vxlan=vxlan,
                    peers=peers.refs if peers else (),
                    seed_from=peers.seed_for(node) if peers else None, **ckpt))
                if peers is not None:
                    peers.given(node)
                self.nodes.ran(node, name, running)
                if "restore_of" in ckpt:  # restored (or started empty, saying so)
                    if name in self._lost:
                        self._lost[name].settle(ckpt["restore_of"])
                    self._unrestored.pop(name, None)
                log.info("sfc %s generation %d runs on node %s", name, generation, node)
            elif running.replicas != replicas or self._room_now(node, name, running):
                async with self._calling(node, "ScaleSFC"):
                    running = await _agent_call(stub.ScaleSFC(
                        pb.ScaleSFCRequest(name=name, replicas=replicas), timeout=_CALL_TIMEOUT))
                self.nodes.ran(node, name, running)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.info("node %s cannot run sfc %s now: %s", node, name, e.details())
                raise _Refused(e.details()) from None
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("node %s refused sfc %s: %s", node, name, e.details())
                reason = f"node {node}: {e.details()}"
                self._failed[name] = (record.spec, reason)
                return replace(status, phase="Failed", message=reason), True
            message = f"node {node}: {e.code().name}: {e.details()}"
            if _pool_busy(e):  # the agent runs it (or keeps what it ran) with fewer instances
                have = running.instances if running is not None else 0
                return replace(status, phase="Degraded", instances=have, message=(
                    f"node {node}: {have} of {replicas} instances: no free pool process "
                    f"({e.details()})")), False
            if running is not None:  # what runs there keeps running (and serving)
                return replace(status, phase="Degraded", generation=running.generation,
                               instances=running.instances, message=message), False
            return replace(status, phase="Pending", message=message), False
        except _MissingNF as e:
            return replace(status, phase="Pending", message=str(e)), False
        if running.phase in ("Degraded", "Failed") and running.generation == generation:
            # its instances crash: the agent says which NF, how, and what it does about it
            status = replace(status, phase=running.phase, message=f"node {node}: {running.message}")
        elif running.instances < running.replicas:  # instances the pool could not start
            status = replace(status, phase="Degraded", message=(
                f"node {node}: {running.instances} of {running.replicas} instances: "
                f"{running.message or 'no free pool process'}"))
        if running.checkpoint_error and status.phase == "Running":  # checkpoints.py
            status = replace(status, phase="Degraded", message=(
                f"node {node}: checkpoints to {running.checkpoint_to} fail: "
                f"{running.checkpoint_error}"))
        return replace(status, instances=running.instances,
                       **checkpoints.status_fields(running)), True

    def _restores(self, record: SFCRecord, status: SFCStatus | None,
                  order: list[str]) -> dict[str, str]:
        """node -> the lost node whose checkpoint it restores, among `order` (the new
        placement; controller/checkpoints.py): nodes not running the SFC yet take the places
        of the nodes its status names that are no longer live."""
        name = record.name
        if not checkpoints.checkpoint_s(record.doc):
            self._lost.pop(name, None)
            return {}
        lost = self._lost.setdefault(name, checkpoints.LostNodes())
        lost.note(status, self.nodes.views)
        return checkpoints.restorers(lost.pending, order,
                                     {n for n in order if name in self.nodes.views.get(n, {})})

    def _not_restored(self, name: str, restores: dict[str, str], order: list[str]):
        """Lost nodes no node of the placement `order` took the place of (all ran the SFC
        already): settled, the status saying their checkpoint was not restored."""
        lost = self._lost.get(name)
        if lost is None:
            return
        for node in sorted(set(lost.pending) - set(restores.values())):
            log.warning("sfc %s: %s", name, checkpoints.not_restored(node, order))
            lost.settle(node)
            self._unrestored[name] = (node, checkpoints.not_restored(node, order))

    def _restore_said(self, name: str, fields: dict) -> dict:
        """The status's restore fields: the nodes' own, else why a lost node's checkpoint
        was not restored."""
        said = self._unrestored.get(name)
        if said is not None and not fields["restored_of"]:
            fields.update(restored_of=said[0], restored_age_ms=-1, restore=said[1])
        return fields

    def _checkpoint_fields(self, record: SFCRecord, node: str, status: SFCStatus | None,
                           restore_of: str | None = None) -> dict:
        """RunSFC's checkpoint fields for `node` (controller/checkpoints.py): its peer when
        the spec asks for checkpoints, and the restore of lost node `restore_of`'s copy."""
        name = record.name
        if not checkpoints.checkpoint_s(record.doc):
            return {}
        live = sorted(n for n in self.nodes.views if n in self.nodes.records)
        current = dict(status.checkpoint_peers).get(node, status.checkpoint_to) if status else ""
        peer = checkpoints.pick_peer(
            node, current, live, lambda n: (not self._usable(n), self._load(n, name), n))
        fields = {"checkpoint_to": checkpoints.peer_ref(self.nodes, peer)} if peer else {}
        lost = self._lost.get(name)
        if restore_of and lost is not None and restore_of in lost.pending:
            fields["restore_of"] = restore_of
            if lost.pending[restore_of] in live:
                fields["restore_from"] = checkpoints.peer_ref(self.nodes,
                                                              lost.pending[restore_of])
        return fields

    async def _run(self, node: str, stub, request: pb.RunSFCRequest) -> pb.AgentSFC:
        """RunSFC on `node`, at most _RUNS_PER_NODE at once (else _Refused: busy). A call
        that times out, finds the node down or is cancelled (the node left: nodes.py closes
        its channel) makes the node suspect and raises _Refused, for the SFC to be placed
        elsewhere; a call in flight is no worker's reason to wait for the next one."""
        try:
            async with self._calling(node, "RunSFC"):
                return await _agent_call(stub.RunSFC(request, timeout=self.run_timeout))
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or \
                    _pool_busy(e):
                raise
            why = f"{e.code().name}: {e.details()}"
        log.warning("node %s: RunSFC failed (%s); avoided for %.0f s", node, why, _SUSPECT_S)
        self._suspect[node] = asyncio.get_running_loop().time() + _SUSPECT_S
        raise _Refused(why)

    @contextlib.asynccontextmanager
    async def _calling(self, node: str, what: str):
        """One of the node's _RUNS_PER_NODE calls that change what it runs (else _Refused:
        busy): a node whose calls hang holds no more of the workers than that."""
        in_flight = self._runs.get(node, 0)
        if in_flight >= _RUNS_PER_NODE:
            raise _Refused(f"busy: {in_flight} calls in flight (a {what} waits)")
        self._runs[node] = in_flight + 1
        try:
            yield
        finally:
            left = self._runs.get(node, 1) - 1
            if left > 0:
                self._runs[node] = left
            else:
                self._runs.pop(node, None)
            for waiting in self._unplaced_names:  # room for one more call: try them now
                self.queue.add(waiting)

    def _sources(self, names: tuple[str, ...]) -> dict[str, str]:
        sources = {}
        for nf in names:
            key = self.keys.nf(nf)
            try:
                record: NFRecord | None = self._decode("nf", key, self.cache.get(key))
            except MalformedRecord as e:
                raise _MissingNF(f"spec.nfs: the record of deployed NF {nf!r} is "
                                 f"malformed: {e}") from None
            if record is None:  # deleted after the SFC named it (api.py's DeleteNF race)
                raise _MissingNF(f"spec.nfs: deployed NF {nf!r} no longer exists")
            sources[nf] = record.source
        return sources

    async def _stop_strays(self, name: str, keep, peers: PeerPlan | None = None) -> bool:
        """Stop `name` on every live node not in `keep` that runs it (routed on several
        nodes: its state returned to the first that stays, `peers`)."""
        ok = True
        running = [(node, self.nodes.records[node].address)
                   for node, view in sorted(self.nodes.views.items())
                   if node not in keep and name in view]
        for node, address in running:
            try:
                back = peers.return_to(keep) if peers else None
                async with self._calling(node, "StopSFC"):
                    await _agent_call(self.agents[address].StopSFC(pb.StopSFCRequest(
                        name=name, return_to=back),  # returning state: calls of its own
                        timeout=_CALL_TIMEOUT if back is None else 4 * _CALL_TIMEOUT))
                if peers is not None:
                    peers.forget(node)
                log.info("sfc %s stopped on node %s", name, node)
            except _Refused as e:  # (busy: the back-off brings the stop again)
                log.info("stopping sfc %s on node %s waits: %s", name, node, e)
                ok = False
                continue
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    log.warning("stopping sfc %s on node %s: %s", name, node, e.details())
                    ok = False
                    continue
            self.nodes.ran(node, name, None)
        return ok

    async def _write_status(self, name: str, new: SFCStatus, old: SFCStatus | None,
                            item: Item | None) -> bool:
        if old == new:
            return True
        try:
            self.cache.wrote(await self.election.put_fenced(
                self.keys.status(name), new.encode(), item.mod_revision if item else 0))
        except Conflict:
            return False  # written meanwhile (by our previous term?): look again
        return True


def _pool_busy(e: grpc.aio.AioRpcError) -> bool:
    """The agent answered that no pool process is free (agent/service.py): it runs the SFC
    (or keeps what it ran) with fewer instances; the node is up."""
    return e.code() == grpc.StatusCode.UNAVAILABLE and \
        (e.details() or "").startswith("process pool:")


class _MissingNF(Exception):
    pass


class _Refused(Exception):
    """The node cannot run the SFC now: not beside those it runs (a second default, a taken
    tag), too many calls in flight, or its RunSFC timed out or failed to reach it."""


async def _agent_call(call):
    """Await an agent call; one cancelled under it (its node left: nodes.py closed the
    channel) fails like any call, with CANCELLED, unless this task is being cancelled."""
    try:
        return await call
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
        raise grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(),
                                   "the node left; its call was cancelled") from None


async def _until(coro, *events: asyncio.Event) -> bool:
    """Run `coro` unless one of `events` comes first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(coro)
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StoreError):
        await task
    return False


async def _first_of(*aws, timeout: float | None = None):
    """Until one of `aws` is done or `timeout` passes; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


__all__ = ["Reconciler", "StoreUnavailable"]
