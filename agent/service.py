"""The `serpens.v1.Agent` servicer: the controller's hands on one node (DESIGN §4); and the
`serpens.v1.Peer` servicer: what the other nodes' agents ask of it (state between servers,
agent/peer_state.py).

Every call changes the node under its lock, in a worker thread (compiling NFs and starting
instances block for milliseconds to a second), and answers with what the node now runs.
Errors are status codes whose message names the field or carries the compiler's text:
INVALID_ARGUMENT for a spec or NF the node refuses, NOT_FOUND for an SFC it does not run,
UNAVAILABLE when no pool process is free, RESOURCE_EXHAUSTED when the state filesystem has no
room (for a restore, or an instance's new table), DATA_LOSS for a broken table file.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import shutil
import time
import zlib

import grpc

from serpens.common.limits import LIMITS
from serpens.common.spec import SpecError, parse_sfc
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc
from serpens.runtime_cy.errors import NFBuildError, NFRefusedError

from serpens.common import bulk, rpc

from . import capture_rpc, peer_state, pool_rebalance
from .checkpoints import CheckpointPeer, Checkpointer
from .node import NoSuchSFC, SFCConflict, StaleSpec
from .metrics import _port_stats
from .peer_moves import FlowMoves
from .process_pool import PoolError
from .state_manager import (BrokenTable, StateError, StateFilesystemFull, StateManager,
                            table_error)

log = logging.getLogger(__name__)


def _handler(method):
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except SFCConflict as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except StaleSpec as e:
            await context.abort(grpc.StatusCode.ABORTED, f"generation: {e}")
        except NoSuchSFC as e:  # stopped meanwhile
            await context.abort(grpc.StatusCode.NOT_FOUND, f"sfc: {e}")
        except SpecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except NFBuildError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"NF build: {e}")
        except NFRefusedError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"refused by the NF verifier: {e}")
        except PoolError as e:
            if e.errno == errno.ENOSPC:  # an NF's create_table: the state filesystem is full
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"instance start: {e}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"process pool: {e}")
        except TimeoutError as e:  # an instance stuck in an NF
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except StateFilesystemFull as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except BrokenTable as e:
            await context.abort(grpc.StatusCode.DATA_LOSS, f"{e} (serpensctl state reset)")
        except peer_state.PeerStateError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"peer state: {e}")
        except StateError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"snapshot: {e}")
        except WrongCode as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:  # e.g. more instances than the node's router has room for
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return wrapper


SHARE_ANSWER_S = 1.0  # a pool share is answered only this long before the asker's deadline


def _vxlan(entry) -> pb.VxlanRoute | None:
    """The VXLAN route the SFC runs with (None: local only), as RunSFC gave it."""
    v = entry.vxlan if entry is not None else None
    return None if v is None else pb.VxlanRoute(tag=v.tag, vni=v.vni, gateway_ip=v.gateway_ip,
                                                gateway_mac=v.gateway_mac)


class AgentServicer(pb_grpc.AgentServicer):
    def __init__(self, node, deltas: peer_state.DeltaSender | None = None,
                 receiver: peer_state.Receiver | None = None, peers: rpc.Stubs | None = None,
                 rebalancer: pool_rebalance.PoolRebalancer | None = None):
        """`deltas`/`receiver`/`peers` (PeerStub per address)/`rebalancer`: state between
        servers (agent/peer_state.py, agent/pool_rebalance.py); None: this agent exchanges
        none."""
        self.node = node
        self.deltas, self.receiver, self.peers = deltas, receiver, peers
        self.rebalancer = rebalancer
        self._observed: set[str] = set()  # SFCs with a capture or trace running
        self.checkpoints = Checkpointer(node)

    def _sfc(self, name: str) -> pb.AgentSFC:
        c = self.node.stats()["sfcs"][name]
        return pb.AgentSFC(name=name, generation=c["generation"], incarnation=c["incarnation"],
                           replicas=c["replicas"],
                           instances=c["instances"], rx=c["rx"], out=c["out"],
                           dropped=c["dropped"], held=c["held"], phase=c["phase"],
                           message=c["message"], crashes=c["crashes"], drops=c["drops"],
                           vxlan=_vxlan(self.node.running.get(name)),
                           peer_state=self.deltas.status(name) if self.deltas else "",
                           deltas_pushed=self.deltas.pushed.get(name, 0) if self.deltas else 0,
                           deltas_applied=self.receiver.applied.get(name, 0)
                           if self.receiver else 0,
                           pool_shares=self.rebalancer.received.get(name, 0)
                           if self.rebalancer else 0,
                           **self.checkpoints.status(name))

    @_handler
    async def RunSFC(self, request, context):
        spec = parse_sfc(request.spec, allow_source=False)
        restored = None
        if request.restore_of and spec.name not in self.node.running:
            # a lost node's SFC: its tables from the last checkpoint, before any instance
            restored = await self.checkpoints.restore(
                spec, request.restore_from if request.HasField("restore_from") else None,
                request.restore_of)
        # restored in place of a lost node: its tables (release shares too) are that node's,
        # not a share split off a live node's pool again
        seed = request.seed_from if request.HasField("seed_from") and restored is None else None
        if seed is not None and seed.address and seed.node != self.node.spec.name and \
                spec.name not in self.node.running:
            await self._seed(spec, seed, context)
        await asyncio.to_thread(self.node.apply_sfc, spec, dict(request.nf_sources),
                                request.replicas or None, request.generation,
                                request.incarnation,
                                vxlan=request.vxlan if request.HasField("vxlan") else None)
        self.checkpoints.follow(spec.name, request.checkpoint_to
                                if request.HasField("checkpoint_to") else None,
                                spec.checkpoint_s)
        if restored is not None:
            self.checkpoints.forget_restored(spec.name, *restored)
        if self.deltas is not None:
            self.deltas.set_peers(spec.name, request.peers)
        log.info("running sfc %s generation %d", spec.name, request.generation)
        return self._sfc(spec.name)

    async def _seed(self, spec, seed, context):
        """Before the SFC's first instance here: its tables from `seed` (Peer.Seed)."""
        if self.peers is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "seed_from: this agent exchanges no state with peers")
        try:
            reply = await self.peers[seed.address].Seed(
                pb.SeedRequest(sfc=spec.name, node=self.node.spec.name), timeout=10)
        except grpc.RpcError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"seed_from: node {seed.node} ({seed.address}): "
                                f"{e.code().name} {e.details()}")
        nfs = await asyncio.to_thread(peer_state.inflate, reply.nfs)
        unknown = [nf for nf, _ in nfs if nf not in spec.nfs]
        if unknown:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"seed_from: node {seed.node} sent tables of NFs the SFC "
                                f"does not have: {unknown}")
        state = self.node.state
        for nf, tables in nfs:
            await asyncio.to_thread(peer_state.install_tables, state,
                                    spec.state_namespace(nf), tables)
        log.info("sfc %s: seeded from %s: %s", spec.name, seed.node,
                 ", ".join(f"{nf}: {', '.join(t for t, _ in tables)}" for nf, tables in nfs
                           if tables) or "no tables")

    @_handler
    async def StopSFC(self, request, context):
        if request.name not in self.node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"name: node {self.node.spec.name} runs no SFC {request.name!r}")
        spec = self.node.running[request.name].spec
        back = request.return_to if request.HasField("return_to") else None
        if back is not None and self.deltas is not None:
            self.deltas.nf_ops(request.name)   # known for the last push
        await asyncio.to_thread(self.node.remove_sfc, request.name)
        self.checkpoints.forget(request.name)
        log.info("stopped sfc %s", request.name)
        if back is not None and back.address:
            # shielded: a caller giving up (deadline) must not cut it between a return and
            # the drop that follows it (a pool in two places)
            why = await asyncio.shield(self._return_state(spec, back))
            if why:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"return_to: {why}")
        elif self.deltas is not None:
            self.deltas.forget(request.name)
        return pb.StopSFCResponse()

    async def _return_state(self, spec, back) -> str:
        """After StopSFC: release pools to `back` (then dropped here: never in two places),
        eventual tables' last deltas to the peers and `back`, then the SFC's other tables are
        dropped. Returns why it failed ("" done); a failure keeps what was not handed over."""
        if self.peers is None:
            return "this agent exchanges no state with peers; the SFC's tables stay here"
        state = self.node.state
        pools = await asyncio.to_thread(peer_state.pools_to_return, state, spec)
        if pools:
            try:
                await self.peers[back.address].ReturnState(bulk.pieces(pb.ReturnStateRequest(
                    sfc=spec.name, node=self.node.spec.name, nfs=peer_state.images(pools))),
                    timeout=10)
            except grpc.RpcError as e:
                return (f"node {back.node} ({back.address}): {e.code().name} {e.details()}; "
                        "the SFC's tables stay here")
            for nf, tables in pools:
                for table in {t for t, _ in tables}:
                    await asyncio.to_thread(state.drop, spec.state_namespace(nf), table)
        if self.deltas is not None:
            await self.deltas.flush(spec.name, spec, extra=[(back.node, back.address)])
            if not self.deltas.reached(spec.name, back.address):
                return (f"the last deltas did not reach {back.node} "
                        f"({self.deltas.status(spec.name)}); the SFC's eventual tables stay "
                        "here")
            if self.deltas.status(spec.name):   # another peer misses this node's last period
                log.warning("sfc %s: %s", spec.name, self.deltas.status(spec.name))
            self.deltas.forget(spec.name)
        for nf in spec.nfs:
            await asyncio.to_thread(state.drop, spec.state_namespace(nf))
        log.info("sfc %s: state returned to %s (%d NFs with pools), tables dropped",
                 spec.name, back.node, len(pools))
        return ""

    @_handler
    async def ScaleSFC(self, request, context):
        if request.name not in self.node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"name: node {self.node.spec.name} runs no SFC {request.name!r}")
        await asyncio.to_thread(self.node.scale, request.name, request.replicas)
        return self._sfc(request.name)

    async def _nf(self, sfc: str, nf: str, context):
        """The running SFC `sfc` and the spec of its NF `nf`; NOT_FOUND naming the field."""
        entry = self.node.running.get(sfc)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"sfc: node {self.node.spec.name} runs no SFC {sfc!r}")
        spec = entry.spec.nfs.get(nf)
        if spec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"nf: SFC {sfc} has no NF {nf!r} "
                                f"(it has {', '.join(sorted(entry.spec.nfs))})")
        return entry, spec

    @_handler
    async def MergeState(self, request, context):
        n = await asyncio.to_thread(self.node.merge_state, request.sfc)
        return pb.MergeStateResponse(node=self.node.spec.name, instances=n)

    @_handler
    async def ReadState(self, request, context):
        if request.limit > LIMITS.read_entries:
            raise ValueError(f"limit: at most {LIMITS.read_entries} entries a table, got "
                             f"{request.limit}")
        entry, nf = await self._nf(request.sfc, request.nf, context)
        if request.merge:
            await asyncio.to_thread(self.node.merge_state, request.sfc)
        tables = await asyncio.to_thread(
            read_tables, self.node.dataplane.config.state_dir,
            entry.spec.state_namespace(request.nf), nf.stock, request.table,
            request.limit or 1000)
        if request.table and not tables:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"table: NF {request.nf} of {request.sfc} has no table "
                                f"{request.table!r} (yet)")
        return pb.ReadStateResponse(node=self.node.spec.name, tables=tables)

    @_handler
    async def SnapshotState(self, request, context):
        entry, _ = await self._nf(request.sfc, request.nf, context)
        code, code_sha256 = entry.built.code[request.nf]
        tables = await asyncio.to_thread(self.node.snapshot_state, request.sfc, request.nf)
        taken = int(time.time() * 1000)
        images = await asyncio.to_thread(
            lambda: [pb.TableImage(name=name, size=len(data), zdata=zlib.compress(data, 1))
                     for name, data in tables])
        log.info("snapshot of %s/%s: %d tables", request.sfc, request.nf, len(tables))
        return pb.StateSnapshot(sfc=request.sfc, nf=request.nf, node=self.node.spec.name,
                                taken_unix_ms=taken, tables=images, nf_code=code,
                                nf_code_sha256=code_sha256)

    @_handler
    async def RestoreState(self, request_pieces, context):
        request = await bulk.assembled(request_pieces, pb.RestoreStateRequest, context)
        entry, _ = await self._nf(request.sfc, request.nf, context)
        if not request.force:
            _check_same_code(request, *entry.built.code[request.nf])
        disk = shutil.disk_usage(self.node.dataplane.config.state_dir)
        tables = await asyncio.to_thread(_inflate, request.snapshot, disk)
        await asyncio.to_thread(self.node.restore_state, request.sfc, request.nf, tables)
        log.info("restored %s/%s from a snapshot of %s/%s on %s: %d tables", request.sfc,
                 request.nf, request.snapshot.sfc, request.snapshot.nf, request.snapshot.node,
                 len(tables))
        return pb.RestoreStateResponse(node=self.node.spec.name, tables=len(tables))

    @_handler
    async def ResetState(self, request, context):
        entry, _ = await self._nf(request.sfc, request.nf, context)
        namespace = entry.spec.state_namespace(request.nf)
        if request.table and (namespace, request.table) not in \
                self.node.state.tables():
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"table: NF {request.nf} of {request.sfc} has no table "
                                f"{request.table!r} on node {self.node.spec.name}")
        gone = await asyncio.to_thread(self.node.reset_state, request.sfc, request.nf,
                                       request.table)
        log.info("reset the state of %s/%s: %s", request.sfc, request.nf,
                 ", ".join(gone) or "no tables")
        return pb.ResetStateResponse(node=self.node.spec.name, tables=gone)

    async def Capture(self, request, context):
        try:
            obs = capture_rpc.observation(self.node, request, self._observed)
        except LookupError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except capture_rpc.CaptureBusy as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self._observed.add(request.sfc)
        try:  # (cancelled when the client goes away: the stream's finally disarms)
            async for event in capture_rpc.stream(obs, self.node.spec.name, request):
                yield event
        finally:
            obs.close()  # (again: the stream may not have run its own finally yet)
            self._observed.discard(request.sfc)

    @_handler
    async def GetUsage(self, request, context):
        since = request.since.ToSeconds() + request.since.nanos / 1e9 \
            if request.HasField("since") else None
        try:
            rows, start = self.node.meter.usage(request.sfc or None, since)
        except ValueError as e:  # names `since`
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return usage_response(rows, start, node=self.node.spec.name)

    @_handler
    async def GetNode(self, request, context):
        st = self.node.stats()
        vxlan = st["vxlan"]
        ids = self.node.ports or {}
        return pb.NodeStatus(
            name=st["node"], sfcs=[self._sfc(name) for name in st["sfcs"]],
            ports={name: pb.PortCounters(rx=c["rx"], tx=c["tx"], tx_failed=c["tx_failed"],
                                         unmatched=c["unmatched"],
                                         # the device's too (an af_packet ring full), as
                                         # the metrics count them
                                         missed=c["missed"] +
                                         _port_stats(ids.get(name)).get("missed", 0))
                   for name, c in st["ports"].items()},
            vxlan_rx=vxlan.get("rx", 0), arp_replies=vxlan.get("arp_replies", 0),
            vxlan_drops=vxlan.get("drops", {}))


