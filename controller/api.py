"""The `serpens.v1.Serpens` servicer: desired state (NFs, SFCs, scale) in etcd.

Theory of operation
-------------------
Each NF and SFC is one JSON record under the store's prefix (`/serpens/v1/nfs/<name>`,
`/serpens/v1/sfcs/<name>`; nodes register under `nodes/`: common/keys.py), typed and encoded
by common/records.py. An SFC's record holds what the user asked for (spec, generation: bumped
when the spec changes, scale); what runs is the reconciler's, under `status/<name>`
(controller/reconciler.py), merged into replies here. Nothing is written before the
request is validated in full: an NF's source is compiled and verified against the NF ABI
exactly as an agent will (runtime_cy.builder), an SFC spec is parsed by common/spec.py and
every `nf: NAME` it names must be deployed. Writes are etcd transactions comparing the
`mod_revision` read (Store.put_if/delete_if), so two concurrent updates cannot silently
overwrite each other: a client-supplied `expected_revision` that does not match is ABORTED;
without one, the read-modify-write is retried a few times against fresh reads.

Input is bounded before it is parsed (common/limits.py): each request's size in its
deserializer (request_limits.py), then the spec's size, YAML anchors and nesting
(common/documents.py); Scale's replicas by a hard cap and the spec's scale. The spec is parsed
once, in a worker thread: this event loop also refreshes the leader's lease (store.py), and a
10 MB spec parsed on it (about a minute of pure-Python YAML) once cost the controller its
lease. A record under the prefix that is not JSON, or not the shape written here, is skipped
and reported (common/records.py): listed as a Failed SFC, replaced by an apply, removed by a
delete.

Errors map to status codes with a message naming the field (SpecError's path) or carrying the
compiler's/verifier's text; a store that does not answer within its timeout is UNAVAILABLE.

Known gap: DeleteNF checks the SFCs and then deletes, in two steps, so an SFC applied between
the two can name a just-deleted NF; the reconciler then keeps that SFC Pending, saying so.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import re
import time
from dataclasses import replace

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from serpens.common import bulk
from serpens.common.auth import peer
from serpens.common.documents import check_size
from serpens.common.keys import DEFAULT_PREFIX, Keys
from serpens.common.limits import LIMITS, capture_problem
from serpens.common.names import NF_NAME, NODE_NAME, SFC_NAME
from serpens.common.records import (CordonRecord, MalformedRecord, MoveRecord, NFRecord,
                                    NodeRecord, Reported, ScaleRecord, SFCRecord, SFCStatus,
                                    decode)
from serpens.common.rpc import Stubs
from serpens.common.spec import SpecError, parse_scale, parse_sfc
from serpens.common.store import Conflict, Store, StoreError, StoreUnavailable
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 5              # read-modify-write retries without an expected_revision
_USAGE_HISTORY_S = 24 * 3600   # how far back agents keep usage (agent/usage.py RETENTION_S)
_USAGE_FIELDS = ("packets", "bytes", "cpu_seconds", "state_byte_seconds")
WATCHES_PER_IDENTITY = 16  # Watch streams one certificate's identity may hold open at once
MEMO_ENTRIES = 4096  # reply messages kept (_memo): past this, all go (a List builds them again)


class _Abort(Exception):
    """A request refused with `code`; raised anywhere below a handler."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _handler(method):
    """Turn _Abort and store failures into status codes (DESIGN §4: never an error field)."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except _Abort as e:
            await context.abort(e.code, e.message)
        except StoreUnavailable as e:
            log.warning("%s: %s", method.__name__, e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the store is unavailable: {e}")
        except StoreError as e:
            log.error("%s: %s", method.__name__, e)
            await context.abort(grpc.StatusCode.INTERNAL, f"store error: {e}")
    return wrapper


def _source_bytes(value: bytes, name: str) -> int:
    """The size of a deployed NF's C source, as RunSFC carries it (0: a record not readable
    here, which the reconciler reports)."""
    try:
        return len(NFRecord.decode(value, name).source.encode())
    except MalformedRecord:
        return 0


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _check_name(name: str, pattern: re.Pattern, what: str) -> None:
    if not pattern.match(name or ""):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"name: {what} names are {pattern.pattern}, got {name!r}")


def _node_name(name: str, field: str) -> str:
    if not NODE_NAME.match(name or ""):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"{field}: node names are {NODE_NAME.pattern}, got {name!r}")
    return name


def _check_size(text: str, field: str, limit: int) -> None:
    try:
        check_size(text, field, limit)
    except SpecError as e:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None


def _build_nf(name: str, source: str) -> int:
    """Compile and verify as an agent will; the verified image's size. Runs in a thread."""
    from serpens.runtime_cy.builder import compile_nf, verify_nf
    so = compile_nf(source, name=name)
    verify_nf(so)
    return len(so)


