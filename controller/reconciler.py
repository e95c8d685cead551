"""The controller's reconciler: make the nodes run what etcd says (DESIGN §4).

Theory of operation
-------------------
Several controllers may run; one leads. Each campaigns in the store's election
(`<prefix>leader`, bound to a lease of `ttl` seconds); the winner's term is the election key's
create revision, and every status it writes is fenced with it (Election.put_fenced), so a
deposed leader (paused, cut off) cannot overwrite its successor. A killed leader's lease
expires within `ttl` and a standby takes over; a stopped one resigns at once.

The leader watches the whole prefix and reconciles on every change, and every `resync_s`
anyway (agents' counters move without etcd events). A pass is idempotent:

* Desired state: the SFC records (`sfcs/<name>`: spec text, generation, replicas).
* Observed state: the registered nodes (`nodes/<name>`, leased by their agents) and what each
  node's agent says it runs (Agent.GetNode).
* Each SFC stays on the node that runs it; an SFC without a live node goes to the node
  running the fewest SFCs. A node that cannot run it beside its other SFCs (a second SFC
  taking unmatched packets, a taken tag: FAILED_PRECONDITION) is skipped for the next; if
  none can, it stays Pending (and an older generation keeps running where it runs). The agent is told to run the spec's generation (RunSFC, with the
  C source of the deployed NFs it names) and the desired replicas (ScaleSFC); SFCs a node
  runs that are deleted or placed elsewhere are stopped (StopSFC).
* Autoscaling: an SFC whose spec sets `scale.target_pps` gets replicas = its reported input
  rate / target_pps (rounded up, within [min, max], and no more than the node's pool
  processes the other SFCs there leave), written to its record like a Scale call: scale-out
  at once, scale-in only 10 s after the last change and with 20% room to spare.
* The outcome goes to `status/<name>` (phase Pending, Running, Degraded or Failed, node,
  generation, instances), written only when it changed; Degraded and Failed with the agent's
  message when the SFC's instances crash (agent/faults.py). An agent refusing a spec (INVALID_ARGUMENT: the
  field or the compiler's text) marks it Failed until the spec changes; an agent that does
  not answer leaves it Pending and the pass is retried with back-off.

A node lost (its lease expired) takes its SFCs with it: they are placed again on the nodes
left. Losing the controller or etcd stops no traffic: agents keep running what they run.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass

import grpc

from serpens.common import rpc
from serpens.common.store import (DELETE, Conflict, Election, NotLeader, Store, StoreError,
                                  StoreUnavailable)
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from .records import MalformedRecord, Reported, decode

log = logging.getLogger(__name__)

_RUN_TIMEOUT = 120.0     # RunSFC compiles NFs (about a second each when not cached)
_CALL_TIMEOUT = 5.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0


_SCALE_IN_AFTER_S = 10.0  # autoscaling: no scale-in sooner than this after a change
_SCALE_IN_SLACK = 0.8    # ... nor unless the fewer instances would stay under 80% of target


@dataclass
class _Pass:
    """What one reconcile pass saw."""
    sfcs: dict           # name -> record
    revisions: dict      # name -> the record's mod_revision
    incarnations: dict   # name -> the record's create_revision
    status: dict         # name -> (record, mod_revision)
    views: dict          # node name -> {sfc name: pb.AgentSFC} (live nodes that answered)
    addresses: dict      # node name -> agent address
    loads: dict          # node name -> {sfc name: {"in_pps", "out_pps", "instances"}}
    pools: dict          # node name -> pool processes (instances it can run at once)
    malformed: dict      # SFC name -> why its record cannot be read (skipped)


class Reconciler:
    def __init__(self, store: Store, prefix: str, identity: str, *, ttl: int = 2,
                 resync_s: float = 2.0):
        self.store, self.prefix, self.identity = store, prefix, identity
        self.ttl, self.resync_s = ttl, resync_s
        self.sfcs_prefix, self.nodes_prefix = prefix + "sfcs/", prefix + "nodes/"
        self.nfs_prefix, self.status_prefix = prefix + "nfs/", prefix + "status/"
        self.election: Election | None = None
        self.leading = asyncio.Event()      # set while this controller leads
        self.passes = 0
        self._agents: dict[str, tuple[grpc.aio.Channel, pb_grpc.AgentStub]] = {}
        # (sfc, spec text) -> why a node refused it (a deleted and re-applied SFC starts at
        # generation 1 again, so the text, not the generation, says "the same spec")
        self._failed: dict[tuple[str, str], str] = {}
        self._reported = Reported()   # malformed records, logged once per revision

    # ---- leadership -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event):
        """Campaign, lead until the term ends, campaign again; until `stop` is set."""
        backoff = _BACKOFF_FIRST
        while not stop.is_set():
            self.election = Election(self.store, self.prefix + "leader", self.identity,
                                     self.ttl)
            try:
                if not await _until(self.election.campaign(), stop):
                    break
                log.info("%s leads (term %d)", self.identity, self.election.leader_revision)
                self.leading.set()
                await self._lead(stop)
                backoff = _BACKOFF_FIRST
            except (StoreError, NotLeader) as e:
                log.warning("%s: %s; campaigning again", self.identity, e)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except Exception:  # noqa: BLE001 - a bug must not end the control loop for good
                log.exception("%s: reconciler failed; campaigning again", self.identity)
                await _sleep_unless(stop, _BACKOFF_MAX)
            finally:
                if self.leading.is_set():
                    log.info("%s no longer leads", self.identity)
                self.leading.clear()
                # etcd away: the lease then lapses by itself within its TTL
                with contextlib.suppress(StoreError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.election.resign(), 2.0)
        await self.close()

    async def close(self):
        for channel, _ in self._agents.values():
            await channel.close()
        self._agents.clear()

    async def _lead(self, stop: asyncio.Event):
        dirty = asyncio.Event()
        dirty.set()
        _, revision = await self.store.list(self.prefix + "leader")
        watcher = asyncio.get_running_loop().create_task(self._watch(revision + 1, dirty))
        lost = self.election.lease.lost
        backoff = _BACKOFF_FIRST
        try:
            while not stop.is_set() and not lost.is_set():
                if watcher.done():
                    watcher.result()  # raises the watch's error: lead again from scratch
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_first_of(dirty.wait(), lost.wait(), stop.wait()),
                                           self.resync_s)
                if stop.is_set() or lost.is_set():
                    break
                dirty.clear()
                if await self.reconcile():
                    backoff = _BACKOFF_FIRST
                else:  # something to retry: again soon, then less and less often
                    await _sleep_unless(stop, backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    dirty.set()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await watcher

    async def _watch(self, revision: int, dirty: asyncio.Event):
        ignore = (self.status_prefix, self.prefix + "leader")
        async with self.store.watch(self.prefix, revision) as events:
            async for ev in events:
                if not ev.key.startswith(ignore):
                    dirty.set()
                elif ev.key == self.prefix + "leader" and ev.type == DELETE:
                    dirty.set()  # our term may be over: the next write will tell

    # ---- one pass -------------------------------------------------------------------------

    async def reconcile(self) -> bool:
        """One pass over every SFC; False if something is left to retry."""
        self.passes += 1
        state = await self._observe()
        ok = True
        placed: dict[str, str] = {}   # sfc -> node, as decided in this pass
        for name, record in sorted(state.sfcs.items()):
            ok &= await self._autoscale(name, record, state)
            refused: dict[str, str] = {}  # node -> why it cannot run it beside its SFCs
            node = self._place(name, state, placed)
            while node is not None:
                try:
                    status, done = await self._converge(name, record, node, state)
                    break
                except _Refused as e:
                    refused[node] = str(e)
                    if name in state.views[node]:  # an update its node cannot take: stay
                        node = None
                        break
                    node = self._place(name, state, placed, exclude=refused)
            if node is None:
                status, done = self._unplaced(name, refused, state)
                node = status["node"] or None  # an older generation still running stays
            if node is not None:
                placed[name] = node
            ok &= done
            ok &= await self._write_status(name, status, state)
        for name, why in sorted(state.malformed.items()):
            # Skipped, not stopped: a copy a node runs keeps running until the record is
            # written again or deleted.
            keep = next((n for n, view in sorted(state.views.items()) if name in view), "")
            if keep:
                placed[name] = keep
            ok &= await self._write_status(name, {
                "phase": "Failed", "message": f"malformed record {self.sfcs_prefix}{name} "
                f"skipped: {why}; apply the SFC again or delete it", "node": keep,
                "generation": 0, "instances": 0}, state)
        ok &= await self._stop_strays(state, placed)
        for key in [k for k in self._failed if k[0] not in state.sfcs]:
            del self._failed[key]
        for name, (_, revision) in state.status.items():
            if name not in state.sfcs and name not in state.malformed:  # the SFC was deleted: so goes its status
                with contextlib.suppress(Conflict):
                    await self.election.delete_fenced(self.status_prefix + name, revision)
        return ok

    def _decoded(self, items: dict, prefix: str, kind: str, malformed: dict | None = None):
        """{name: (record, Item)} of the records under `prefix` that decode; the others are
        logged (once per revision) and, given `malformed`, put there as name -> why."""
        out = {}
        for key, item in items.items():
            name = key[len(prefix):]
            try:
                out[name] = decode(item.value, kind, name), item
            except MalformedRecord as e:
                self._reported(key, item.mod_revision, e)
                if malformed is not None:
                    malformed[name] = str(e)
        return out

    async def _observe(self) -> _Pass:
        sfc_items, _ = await self.store.list(self.sfcs_prefix)
        status_items, _ = await self.store.list(self.status_prefix)
        node_items, _ = await self.store.list(self.nodes_prefix)
        self._reported.forget_except({*sfc_items, *status_items, *node_items})
        malformed: dict[str, str] = {}
        sfcs = self._decoded(sfc_items, self.sfcs_prefix, "sfc", malformed)
        # A malformed status is as good as none: the next write replaces it.
        status = {name: ({}, item.mod_revision) for name, item in
                  ((k[len(self.status_prefix):], it) for k, it in status_items.items())}
        status.update({name: (record, item.mod_revision) for name, (record, item)
                       in self._decoded(status_items, self.status_prefix, "status").items()})
        nodes = self._decoded(node_items, self.nodes_prefix, "node")
        addresses = {name: r.get("address") for name, (r, _) in nodes.items()}
        addresses = {name: a for name, a in addresses.items()
                     if a and isinstance(a, str)}  # not an agent's record
        loads = {name: _dict(_dict(r.get("load")).get("sfcs")) for name, (r, _) in nodes.items()}
        pools = {name: r.get("pool") if isinstance(r.get("pool"), int) else 0
                 for name, (r, _) in nodes.items()}
        names = sorted(addresses)
        replies = await asyncio.gather(*(self._get_node(addresses[n]) for n in names),
                                       return_exceptions=True)
        views = {}
        for name, reply in zip(names, replies):
            if isinstance(reply, grpc.aio.AioRpcError):
                log.warning("node %s (%s) does not answer: %s", name, addresses[name],
                            reply.details())
            elif isinstance(reply, BaseException):
                raise reply
            else:
                views[name] = {s.name: s for s in reply.sfcs}
        return _Pass(
            sfcs={name: record for name, (record, _) in sfcs.items()},
            revisions={name: item.mod_revision for name, (_, item) in sfcs.items()},
            incarnations={name: item.create_revision for name, (_, item) in sfcs.items()},
            loads=loads, pools=pools, status=status, views=views, addresses=addresses,
            malformed=malformed)

    async def _autoscale(self, name: str, record: dict, state: _Pass) -> bool:
        """Set the record's replicas from the reported load when its spec asks for it
        (scale.target_pps): out at once, in only after a quiet while with room to spare."""
        scale = record["scale"]
        target = scale.get("target_pps")
        node = state.status.get(name, ({}, 0))[0].get("node")
        load = state.loads.get(node, {}).get(name)
        if not isinstance(target, (int, float)) or target <= 0 or not isinstance(load, dict) \
                or not isinstance(load.get("in_pps"), (int, float)):
            return True
        in_pps, replicas = load["in_pps"], scale["replicas"]
        want = min(max(math.ceil(in_pps / target), scale["min"]), scale["max"])
        free = self._free_processes(node, name, state)
        room = None if free is None else max(free, replicas, scale["min"])
        if room is not None and want > room:
            log.info("autoscaling sfc %s: %d replicas wanted, node %s has pool processes "
                     "for %d", name, want, node, room)
            want = room
        if want < replicas:
            recent = time.time() - scale.get("changed_at", 0) < _SCALE_IN_AFTER_S
            if recent or in_pps > _SCALE_IN_SLACK * target * want:
                return True
        if want == replicas:
            return True
        log.info("autoscaling sfc %s: %d -> %d replicas (%.0f pps in, target %.0f each)",
                 name, replicas, want, in_pps, target)
        record["scale"] = dict(scale, replicas=want, changed_at=time.time())
        try:
            await self.election.put_fenced(self.sfcs_prefix + name, json.dumps(record),
                                           state.revisions[name])
        except Conflict:
            record["scale"] = scale  # changed meanwhile (an apply, a Scale): next pass
            return False
        return True

    @staticmethod
    def _free_processes(node: str, name: str, state: _Pass) -> int | None:
        """Pool processes of `node` the other SFCs there leave to `name` (None: unknown)."""
        pool, view = state.pools.get(node), state.views.get(node)
        if not pool or view is None:
            return None
        return max(0, pool - sum(max(s.replicas, s.instances) for other, s in view.items()
                                 if other != name))

    def _place(self, name: str, state: _Pass, placed: dict, exclude=()) -> str | None:
        """Where `name` was placed if that node lives, else a node that runs it, else the
        live node running the fewest SFCs; never a node in `exclude`."""
        live = {node: view for node, view in state.views.items() if node not in exclude}
        current = state.status.get(name, ({}, 0))[0].get("node")
        if current in live:
            return current
        for node, view in sorted(live.items()):
            if name in view:
                return node
        if not live:
            return None

        def load(node):
            others = set(live[node]) | {s for s, n in placed.items() if n == node}
            return len(others - {name}), node
        return min(live, key=load)

    @staticmethod
    def _unplaced(name: str, refused: dict, state: _Pass) -> tuple[dict, bool]:
        """(status, done) of an SFC no node takes now: Pending, kept where an older
        generation of it runs (if anywhere), retried."""
        keep = next((node for node, view in sorted(state.views.items()) if name in view), "")
        message = "no node is registered" if not state.views else \
            "no node can run it beside the SFCs it runs: " + \
            "; ".join(f"{node}: {why}" for node, why in sorted(refused.items()))
        return {"phase": "Pending", "message": message, "node": keep, "generation": 0,
                "instances": 0}, False

    async def _converge(self, name: str, record: dict, node: str, state: _Pass):
        """Bring `node` to the record; (status, done)."""
        generation, replicas = record["generation"], record["scale"]["replicas"]
        incarnation = state.incarnations.get(name, 0)
        running = state.views[node].get(name)
        if running is not None and running.incarnation != incarnation:
            running = None  # a copy of an SFC deleted since: replace it
        status = {"phase": "Running", "message": "", "node": node, "generation": generation,
                  "instances": 0}
        failed = self._failed.get((name, record["spec"]))
        if failed is not None and (running is None or running.generation != generation):
            return dict(status, phase="Failed", message=failed), True
        stub = self._agent(state.addresses[node])
        try:
            if running is None or running.generation != generation:
                sources = await self._sources(record["nfs"])
                running = await stub.RunSFC(pb.RunSFCRequest(
                    spec=record["spec"], nf_sources=sources, generation=generation,
                    replicas=replicas, incarnation=incarnation),
                    timeout=_RUN_TIMEOUT)
                log.info("sfc %s generation %d runs on node %s", name, generation, node)
            elif running.replicas != replicas:
                running = await stub.ScaleSFC(pb.ScaleSFCRequest(name=name, replicas=replicas),
                                              timeout=_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.info("node %s cannot run sfc %s now: %s", node, name, e.details())
                raise _Refused(e.details()) from None
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("node %s refused sfc %s: %s", node, name, e.details())
                reason = self._failed[name, record["spec"]] = f"node {node}: {e.details()}"
                return dict(status, phase="Failed", message=reason), True
            return dict(status, phase="Pending",
                        message=f"node {node}: {e.code().name}: {e.details()}"), False
        except _MissingNF as e:
            return dict(status, phase="Pending", message=str(e)), False
        if running.phase in ("Degraded", "Failed") and running.generation == generation:
            # its instances crash: the agent says which NF, how, and what it does about it
            status = dict(status, phase=running.phase, message=f"node {node}: {running.message}")
        return dict(status, instances=running.instances), True

    async def _sources(self, names: list[str]) -> dict:
        sources = {}
        for nf in names:
            item = await self.store.get(self.nfs_prefix + nf)
            if item is None:  # deleted after the SFC named it (api.py's known gap)
                raise _MissingNF(f"spec.nfs: deployed NF {nf!r} no longer exists")
            try:
                sources[nf] = decode(item.value, "nf", nf)["source"]
            except MalformedRecord as e:
                self._reported(self.nfs_prefix + nf, item.mod_revision, e)
                raise _MissingNF(f"spec.nfs: the record of deployed NF {nf!r} is "
                                 f"malformed: {e}") from None
        return sources

    async def _stop_strays(self, state: _Pass, placed: dict) -> bool:
        ok = True
        for node, view in state.views.items():
            for name in view:
                if placed.get(name) == node:
                    continue
                try:
                    await self._agent(state.addresses[node]).StopSFC(
                        pb.StopSFCRequest(name=name), timeout=_CALL_TIMEOUT)
                    log.info("sfc %s stopped on node %s", name, node)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        log.warning("stopping sfc %s on node %s: %s", name, node, e.details())
                        ok = False
        return ok

    async def _write_status(self, name: str, status: dict, state: _Pass) -> bool:
        old, revision = state.status.get(name, (None, 0))
        if old == status:
            return True
        try:
            await self.election.put_fenced(self.status_prefix + name, json.dumps(status),
                                           revision)
        except Conflict:
            return False  # written meanwhile (by our previous term?): look again
        return True

    async def _get_node(self, address: str) -> pb.NodeStatus:
        return await self._agent(address).GetNode(pb.GetNodeRequest(), timeout=_CALL_TIMEOUT)

    def _agent(self, address: str) -> pb_grpc.AgentStub:
        if address not in self._agents:
            channel = rpc.channel(address)
            self._agents[address] = (channel, pb_grpc.AgentStub(channel))
        return self._agents[address][1]


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


class _MissingNF(Exception):
    pass


class _Refused(Exception):
    """The node cannot run the SFC beside those it runs (a second default, a taken tag)."""


async def _until(coro, stop: asyncio.Event) -> bool:
    """Run `coro` unless `stop` comes first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StoreError):
        await task
    return False


async def _first_of(*aws):
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float):
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


__all__ = ["Reconciler", "StoreUnavailable"]