def usage_message(u: dict) -> pb.Usage:
    return pb.Usage(packets=u["packets"], bytes=u["bytes"], cpu_seconds=u["cpu_seconds"],
                    state_byte_seconds=u["state_byte_seconds"])


def usage_response(rows: dict, start: float | None, node: str = "") -> pb.GetUsageResponse:
    """A GetUsageResponse of UsageMeter.usage()'s figures."""
    reply = pb.GetUsageResponse(node=node, sfcs=[
        pb.SFCUsage(sfc=name, total=usage_message(u)) for name, u in sorted(rows.items())])
    reply.read_at.GetCurrentTime()
    if start is not None:
        reply.since.FromSeconds(int(start))
    return reply


def _check_same_code(request, code: str, code_sha256: str):
    """A snapshot goes only into an NF of the code that wrote it (another NF's tables have
    another layout: NAT's read as MON's would be garbage counters); `force` skips this."""
    snap = request.snapshot
    if snap.nf_code_sha256 == code_sha256:
        return
    theirs = (f"{snap.nf_code} (sha256 {snap.nf_code_sha256[:12]})" if snap.nf_code_sha256
              else "code it does not name (an older snapshot)")
    raise WrongCode(f"snapshot: of {snap.sfc}.{snap.nf}, {theirs}; {request.sfc}.{request.nf} "
                    f"runs {code} (sha256 {code_sha256[:12]}); restore with force to "
                    "install it anyway")