def _scale_bounds(request, old: SFCRecord) -> tuple[int, int]:
    """[min, max] a Scale request leaves: explicit bounds, else the stored ones. An SFC whose
    spec declares `scale` keeps replicas and both bounds inside the spec's [min, max]; one
    without has its stored bounds widened to the replicas asked for (up to LIMITS.replicas,
    checked before)."""
    stored = old.scale
    try:
        policy = parse_scale((old.doc.get("spec") or {}).get("scale"))
    except SpecError:
        policy = None  # stored by an older version: its bounds as stored
    explicit_lo, explicit_hi = request.HasField("min_replicas"), request.HasField("max_replicas")
    if policy is None:
        lo = request.min_replicas if explicit_lo else min(stored.min, request.replicas)
        hi = request.max_replicas if explicit_hi else max(stored.max, request.replicas)
    else:
        lo = request.min_replicas if explicit_lo else stored.min
        hi = request.max_replicas if explicit_hi else stored.max
        for field, value in (("min_replicas", lo), ("max_replicas", hi),
                             ("replicas", request.replicas)):
            if not policy.min <= value <= policy.max:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"{field}: must lie in the spec's scale [min, max] = "
                             f"[{policy.min}, {policy.max}], got {value}")
    if not lo <= request.replicas <= hi:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"replicas: must lie in [min_replicas, max_replicas] = "
                     f"[{lo}, {hi}], got {request.replicas}")
    return lo, hi


def _scale_for(spec, old: ScaleRecord | None) -> ScaleRecord:
    """The SFC's scale record: the spec's policy bounds (if any) over the current replicas;
    `target_pps` (autoscaling) goes along for the reconciler."""
    scale = old or ScaleRecord(replicas=1, min=1, max=1)
    policy = spec.scale
    if policy is None:
        return replace(scale, target_pps=None)
    return replace(scale, min=policy.min, max=policy.max,
                   replicas=min(max(scale.replicas, policy.min), policy.max),
                   target_pps=policy.target_pps or None)


