"""The leader's view of the nodes: their records (the controller's watch-fed cache) and what
each node's agent says it runs (Agent.GetNode).

Each node is polled on its own every `period` seconds (a call bounded by `timeout`), so a
node that is slow to answer delays nobody else's view. A node is *live* while it is
registered and its last GetNode answered; only live nodes get SFCs.

`changed(names)` is told which SFCs a view change concerns (None: possibly all of them, as
when a node comes or goes), for the reconciler to queue them. Only what a placement decision
reads counts as a change (generation, incarnation, replicas, instances, phase, message),
not the packet counters.

A node that leaves (unregistered, a new address, or its GetNode failing) has its channel
closed: the calls in flight to it (a RunSFC that hangs) are cancelled, their SFCs placed
again. A registered node that never answers is logged once per address.

Workers record what their own calls changed (ran()): a poll sent before such a call
answers with the node as it was, and must not undo what the worker saw (the SFC would look
not yet run and be run again).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

import grpc

from serpens.common.records import NodeRecord
from serpens.common.rpc import Stubs
from serpens.proto.serpens.v1 import serpens_pb2 as pb

from . import checkpoints

log = logging.getLogger(__name__)


def _summary(s: pb.AgentSFC) -> tuple:
    return (s.generation, s.incarnation, s.replicas, s.instances, s.phase, s.message,
            checkpoints.report_summary(s))


DROP_AFTER_MISSES = 2  # GetNode failures in a row before a node is dropped as silent

class Nodes:
    def __init__(self, agents: Stubs, changed: Callable[[set[str] | None], None], *,
                 period: float, timeout: float):
        self.agents, self.changed = agents, changed
        self.period, self.timeout = period, timeout
        self.records: dict[str, NodeRecord] = {}
        self.views: dict[str, dict[str, pb.AgentSFC]] = {}  # live nodes: sfc -> what runs
        self._touched: dict[tuple[str, str], float] = {}     # (node, sfc) -> loop time
        self._pollers: dict[str, asyncio.Task] = {}
        self._polled: dict[str, asyncio.Event] = {}         # set once it was asked
        self._silent: set[tuple[str, str]] = set()          # (node, address) logged silent
        self._misses: dict[str, int] = {}                   # node -> GetNode failed in a row

    def update(self, records: dict[str, NodeRecord]) -> None:
        """The registered nodes are now `records` (name -> record)."""
        for name in [n for n in self.records if n not in records]:
            self._drop(name)
        for name, record in records.items():
            old = self.records.get(name)
            self.records[name] = record
            if old is None or old.address != record.address:
                if old is not None:
                    self.agents.drop(old.address)
                self._drop_view(name)
                self._restart(name)

    def put(self, record: NodeRecord) -> None:
        self.update({**self.records, record.name: record})

    def remove(self, name: str) -> None:
        if name in self.records:
            self._drop(name)

    async def polled(self) -> None:
        """Until every registered node has been asked once (a term's start: nothing is
        placed before the nodes have said what they run)."""
        await asyncio.gather(*(event.wait() for event in self._polled.values()))

    def ran(self, node: str, sfc: str, running: pb.AgentSFC | None) -> None:
        """A worker's call changed `sfc` on `node` (None: stopped there)."""
        view = self.views.get(node)
        if view is None:
            return
        if running is None:
            view.pop(sfc, None)
        else:
            view[sfc] = running
        self._touched[node, sfc] = asyncio.get_running_loop().time()

    async def close(self) -> None:
        tasks = list(self._pollers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pollers.clear()

    # -- polling ----------------------------------------------------------------------------

    def _restart(self, name: str) -> None:
        task = self._pollers.pop(name, None)
        if task is not None:
            task.cancel()
        polled = self._polled[name] = asyncio.Event()
        self._pollers[name] = asyncio.get_running_loop().create_task(
            self._poll_forever(name, polled), name=f"poll-node-{name}")

    def _drop(self, name: str) -> None:
        task = self._pollers.pop(name, None)
        if task is not None:
            task.cancel()
        self.agents.drop(self.records.pop(name).address)
        self._polled.pop(name, None)
        self._silent = {k for k in self._silent if k[0] != name}
        self._misses.pop(name, None)
        self._drop_view(name)

    def _drop_view(self, name: str) -> None:
        if self.views.pop(name, None) is not None:
            self.changed(None)  # its SFCs go elsewhere
        for key in [k for k in self._touched if k[0] == name]:
            del self._touched[key]

    async def _poll_forever(self, name: str, polled: asyncio.Event) -> None:
        while True:
            try:
                await self._poll(name)
            finally:
                polled.set()
            await asyncio.sleep(self.period)

    async def _poll(self, name: str) -> None:
        record = self.records.get(name)
        if record is None:
            return
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            reply = await self.agents[record.address].GetNode(pb.GetNodeRequest(),
                                                              timeout=self.timeout)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            return  # its channel was closed under it (the node left, or another poll failed)
        except grpc.aio.AioRpcError as e:
            misses = self._misses[name] = self._misses.get(name, 0) + 1
            if name in self.views and misses < DROP_AFTER_MISSES:
                return  # one slow or lost answer is no verdict (its lease says whether it lives)
            if name in self.views:
                log.warning("node %s (%s) does not answer: %s", name, record.address,
                            e.details())
                self._drop_view(name)
                self.agents.drop(record.address)  # cancels its calls in flight
            elif (name, record.address) not in self._silent:
                self._silent.add((name, record.address))
                log.warning("node %s is registered at %r but does not answer: %s: %s",
                            name, record.address, e.code().name, e.details())
            return
        self._silent.discard((name, record.address))
        self._misses.pop(name, None)
        new = {s.name: s for s in reply.sfcs}
        old = self.views.get(name)
        for (node, sfc), at in list(self._touched.items()):
            if node != name:
                continue
            if at > sent:  # a worker changed it after this poll was sent: its word stands
                if old is not None and sfc in old:
                    new[sfc] = old[sfc]
                else:
                    new.pop(sfc, None)
            else:
                del self._touched[node, sfc]
        self.views[name] = new
        if old is None:
            log.info("node %s (%s) answers, running %s", name, record.address,
                     ", ".join(sorted(new)) or "no SFC")
            self.changed(None)  # a node to place SFCs on
            return
        moved = {s for s in old.keys() | new.keys()
                 if s not in old or s not in new or _summary(old[s]) != _summary(new[s])}
        if moved:
            self.changed(moved)