class WrongCode(Exception):
    """A snapshot of other code than the NF it would be restored into."""


def _inflate(snapshot, disk) -> list[tuple[str, bytes]]:
    """The snapshot's tables, each no larger than it says (a small payload must not
    inflate to gigabytes), and all of them no larger than the state filesystem (`disk`,
    shutil.disk_usage) can hold: what they say is checked before anything is inflated.
    Larger than the filesystem is a bad snapshot (ValueError naming the field); larger than
    its free space, a full filesystem."""
    total = 0
    for i, image in enumerate(snapshot.tables):
        total += image.size
        if total > disk.total:
            raise ValueError(f"snapshot.tables[{i}].size: the tables hold {total} bytes up to "
                             f"this one, more than the node's state filesystem ({disk.total})")
    if total > disk.free:
        raise StateFilesystemFull(f"state filesystem full (ENOSPC): no room for the {total} "
                                  f"bytes of the snapshot's tables ({disk.free} free)")
    tables = []
    for image in snapshot.tables:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(image.zdata, image.size + 1)
        except zlib.error as e:
            raise StateError(f"table {image.name}: {e}") from None
        if len(data) != image.size or not inflater.eof:
            raise StateError(f"table {image.name}: not the {image.size} bytes the snapshot "
                             "says")
        tables.append((image.name, data))
    return tables