class SerpensServicer(pb_grpc.SerpensServicer):
    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX, build_concurrency: int = 2,
                 cache=None):
        """`cache`: a started controller/cache.py Cache of `prefix` to serve reads from
        (None: every read goes to etcd)."""
        self.store, self.keys = store, Keys(prefix)
        self.nfs_prefix, self.sfcs_prefix = self.keys.nfs, self.keys.sfcs
        self.nodes_prefix, self.status_prefix = self.keys.nodes, self.keys.statuses
        self.gateways_prefix, self.routes_prefix = self.keys.gateways, self.keys.routes
        self.cache = cache
        self._agents = Stubs(pb_grpc.AgentStub)   # ReadState and the other state calls
        self._messages: dict = {}
        self._watches: collections.Counter = collections.Counter()  # open, by identity
        self._reported = Reported()   # malformed records, logged once per revision
        # Compiles are a gcc process each; do not run more at once than there are CPUs.
        self._builds = asyncio.Semaphore(build_concurrency)

    # -- NFs --------------------------------------------------------------------------------

    @_handler
    async def DeployNF(self, request, context):
        _check_name(request.name, NF_NAME, "NF")
        _check_size(request.source, "source", LIMITS.nf_source_bytes)
        if not request.source.strip():
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "source: the NF's C source is empty")
        await self._check_users_fit(request.name, len(request.source.encode()))
        from serpens.runtime_cy.errors import NFBuildError, NFRefusedError
        async with self._builds:
            try:
                image_size = await asyncio.to_thread(_build_nf, request.name, request.source)
            except NFBuildError as e:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"source: {e}") from None
            except NFRefusedError as e:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"source: refused by the NF verifier: {e}") from None
        key = self.nfs_prefix + request.name

        def update(old: NFRecord | None) -> NFRecord:
            now = time.time()
            return NFRecord(name=request.name, description=request.description,
                            source=request.source, image_size=image_size,
                            source_sha256=hashlib.sha256(request.source.encode()).hexdigest(),
                            created=old.created if old else now, updated=now)
        value, revision = await self._write(key, update, request.expected_revision,
                                            replace=True)
        return self._nf(value, revision)

    def _chain_bytes(self, nf_items: dict, names, replacing: tuple[str, int] = ("", 0)) -> int:
        """The C source of the deployed NFs `names` together, as a RunSFC carries it (with
        `replacing`'s NF at its new size)."""
        return sum(replacing[1] if name == replacing[0] else
                   _source_bytes(nf_items[self.nfs_prefix + name].value, name)
                   if self.nfs_prefix + name in nf_items else 0 for name in names)

    async def _check_users_fit(self, name: str, size: int):
        """A new source of `size` bytes for NF `name` leaves every SFC naming it within
        LIMITS.chain_source_bytes (INVALID_ARGUMENT naming the first that it would not)."""
        sfcs, _ = await self.store.list(self.sfcs_prefix)
        users = [r for key, it in sorted(sfcs.items())
                 if (r := self._record(key, it, "sfc")) is not None and name in r.nfs]
        if not users:
            return
        nf_items, _ = await self.store.list(self.nfs_prefix)
        for sfc in users:
            total = self._chain_bytes(nf_items, set(sfc.nfs), (name, size))
            if total > LIMITS.chain_source_bytes:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"source: SFC {sfc.name} names this NF, and its deployed NFs "
                             f"would hold {total} bytes of C source together, at most "
                             f"{LIMITS.chain_source_bytes} (each of its servers is sent them)")

    @_handler
    async def GetNF(self, request, context):
        item = await self._read(self.nfs_prefix, request.name, "NF")
        return self._memo(("nf", request.name), (item.mod_revision,),
                          lambda: self._nf(self._record(self.nfs_prefix + request.name, item,
                                                        "nf", abort=True), item.mod_revision))

    @_handler
    async def ListNFs(self, request, context):
        items = await self._read_list(self.nfs_prefix)
        good = {key: (it, record) for key, it in sorted(items.items())
                if (record := self._record(key, it, "nf")) is not None}
        self._forget_memos("nf-listed", set(items))
        self._forget_memos("nf", {k[len(self.nfs_prefix):] for k in items})
        return pb.ListNFsResponse(nfs=[
            self._memo(("nf-listed", key), (it.mod_revision,),
                       lambda it=it, record=record: self._nf(record, it.mod_revision,
                                                             with_source=False))
            for key, (it, record) in good.items()])

    @_handler
    async def DeleteNF(self, request, context):
        await self._get(self.nfs_prefix, request.name, "NF", decoded=False)
        items, _ = await self.store.list(self.sfcs_prefix)
        records = [r for key, it in items.items()
                   if (r := self._record(key, it, "sfc")) is not None]
        users = sorted(r.name for r in records if request.name in r.nfs)
        if users:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"name: NF {request.name!r} is used by SFC {', '.join(users)}; "
                         "delete or change those first")
        return pb.DeleteNFResponse(revision=await self._delete(
            self.nfs_prefix, request.name, "NF", request.expected_revision))

    @staticmethod
    def _nf(value: NFRecord, revision: int, with_source: bool = True) -> pb.NF:
        return pb.NF(name=value.name, description=value.description,
                     source=value.source if with_source else "",
                     source_sha256=value.source_sha256, image_size=value.image_size,
                     revision=revision, created=_ts(value.created), updated=_ts(value.updated))

    # -- SFCs -------------------------------------------------------------------------------

    @_handler
    async def ApplySFC(self, request, context):
        _check_size(request.spec, "spec", LIMITS.spec_bytes)  # before a thread is taken
        try:
            # Off the event loop: the leader's lease keep-alive shares it (store.py).
            spec = await asyncio.to_thread(parse_sfc, request.spec, allow_source=False)
        except SpecError as e:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        deployed = {nf.name: nf.deployed for nf in spec.nfs.values() if nf.deployed}
        if deployed:
            items, _ = await self.store.list(self.nfs_prefix)
            for nf_name, target in deployed.items():
                if self.nfs_prefix + target not in items:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"spec.nfs.{nf_name}.nf: no deployed NF named {target!r}")
            sources = self._chain_bytes(items, set(deployed.values()))
            if sources > LIMITS.chain_source_bytes:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"spec.nfs: the deployed NFs it names hold {sources} bytes of C "
                             f"source together, at most {LIMITS.chain_source_bytes} (each "
                             "server running the SFC is sent them all)")
        doc = spec.document

        def update(old: SFCRecord | None) -> SFCRecord:
            now = time.time()
            generation = 1 if old is None else old.generation + (old.doc != doc)
            return SFCRecord(name=spec.name, spec=request.spec, doc=doc,
                             nfs=tuple(sorted(set(deployed.values()))), generation=generation,
                             scale=_scale_for(spec, old.scale if old else None),
                             created=old.created if old else now, updated=now)
        value, revision = await self._write(self.sfcs_prefix + spec.name, update,
                                            request.expected_revision, replace=True)
        return self._sfc(value, revision, await self._status(spec.name))

    @_handler
    async def GetSFC(self, request, context):
        item = await self._read(self.sfcs_prefix, request.name, "SFC")
        status = await self._read(self.status_prefix, request.name, None)
        route = await self._read(self.routes_prefix, request.name, None)
        return self._sfc_memo(request.name, item, status, route)

    @_handler
    async def ListSFCs(self, request, context):
        items = await self._read_list(self.sfcs_prefix)
        status = await self._read_list(self.status_prefix)
        routes = await self._read_list(self.routes_prefix)
        self._forget_memos("sfc", {k[len(self.sfcs_prefix):] for k in items})
        return pb.ListSFCsResponse(sfcs=[
            self._sfc_memo(name, it, status.get(self.status_prefix + name),
                           routes.get(self.routes_prefix + name))
            for name, it in ((k[len(self.sfcs_prefix):], it) for k, it in sorted(items.items()))])

    def _sfc_memo(self, name: str, item, status, route=None) -> pb.SFC:
        return self._memo(("sfc", name), (item.mod_revision, status and status.mod_revision,
                                          route and route.mod_revision),
                          lambda: self._sfc_or_malformed(name, item, status, route))

    def _sfc_or_malformed(self, name: str, item, status, route=None) -> pb.SFC:
        """The SFC's message (with its route, when it has one); for a record this controller
        cannot read, one that says so (phase Failed) instead of failing the whole reply."""
        key = self.sfcs_prefix + name
        try:
            sfc = self._sfc(SFCRecord.decode(item.value, name), item.mod_revision, status)
            route = route and self._record(self.routes_prefix + name, route, "route")
            if route is not None:
                sfc.route.CopyFrom(route.to_message())
            return sfc
        except MalformedRecord as e:
            self._reported(key, item.mod_revision, e)
            return pb.SFC(name=name, revision=item.mod_revision, status=pb.SFCStatus(
                phase="Failed", message=f"malformed record {key} skipped: {e}; apply the SFC "
                "again or delete it"))

    async def _status(self, name: str):
        return await self.store.get(self.status_prefix + name)

    @_handler
    async def DeleteSFC(self, request, context):
        return pb.DeleteSFCResponse(revision=await self._delete(
            self.sfcs_prefix, request.name, "SFC", request.expected_revision))

    @_handler
    async def Scale(self, request, context):
        for field in ("replicas", "min_replicas", "max_replicas"):
            value = getattr(request, field)
            if value > LIMITS.replicas:  # before anything is read
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"{field}: at most {LIMITS.replicas} (instances of one SFC), "
                             f"got {value}")
        await self._get(self.sfcs_prefix, request.sfc, "SFC", field="sfc")

        def update(old: SFCRecord | None) -> SFCRecord:
            if old is None:  # deleted since the check above
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"sfc: no SFC named {request.sfc!r}")
            lo, hi = _scale_bounds(request, old)
            now = time.time()
            return replace(old, scale=replace(old.scale, replicas=request.replicas, min=lo,
                                              max=hi, changed_at=now), updated=now)
        value, revision = await self._write(self.sfcs_prefix + request.sfc, update, 0)
        return self._sfc(value, revision, await self._status(request.sfc))

    @staticmethod
    def _sfc(value: SFCRecord, revision: int, status=None) -> pb.SFC:
        """The record, with the reconciler's status record (an Item, or None: not yet)."""
        scale = value.scale
        if status is None:
            status = pb.SFCStatus(phase="Pending", message="not placed yet")
        else:
            try:
                status = SFCStatus.decode(status.value).to_message()
            except MalformedRecord as e:
                status = pb.SFCStatus(phase="Unknown", message=f"malformed status record: {e}")
        return pb.SFC(name=value.name, spec=value.spec,
                      spec_json=json.dumps(value.doc, sort_keys=True), nfs=value.nfs,
                      scale=pb.ScaleSpec(replicas=scale.replicas, min_replicas=scale.min,
                                         target_pps=scale.target_pps or 0,
                                         max_replicas=scale.max),
                      status=status, revision=revision, generation=value.generation,
                      created=_ts(value.created), updated=_ts(value.updated))

    # -- nodes ------------------------------------------------------------------------------

    @_handler
    async def ListNodes(self, request, context):
        items = await self._read_list(self.nodes_prefix)
        cordoned = {key[len(self.keys.cordons):]
                    for key in await self._read_list(self.keys.cordons)}
        return pb.ListNodesResponse(nodes=[
            pb.Node(name=(name := key[len(self.nodes_prefix):]), record_json=it.value.decode(),
                    revision=it.mod_revision, cordoned=name in cordoned)
            for key, it in sorted(items.items())])

    # -- drain and move (issue 14; the leader does the moving: controller/drain.py) ----------

    @_handler
    async def DrainNode(self, request, context):
        node = _node_name(request.node, "node")
        item = await self.store.get(self.nodes_prefix + node)
        key = self.keys.cordon(node)
        if await self.store.get(key) is None:
            if item is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"node: no node named {node!r} is registered")
            with contextlib.suppress(Conflict):  # cordoned meanwhile: as good
                revision = await self.store.put_if(
                    key, CordonRecord(node=node, since=time.time()).encode(), 0)
                if self.cache is not None:
                    self.cache.wrote(revision)
                log.info("node %s cordoned: its SFCs move off it", node)
        return self._drain_reply(node, item, True)

    @_handler
    async def UndrainNode(self, request, context):
        node = _node_name(request.node, "node")
        item = await self.store.get(self.nodes_prefix + node)
        cordon = await self.store.get(self.keys.cordon(node))
        if cordon is None and item is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"node: no node named {node!r} is "
                                                    "registered or cordoned")
        if cordon is not None:
            with contextlib.suppress(Conflict):  # lifted meanwhile: as good
                revision = await self.store.delete_if(self.keys.cordon(node),
                                                      cordon.mod_revision)
                if self.cache is not None:
                    self.cache.wrote(revision)
                log.info("node %s no longer cordoned", node)
        return self._drain_reply(node, item, False)

    def _drain_reply(self, node: str, item, cordoned: bool) -> pb.DrainNodeResponse:
        record = self._record(self.nodes_prefix + node, item, "node") if item else None
        return pb.DrainNodeResponse(node=node, cordoned=cordoned,
                                    sfcs=sorted(record.load.sfcs) if record else [])

    @_handler
    async def MoveSFC(self, request, context):
        if not SFC_NAME.match(request.sfc or ""):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"sfc: SFC names are {SFC_NAME.pattern}, got {request.sfc!r}")
        node = _node_name(request.node, "node")
        await self._get(self.sfcs_prefix, request.sfc, "SFC", field="sfc", decoded=False)
        item = await self.store.get(self.nodes_prefix + node)
        if item is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND,
                         f"node: no node named {node!r} is registered")
        if await self.store.get(self.keys.cordon(node)) is not None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"node: {node} is cordoned (drained); undrain it first")
        record: NodeRecord = self._record(self.nodes_prefix + node, item, "node", abort=True)
        if record.underlay is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"node: {node} has no underlay address: it cannot serve an SFC "
                         "through the gateway")
        if await self.store.get(self.keys.route(request.sfc)) is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"sfc: {request.sfc} is served from its node's own ports, not "
                         "through the gateway: only routed SFCs move with their flows")
        status_item = await self.store.get(self.status_prefix + request.sfc)
        status = self._record(self.status_prefix + request.sfc, status_item, "status") \
            if status_item else None
        serving = sorted(dict(status.nodes)) if status and status.nodes else \
            ([status.node] if status and status.node else [])
        revision = await self.store.put(self.keys.move(request.sfc), MoveRecord(
            sfc=request.sfc, node=node, asked_at=time.time(),
            sources=tuple(serving)).encode())
        if self.cache is not None:
            self.cache.wrote(revision)
        log.info("sfc %s: move to node %s asked (from %s)", request.sfc, node,
                 ", ".join(serving) or "nowhere")
        return pb.MoveSFCResponse(sfc=request.sfc, node=node, **{"from": serving})

    @_handler
    async def ListGateways(self, request, context):
        items = await self._read_list(self.gateways_prefix)
        return pb.ListGatewaysResponse(gateways=[
            pb.GatewayInfo(name=key[len(self.gateways_prefix):], record_json=it.value.decode(),
                           revision=it.mod_revision) for key, it in sorted(items.items())])

    # -- state and events -------------------------------------------------------------------

    @_handler
    async def ReadState(self, request, context):
        return await self._on_node(request.sfc, "ReadState", request, timeout=30,
                                   node=request.node)

    @_handler
    async def SnapshotState(self, request, context):
        return await self._on_node(request.sfc, "SnapshotState", request, timeout=120,
                                   node=request.node)

    @_handler
    async def RestoreState(self, request_pieces, context):
        data = await bulk.received(request_pieces, context)
        request = await bulk.parsed(data, pb.RestoreStateRequest, context)
        sfc, node = request.sfc, request.node
        del request   # (only its names are needed here: the node is sent the bytes as they came)
        return await self._on_node(sfc, "RestoreState", bulk.pieces(data), timeout=120,
                                   node=node)

    @_handler
    async def ResetState(self, request, context):
        return await self._on_node(request.sfc, "ResetState", request, timeout=60,
                                   node=request.node)

    async def _node_of(self, sfc: str, node: str = "") -> tuple[str, NodeRecord]:
        """The node running SFC `sfc` now (`node`, one of the servers of an SFC served by
        several; else its first) and its record; FAILED_PRECONDITION if none."""
        await self._read(self.sfcs_prefix, sfc, "SFC")
        item = await self._read(self.status_prefix, sfc, None)
        status: SFCStatus | None = \
            self._record(self.status_prefix + sfc, item, "status") if item else None
        if node and status and status.node:
            serving = [n for n, _ in status.nodes] or [status.node]
            if node not in serving:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                             f"node: SFC {sfc} runs on {', '.join(serving)}, not on {node!r}")
        node = node or (status.node if status else "")
        item = await self._read(self.nodes_prefix, node, None) if node else None
        record: NodeRecord | None = \
            self._record(self.nodes_prefix + node, item, "node") if item else None
        if record is None or status.phase not in ("Running", "Degraded"):
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"sfc: {sfc} runs on no node now")
        return node, record

    async def Capture(self, request, context):
        """Agent.Capture on the node running the SFC, relayed event by event; cancelled with
        the client (the agent's stream ends, and its capture points go off)."""
        problem = capture_problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            node, record = await self._node_of(request.sfc, request.node)
        except _Abort as e:
            await context.abort(e.code, e.message)
        except StoreError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the store: {e}")
        call = self._agents[record.address].Capture(
            request, timeout=(request.seconds or 60.0) + 30)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as e:
            code = e.code() if e.code() in (grpc.StatusCode.NOT_FOUND,
                                            grpc.StatusCode.INVALID_ARGUMENT,
                                            grpc.StatusCode.FAILED_PRECONDITION) \
                else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, f"node {node}: {e.details()}")
        finally:
            call.cancel()

    async def _on_node(self, sfc: str, method: str, request, timeout: float, node: str = ""):
        """Agent.`method`(request) on the node running SFC `sfc` (`node`: that one of its
        servers): FAILED_PRECONDITION if it runs nowhere now (or not there), the agent's
        NOT_FOUND/INVALID_ARGUMENT/RESOURCE_EXHAUSTED/DATA_LOSS, else UNAVAILABLE."""
        node, record = await self._node_of(sfc, node)
        try:
            return await getattr(self._agents[record.address], method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code() if e.code() in (grpc.StatusCode.NOT_FOUND,
                                            grpc.StatusCode.INVALID_ARGUMENT,
                                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            grpc.StatusCode.DATA_LOSS,
                                            grpc.StatusCode.FAILED_PRECONDITION) \
                else grpc.StatusCode.UNAVAILABLE
            raise _Abort(code, f"node {node}: {e.details()}") from None

    # -- usage ------------------------------------------------------------------------------

    @_handler
    async def GetUsage(self, request, context):
        """Agent.GetUsage on every registered node, at once, summed per SFC: usage stays
        with the node that metered it, so nodes that ran an SFC before it moved count too."""
        if request.sfc and not SFC_NAME.match(request.sfc):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"sfc: not an SFC name: {request.sfc!r}")
        if request.HasField("since"):
            since = request.since.ToSeconds()
            if since > time.time() + 60:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "since: in the future")
            if since < time.time() - _USAGE_HISTORY_S:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             "since: at most 24 h back (the agents' per-minute history)")
        nodes = {}
        for key, item in (await self._read_list(self.nodes_prefix)).items():
            record = self._record(key, item, "node")
            if record is not None:
                nodes[record.name] = record.address
        names = sorted(nodes)
        replies = await asyncio.gather(
            *(self._agents[nodes[n]].GetUsage(request, timeout=10) for n in names),
            return_exceptions=True)
        reply = pb.GetUsageResponse()
        rows: dict[str, pb.SFCUsage] = {}
        for name, got in zip(names, replies):
            if isinstance(got, grpc.aio.AioRpcError):
                reply.unreachable.append(f"{name}: {got.code().name}: {got.details()}")
                continue
            if isinstance(got, BaseException):
                reply.unreachable.append(f"{name}: {got!r}")
                continue
            if got.HasField("since") and not reply.HasField("since"):
                reply.since.CopyFrom(got.since)
            for s in got.sfcs:
                row = rows.setdefault(s.sfc, pb.SFCUsage(sfc=s.sfc))
                row.nodes[name].CopyFrom(s.total)
                for f in _USAGE_FIELDS:
                    setattr(row.total, f, getattr(row.total, f) + getattr(s.total, f))
        if request.sfc and not rows:
            if await self._read(self.sfcs_prefix, request.sfc, None) is not None:
                rows[request.sfc] = pb.SFCUsage(sfc=request.sfc, total=pb.Usage())  # none yet
            elif not reply.unreachable:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"sfc: no SFC named {request.sfc!r}, "
                             "and no node reports usage of one")
        if request.HasField("since") and not reply.HasField("since"):
            reply.since.FromSeconds(request.since.ToSeconds() // 60 * 60)
        reply.sfcs.extend(rows[n] for n in sorted(rows))
        reply.read_at.GetCurrentTime()
        return reply

    async def Watch(self, request, context):
        """Not _handler-wrapped: an async generator (a stream)."""
        if self.cache is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this controller has no watch")
        who = peer(context)
        who = who.name if who else ""   # ("": plain text on loopback, no identity)
        if self._watches[who] >= WATCHES_PER_IDENTITY:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"watch: {who or 'this caller'} has {WATCHES_PER_IDENTITY} "
                                "watches open, the most one identity may hold")
        self._watches[who] += 1
        queue = self.cache.subscribe()
        kinds = {self.nfs_prefix: "nf", self.sfcs_prefix: "sfc",
                 self.status_prefix: "status", self.nodes_prefix: "node"}
        try:
            while True:
                ev = await queue.get()
                if ev.type == "reset":
                    yield pb.WatchEvent(type="reset", revision=ev.mod_revision)
                    continue
                for prefix, kind in kinds.items():
                    if ev.key.startswith(prefix):
                        break
                else:
                    continue  # the leader key
                body = ""
                if ev.value is not None:
                    try:
                        record = decode(kind, ev.value).to_dict()
                        record.pop("source", None)  # an NF's: large, and read by GetNF
                    except MalformedRecord as e:
                        record = {"malformed": str(e)}
                    body = json.dumps(record, sort_keys=True)
                yield pb.WatchEvent(type=ev.type, kind=kind, name=ev.key[len(prefix):],
                                    revision=ev.mod_revision, json=body)
        finally:
            self.cache.unsubscribe(queue)
            self._watches[who] -= 1
            if not self._watches[who]:
                del self._watches[who]

    # -- reads: from the watch-fed cache when it can be trusted (controller/cache.py) -------

    async def _read(self, prefix: str, name: str, what: str | None):
        """The item `prefix + name`; NOT_FOUND (naming `what`) if absent, or None if `what`
        is None."""
        key = prefix + name
        if name and self.cache is not None and await self.cache.ready():
            item = self.cache.get(key)
        else:
            item = await self.store.get(key) if name else None
        if item is None and what is not None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"name: no {what} named {name!r}")
        return item

    async def _read_list(self, prefix: str) -> dict:
        if self.cache is not None and await self.cache.ready():
            return self.cache.list(prefix)
        items, _ = await self.store.list(prefix)
        return items

    def _memo(self, key, revisions: tuple, build):
        """Reply messages built once per record revision (a List repeats most of them)."""
        hit = self._messages.get(key)
        if hit is None or hit[0] != revisions:
            if len(self._messages) >= MEMO_ENTRIES:  # (records deleted through other
                self._messages.clear()               # replicas, never listed since)
            hit = self._messages[key] = (revisions, build())
        return hit[1]

    def _forget_memos(self, kind: str, live: set):
        """Drop the memos of `kind` whose record a List no longer finds (deleted, possibly
        through another replica)."""
        for key in [k for k in self._messages if k[0] == kind and k[1] not in live]:
            del self._messages[key]

    # -- records ----------------------------------------------------------------------------

    def _record(self, key: str, item, kind: str, abort: bool = False):
        """The record stored as `item` (common/records.py), or None if malformed (reported;
        with `abort`, FAILED_PRECONDITION instead)."""
        try:
            return decode(kind, item.value, self.keys.split(key)[1])
        except MalformedRecord as e:
            self._reported(key, item.mod_revision, e)
            if abort:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                             f"name: the record {key} is malformed ({e}); write it again "
                             "or delete it") from None
            return None

    async def _get(self, prefix: str, name: str, what: str, field: str = "name",
                   decoded: bool = True):
        item = await self.store.get(prefix + name) if name else None
        if item is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{field}: no {what} named {name!r}")
        record = self._record(prefix + name, item, what.lower(), abort=True) if decoded else None
        return record, item.mod_revision

    async def _write(self, key: str, update, expected: int,
                     replace: bool = False) -> tuple[NFRecord | SFCRecord, int]:
        """put_if(update(current)) comparing the revision read (or `expected`, if given)."""
        for _ in range(_CAS_ATTEMPTS):
            item = await self.store.get(key)
            current = item.mod_revision if item else 0
            if expected and expected != current:
                raise _Abort(grpc.StatusCode.ABORTED,
                             f"expected_revision: {key} is at revision {current}, "
                             f"not {expected}")
            # `replace` (apply, deploy): a malformed record is replaced as if absent.
            kind = "nf" if key.startswith(self.nfs_prefix) else "sfc"
            old = self._record(key, item, kind, abort=not replace) if item else None
            value = update(old)
            try:
                revision = await self.store.put_if(key, value.encode(), current)
                if self.cache is not None:
                    self.cache.wrote(revision)
                return value, revision
            except Conflict:
                if expected:
                    raise _Abort(grpc.StatusCode.ABORTED,
                                 f"expected_revision: {key} changed concurrently") from None
        raise _Abort(grpc.StatusCode.ABORTED, f"{key}: changed concurrently "
                     f"{_CAS_ATTEMPTS} times; try again")

    async def _delete(self, prefix: str, name: str, what: str, expected: int) -> int:
        _, current = await self._get(prefix, name, what, decoded=False)  # even if malformed
        if expected and expected != current:
            raise _Abort(grpc.StatusCode.ABORTED,
                         f"expected_revision: {what} {name!r} is at revision {current}, "
                         f"not {expected}")
        try:
            revision = await self.store.delete_if(prefix + name, current)
        except Conflict:
            raise _Abort(grpc.StatusCode.ABORTED,
                         f"name: {what} {name!r} changed while deleting; try again") from None
        if self.cache is not None:
            self.cache.wrote(revision)
        self._messages.pop((what.lower(), name), None)
        return revision
