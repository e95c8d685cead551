"""Release pools rebalanced between servers (issue 14 item 2; docs/state.md "Between servers").

Within one server a `trigger` (or timer) gives an instance's shares back and splits again
from the node's pool. Across servers the node's pool itself can run dry while a peer has
plenty: the runtime counts, per release table, the splits that moved nothing (the share
stayed all zero: `serpens_table_hdr.dry`), without reading the NF's values. This agent looks
at those counts every period; when one grew it asks the SFC's peers for a share of that pool
(Peer.SharePool): the peer's pool process splits it off with the NF's split op, the peer
reads and deletes it before it answers (never in two places: a lost answer loses the share,
as with Seed), and here it is written as `<table>@in<k>` and folded in by the NF's merge op
at a merge request. Bounded: one ask at a time, at most one per (table, peer) per period, a
peer that had nothing, or did not answer (down, hung: each ask of it waits ASK_TIMEOUT_S), is
left alone for EMPTY_BACKOFF periods and asked after the others, and nothing is asked while
every `@in<k>` slot is taken. Peers are tried most promising first: those whose last answer
gave something, then those with the lowest dry count they reported.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time

import grpc

from serpens.common import bulk
from serpens.common.tasks import sleep_unless
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.runtime_cy import _dataplane as dp

from . import peer_state
from .state_manager import TABLE_SUFFIX, StateManager

log = logging.getLogger(__name__)

DRY_OFF = 176          # state_table.h serpens_table_hdr.dry (u64)
ASK_TIMEOUT_S = 5.0
EMPTY_BACKOFF = 10     # periods a peer that had nothing is not asked again for that pool


class NoSuchPool(LookupError):
    pass


def dry_count(path: str) -> int:
    """How often a split of this release pool moved nothing (the runtime's count)."""
    with open(path, "rb", buffering=0) as f:   # (a buffered read takes 2 MiB on hugetlbfs)
        h = f.read(DRY_OFF + 8)
    if len(h) < DRY_OFF + 8:
        raise peer_state.PeerStateError(f"{path}: not a whole table header")
    return struct.unpack_from("<Q", h, DRY_OFF)[0]


def release_pools(state: StateManager, spec) -> list[tuple[str, str, str]]:
    """[(nf, namespace, table)] of the SFC's release pools present here."""
    out = []
    for nf in spec.nfs:
        ns = spec.state_namespace(nf)
        for t in peer_state.base_tables(state, ns):
            try:
                if peer_state.header(state.path(ns, t))["flags"] & dp.RELEASE:
                    out.append((nf, ns, t))
            except (OSError, peer_state.PeerStateError):
                continue
    return out


def free_slots(state: StateManager, ns: str, table: str) -> int:
    folder = os.path.join(state.state_dir, ns)
    return sum(not os.path.exists(os.path.join(folder, f"{table}@in{k}{TABLE_SUFFIX}"))
               for k in range(peer_state.RETURN_SLOTS))


def is_all_zero(state: StateManager, ns: str, name: str) -> bool:
    t = state.open(ns, name)
    try:
        return all(not any(v) for _, v in t.items())
    finally:
        t.close()


def share_pool(node, sfc: str, nf: str, table: str) -> tuple[bytes | None, int]:
    """Peer side of SharePool: (the share's table file, named `table`, or None when the pool
    had nothing to give; this node's dry count of it). The share is gone from here before
    this returns."""
    with node._lock:
        entry = node._entry(sfc)
        if nf not in entry.spec.nfs:
            raise NoSuchPool(f"nf: SFC {sfc} has no NF {nf!r}")
        state = node.state
        ns = entry.spec.state_namespace(nf)
        path = state.path(ns, table)
        if "@" in table or "/" in table or not os.path.exists(path) or \
                not peer_state.header(path)["flags"] & dp.RELEASE:
            raise NoSuchPool(f"table: NF {nf} of {sfc} has no release pool {table!r} here")
        entry.manager.split_state(only=f"{ns}/{table}")
        out = state.path(ns, f"{table}@out")
        dry = dry_count(path)
        if not os.path.exists(out):
            return None, dry
        if is_all_zero(state, ns, f"{table}@out"):
            os.unlink(out)       # nothing in it (zero shares add nothing anywhere)
            return None, dry
        data = peer_state.renamed(peer_state._read(out), table)
        os.unlink(out)           # gone before we answer: never shipped twice
        return data, dry


class PoolRebalancer:
    """Asks peers for a share of a release pool that ran dry here (see the module)."""

    def __init__(self, node, peers_of, stubs, period_s: float = 0.1):
        """`peers_of()`: {SFC: [(node, address)]} of the other servers (DeltaSender.peers);
        `stubs`: address -> PeerStub."""
        self.node, self.peers_of, self.stubs, self.period_s = node, peers_of, stubs, period_s
        self.seen: dict[tuple, int] = {}       # (sfc, ns, table) -> dry count answered
        self.asked: dict[tuple, float] = {}    # (sfc, ns, table, address) -> when
        self.hint: dict[tuple, tuple] = {}     # (sfc, ns, table, address) -> (empty, dry)
        self.received: dict[str, int] = {}     # SFC -> shares received
        self.asks: dict[str, int] = {}         # SFC -> asks sent

    async def run(self, stop: asyncio.Event):
        while not stop.is_set():
            await sleep_unless(stop, self.period_s)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - logged; the next period tries again
                log.exception("rebalancing release pools")

    async def tick(self):
        peers_of = self.peers_of()
        for table in (self.seen, self.asked, self.hint):    # SFCs gone
            for key in [k for k in table if k[0] not in peers_of]:
                del table[key]
        for sfc, peers in list(peers_of.items()):
            entry = self.node.running.get(sfc)
            if entry is None or not peers:
                continue
            pools = await asyncio.to_thread(self._dry_pools, sfc, entry.spec)
            for nf, ns, table, _ in pools:
                if await self._ask_peers(sfc, nf, ns, table, peers):
                    # splits that found nothing while the share was on its way are answered
                    # by it: the count after the fold is the new baseline
                    self.seen[(sfc, ns, table)] = await asyncio.to_thread(
                        dry_count, self.node.state.path(ns, table))

    def _dry_pools(self, sfc: str, spec) -> list[tuple[str, str, str, int]]:
        """The SFC's pools whose dry count grew since the last share they got."""
        state = self.node.state
        out = []
        for nf, ns, table in release_pools(state, spec):
            try:
                dry = dry_count(state.path(ns, table))
            except (OSError, peer_state.PeerStateError):
                continue
            seen = self.seen.setdefault((sfc, ns, table), dry)   # first sight: the baseline
            if dry != seen and free_slots(state, ns, table):
                out.append((nf, ns, table, dry))
        return out

    def _order(self, sfc, ns, table, peers):
        now = time.monotonic()
        ready = []
        for node, address in peers:
            key = (sfc, ns, table, address)
            empty, dry = self.hint.get(key, (False, 0))
            wait = self.period_s * (EMPTY_BACKOFF if empty else 1)
            if now - self.asked.get(key, -1e9) >= wait:
                ready.append((empty, dry, node, address))
        return [(node, address) for _, _, node, address in sorted(ready)]

    async def _ask_peers(self, sfc, nf, ns, table, peers) -> bool:
        """Ask peers in turn until one gives a share; True when one did."""
        for node, address in self._order(sfc, ns, table, peers):
            key = (sfc, ns, table, address)
            self.asked[key] = time.monotonic()
            self.asks[sfc] = self.asks.get(sfc, 0) + 1
            try:
                reply = await self.stubs[address].SharePool(pb.SharePoolRequest(
                    sfc=sfc, node=self.node.spec.name, nf=nf, table=table),
                    timeout=ASK_TIMEOUT_S)
            except grpc.RpcError as e:
                log.warning("sfc %s: %s.%s ran dry; asking %s for a share: %s %s", sfc, nf,
                            table, node, e.code().name, e.details())
                self.hint[key] = (True, 0)  # as one with nothing: the others first, for a while
                continue
            self.hint[key] = (reply.empty, reply.dry)
            if reply.empty:
                continue
            await self._install(sfc, nf, ns, table, node, address, reply.share)
            return True
        return False

    async def _install(self, sfc, nf, ns, table, node, address, image):
        [(_, [(_, data)])] = peer_state.inflate([pb.NFTables(nf=nf, tables=[image])])
        state = self.node.state
        try:
            await asyncio.to_thread(peer_state.install_tables, state, ns, [(table, data)])
        except peer_state.PeerStateError as e:
            # every slot taken meanwhile (a ReturnState): the share goes back, never lost
            log.warning("sfc %s: a share of %s.%s from %s cannot be kept (%s); returning it",
                        sfc, nf, table, node, e)
            try:
                await self.stubs[address].ReturnState(bulk.pieces(pb.ReturnStateRequest(
                    sfc=sfc, node=self.node.spec.name,
                    nfs=peer_state.images([(nf, [(table, data)])]))), timeout=ASK_TIMEOUT_S)
            except grpc.RpcError as e2:
                log.error("sfc %s: a share of %s.%s from %s lost: returning it failed: %s %s",
                          sfc, nf, table, node, e2.code().name, e2.details())
            return
        self.received[sfc] = self.received.get(sfc, 0) + 1
        try:
            merged = await asyncio.to_thread(self.node.merge_state, sfc)
        except Exception as e:  # noqa: BLE001 - stopped meanwhile, or an instance stuck
            log.warning("sfc %s: a share of %s.%s from %s waits in %s@in<k> (merging: %s)",
                        sfc, nf, table, node, table, e)
            return
        log.info("sfc %s: %s.%s ran dry: a share from %s folded in (%d running instances)",
                 sfc, nf, table, node, merged)