def read_tables(state_dir: str, namespace: str, stock: str | None, only: str,
                limit: int) -> list:
    """The tables of NF namespace `namespace`, at most `limit` entries each, decoded by the
    stock NF's decode_entry() when it has one."""
    import importlib
    import json

    from serpens.runtime_cy import _dataplane as dp

    decode = None
    if stock:
        decode = getattr(importlib.import_module(f"serpens.nfs.{stock}"), "decode_entry", None)
    manager = StateManager(state_dir)
    out = []
    for nf, name in manager.tables():
        if nf != namespace or (only and name != only) or "@" in name:
            continue  # "table@rN": an instance's replica, merged into the table itself
        try:
            table = manager.open(nf, name)
        except OSError as e:  # a broken table, or no room to fill its holes
            raise table_error(nf, name, e) from None
        eventual = table.info["flags"] & dp.EVENTUAL
        try:  # (an eventual table's peers count too: whole, as their keys may be its first)
            info, items = table.info, table.items(None if eventual else limit)
        finally:
            table.close()
        if eventual:  # other servers' counts (agent/peer_state.py)
            items = peer_state.with_peers(manager, nf, name, items)
            info["count"] = len(items)
        items = items[:limit]
        entries = []
        for key, value in items:
            decoded = decode(name, key, value) if decode else None
            entries.append(pb.StateEntry(key=key, value=value,
                                         decoded=json.dumps(decoded) if decoded else ""))
        out.append(pb.StateTable(name=name, flags=info["flags"], key_size=info["key_size"],
                                 value_size=info["value_size"], capacity=info["capacity"],
                                 count=info["count"], entries=entries))
    return out


class PeerServicer(CheckpointPeer, FlowMoves, pb_grpc.PeerServicer):
    """serpens.v1.Peer: what other nodes' agents ask of this one: state for a node joining or
    leaving an SFC, eventual deltas (agent/peer_state.py), flows moving with their per-flow
    entries (FlowMoves, agent/peer_moves.py), checkpoints kept for other nodes
    (CheckpointPeer, agent/checkpoints.py)."""

    def __init__(self, node, receiver: peer_state.Receiver):
        FlowMoves.__init__(self, node)
        self.receiver = receiver

    def _running(self, sfc: str):
        entry = self.node.running.get(sfc)
        if entry is None:
            raise NoSuchSFC(f"node {self.node.spec.name} runs no SFC {sfc!r}")
        return entry

    @_handler
    async def Seed(self, request, context):
        if request.sfc not in self.node.running:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"sfc: node {self.node.spec.name} runs no SFC {request.sfc!r}")
        nfs = await asyncio.to_thread(peer_state.seed_tables, self.node, request.sfc)
        log.info("sfc %s: seeded %s: %s", request.sfc, request.node or "a peer",
                 ", ".join(f"{nf}: {', '.join(t for t, _ in tables)}" for nf, tables in nfs
                           if tables) or "no tables")
        return pb.SeedResponse(node=self.node.spec.name, nfs=peer_state.images(nfs))

    @_handler
    async def ReturnState(self, request_pieces, context):
        request = await bulk.assembled(request_pieces, pb.ReturnStateRequest, context)
        entry = self.node.running.get(request.sfc)
        if entry is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"sfc: node {self.node.spec.name} runs no SFC {request.sfc!r}")
        nfs = await asyncio.to_thread(peer_state.inflate, request.nfs)
        unknown = [nf for nf, _ in nfs if nf not in entry.spec.nfs]
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"nfs: SFC {request.sfc} has no NF {unknown[0]!r}")
        pools = 0
        for nf, tables in nfs:
            pools += await asyncio.to_thread(peer_state.install_tables, self.node.state,
                                             entry.spec.state_namespace(nf), tables)
        merged = await asyncio.to_thread(self.node.merge_state, request.sfc)
        log.info("sfc %s: %d pools returned by %s, merged by %d running instances",
                 request.sfc, pools, request.node or "a peer", merged)
        return pb.ReturnStateResponse(node=self.node.spec.name, tables=pools, merged=merged)

    @_handler
    async def SharePool(self, request, context):
        if request.sfc not in self.node.running:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"sfc: node {self.node.spec.name} runs no SFC {request.sfc!r}")
        split = asyncio.ensure_future(asyncio.to_thread(
            pool_rebalance.share_pool, self.node, request.sfc, request.nf, request.table))
        try:
            data, dry = await asyncio.shield(split)
        except pool_rebalance.NoSuchPool as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except asyncio.CancelledError:
            # the asker went (its deadline): the share, split off by then or later, must not
            # go with the call; it goes back into this node's pool
            split.add_done_callback(lambda done: self._keep_share(request, done))
            raise
        left = context.time_remaining()
        if data is not None and left is not None and left < SHARE_ANSWER_S:
            self._keep_share(request, split)  # (an answer this late may not arrive)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the share was split off {left * 1000:.0f} ms before the "
                                "deadline: kept here, ask again")
        if data is None:
            return pb.SharePoolResponse(node=self.node.spec.name, empty=True, dry=dry)
        log.info("sfc %s: a share of %s.%s for %s (its pool ran dry)", request.sfc,
                 request.nf, request.table, request.node or "a peer")
        [image] = peer_state.images([(request.nf, [(request.table, data)])])[0].tables
        return pb.SharePoolResponse(node=self.node.spec.name, share=image, dry=dry)

    def _keep_share(self, request, done: asyncio.Future):
        """A share split off for a SharePool whose caller went: back into our own pool (a
        returned pool, folded in by the NF's merge op as a peer's would be)."""
        if done.cancelled() or done.exception() is not None or done.result()[0] is None:
            return
        entry = self.node.running.get(request.sfc)
        if entry is None:
            log.error("sfc %s: a share of %s.%s split off for a caller that went, and the SFC "
                      "stopped meanwhile: lost", request.sfc, request.nf, request.table)
            return
        try:
            peer_state.install_tables(self.node.state, entry.spec.state_namespace(request.nf),
                                      [(request.table, done.result()[0])])
            log.info("sfc %s: a share of %s.%s kept (its asker went)", request.sfc,
                     request.nf, request.table)
            # (its running instances fold it in now, as after a ReturnState)
            asyncio.ensure_future(asyncio.to_thread(self.node.merge_state, request.sfc))
        except (OSError, peer_state.PeerStateError) as e:
            log.error("sfc %s: a share of %s.%s could not be kept: %s", request.sfc,
                      request.nf, request.table, e)

    @_handler
    async def PushDeltas(self, request, context):
        entry = self.node.running.get(request.sfc)
        if entry is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"sfc: node {self.node.spec.name} runs no SFC {request.sfc!r}")
        if request.nf not in entry.spec.nfs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"nf: SFC {request.sfc} has no NF {request.nf!r}")
        applied, n = await asyncio.to_thread(
            self.receiver.apply, entry.spec.state_namespace(request.nf), request.sfc, request)
        return pb.PushDeltasResponse(applied=applied, entries=n)
