"""Moving flows with their per-flow state, the agents' part (issue 14 item 3, docs/moves.md).

The gateway holds the moving flows' packets and sends this node (the source) a marker, an ARP
request for its underlay address carrying the move's marker id (runtime_cy/src/vxlan.h),
behind the last frame of them it sent here. Peer.MoveFlows then, on the source:
1. waits until the router recorded that id (the link is FIFO: every frame of those flows is
   in the router now; any other ARP request is no marker of this move), lets the loop come round twice, waits until the SFC holds nothing for
   a starting instance, and until every instance of the SFC returned what it had been given
   (enqueued + pending then): no packet of a moving flow is in the node any more, so no NF
   writes their entries;
2. reads the moving flows' entries of every per-flow table of the SFC's NFs (all of them, or
   those whose key, a struct serpens_flow, hashes into the moved Maglev slots with the
   gateway's own function, dp.gateway_flow_slots);
3. sends them to the target's agent in chunks (Peer.ImportFlows, at most CHUNK_BYTES each),
   which inserts them into its tables of the same name and shape (made when it has none);
   no instance of the target touches them meanwhile: their packets are held at the gateway;
4. deletes them here once the target took all of them; if it did not, asks it to forget what
   it took (ImportFlows undo) and fails: the flows stay here with their state.
A partial move needs every per-flow table keyed by flow; `check` asks just that, before the
gateway holds anything. release and eventual tables do not move with flows (xstate's
StopSFC return_to hands them over).
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from serpens.common import rpc
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc
from serpens.runtime_cy import _dataplane as dp

log = logging.getLogger(__name__)

FLOW_KEY_SIZE = 40          # struct serpens_flow (serpens/nf.h)
CHUNK_BYTES = 1 << 20       # keys + values per ImportFlows message
DEFAULT_TIMEOUT_MS = 5000
_ACTIVE, _DRAINING = 1, 2   # router.h serpens_instance_state: instances given packets


class MoveRefused(Exception):
    """This move cannot be made (the message names why); nothing was touched."""


class NotQuiet(TimeoutError):
    """The source did not finish the moving flows' packets in time."""


def per_flow_tables(state, namespaces: dict[str, str]) -> list[tuple[str, str, str, dict]]:
    """[(nf, namespace, table, info)] of every per-flow table in the NF namespaces
    `namespaces` ({namespace: nf}) of StateManager `state`."""
    out = []
    for owner, name in state.tables():
        if owner not in namespaces or "@" in name:
            continue
        table = state.open(owner, name)
        try:
            info = table.info
        finally:
            table.close()
        if info["flags"] & dp.PER_FLOW:
            out.append((namespaces[owner], owner, name, info))
    return out


def sfc_tables(node, sfc: str) -> list[tuple[str, str, str, dict]]:
    """per_flow_tables() of `sfc`'s NFs on agent Node `node`."""
    entry = node.running.get(sfc)
    if entry is None:
        raise LookupError(f"sfc: node {node.spec.name} runs no SFC {sfc!r}")
    return per_flow_tables(node.state,
                           {entry.spec.state_namespace(nf): nf for nf in entry.spec.nfs})


def check_partial(tables: list[tuple[str, str, str, dict]], sfc: str | None = None):
    """MoveRefused unless every table is keyed by a flow (a partial move selects entries by
    their key's Maglev slot)."""
    for nf, _, name, info in tables:
        if info["key_size"] != FLOW_KEY_SIZE:
            raise MoveRefused(
                f"slots: per-flow table {name} of NF {nf}{f' in SFC {sfc}' if sfc else ''} "
                f"is keyed by "
                f"{info['key_size']}-byte keys, not a flow (struct serpens_flow, "
                f"{FLOW_KEY_SIZE} bytes): its entries move only with all of the SFC's flows")


def wait_quiet(router, sfc_id: int, marker: int, deadline: float) -> float:
    """Wait until the gateway's marker `marker` (its id) arrived at `router` (a dp.Router) and
    no packet of its SFC `sfc_id` received before it is left in the node (step 1 above);
    returns the seconds waited."""
    start = time.monotonic()

    def until(done, what):
        while not done():
            if time.monotonic() > deadline:
                raise NotQuiet(f"{what} (after {time.monotonic() - start:.3f} s)")
            time.sleep(0.0002)

    until(lambda: marker in router.markers(), f"the gateway's marker {marker} did not arrive")
    if not router.quiesce(max(0.001, deadline - time.monotonic())):
        raise NotQuiet("the router did not come round")
    until(lambda: router.held(sfc_id) == 0, "packets still wait for an instance to start")
    st = router.stats()
    owed = {i: c["enqueued"] + c["pending"] for i, c in st["instances"].items()
            if c["sfc"] == sfc_id and c["state"] in (_ACTIVE, _DRAINING)}

    def returned():
        now = router.stats()["instances"]
        return all(i not in now or now[i]["state"] not in (_ACTIVE, _DRAINING)
                   or now[i]["returned"] >= want for i, want in owed.items())
    until(returned, "the SFC's instances did not finish the moving flows' packets")
    return time.monotonic() - start


def export(state, tables, slots: set[int] | None, gateway_sfc: int) -> list:
    """[(nf, namespace, table, info, keys, values)] of the moving flows' entries in `tables`
    (per_flow_tables()): their keys and their values, each back to back (bytes). With
    `slots`, every table must be keyed by a flow (MoveRefused: check_partial())."""
    if slots is not None:
        check_partial(tables)
    out = []
    for nf, namespace, name, info in tables:
        table = state.open(namespace, name)
        try:
            keys, values = table.dump()
        finally:
            table.close()
        if slots is not None and keys:
            keys, values = dp.gateway_flow_select(gateway_sfc, keys, values, slots)
        out.append((nf, namespace, name, info, keys, values))
    return out


def entries(info: dict, keys: bytes) -> int:
    """How many entries `keys` (back to back) holds."""
    return len(keys) // info["key_size"]


def delete(state, namespace: str, name: str, keys: bytes) -> int:
    """Delete the entries of `keys` (back to back; those an NF's own expiry removed meanwhile
    are not counted); returns how many were deleted."""
    table = state.open(namespace, name)
    try:
        return table.delete_many(keys)
    finally:
        table.close()


def insert(state_dir: str, namespace: str, name: str, info: dict, keys, values,
           undo: bool = False) -> int:
    """Put (undo: delete) entries into table `name` of `namespace`, made with `info`'s shape
    when absent; MoveRefused when it has another shape (flags, sizes, capacity). `keys` and
    `values`: lists of bytes, or each all of them back to back."""
    ks, vs = info["key_size"], info["value_size"]
    try:
        table = dp.StateTable(state_dir, namespace, name, info["flags"], ks, vs,
                              info["capacity"])
    except FileExistsError as e:   # the target's table of that name has another shape
        raise MoveRefused(f"table: {e.strerror}") from None
    blob = keys if isinstance(keys, bytes) else b"".join(keys)
    try:
        if undo:
            table.delete_many(blob)
        else:
            table.put_many(blob, values if isinstance(values, bytes) else b"".join(values))
    finally:
        table.close()
    return len(blob) // ks


def chunks(keys: bytes, values: bytes, key_size: int, value_size: int):
    """(keys, values) of at most CHUNK_BYTES each time, whole entries."""
    step = max(1, CHUNK_BYTES // max(1, key_size + value_size))
    for i in range(0, len(keys) // key_size, step):
        yield (keys[i * key_size:(i + step) * key_size],
               values[i * value_size:(i + step) * value_size])


def import_chunk(node, request) -> int:
    """Insert (undo: delete) the chunk's entries into this node's table."""
    entry = node.running.get(request.sfc)
    if entry is None:
        raise LookupError(f"sfc: node {node.spec.name} runs no SFC {request.sfc!r}")
    if request.nf not in entry.spec.nfs:
        raise MoveRefused(f"nf: SFC {request.sfc} has no NF {request.nf!r} here")
    ks, vs = request.key_size, request.value_size
    n = len(request.keys) // ks if ks else 0
    if not ks or len(request.keys) != n * ks or \
            (not request.undo and len(request.values) != n * vs):
        raise ValueError("keys/values: not whole entries of key_size/value_size bytes")
    if not request.flags & dp.PER_FLOW:
        raise ValueError(f"flags: table {request.table} is not a per-flow table")
    info = {"flags": request.flags, "key_size": ks, "value_size": vs,
            "capacity": request.capacity}
    return insert(node.state.state_dir, entry.spec.state_namespace(request.nf), request.table,
                  info, request.keys, request.values, undo=request.undo)


class FlowMoves:
    """Peer.MoveFlows and Peer.ImportFlows (a part of the agent's Peer servicer)."""

    def __init__(self, node):
        self.node = node
        self.peers = rpc.Stubs(pb_grpc.PeerStub)

    async def MoveFlows(self, request, context):
        node = self.node
        if request.sfc not in node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"sfc: node {node.spec.name} runs no SFC {request.sfc!r}")
        slots = set(request.slots) or None
        if slots and max(slots) >= dp.GW_MAGLEV:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"slots: Maglev slots are 0..{dp.GW_MAGLEV - 1}")
        if not request.check and not request.target.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target.address: empty")
        if not request.check and not request.marker:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "marker: 0 (the id of the gateway's marker, HoldFlowsResponse)")
        tables = await asyncio.to_thread(sfc_tables, node, request.sfc)
        if slots:
            try:
                check_partial(tables, request.sfc)
            except MoveRefused as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if request.check:
            return pb.MoveFlowsResponse(tables=len(tables))
        deadline = time.monotonic() + (request.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        try:
            waited = await asyncio.to_thread(self._wait_quiet, request, deadline)
        except NotQuiet as e:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"source: {e}")
        moving = await asyncio.to_thread(export, node.state, tables, slots,
                                         request.gateway_sfc)
        target = self.peers[request.target.address]
        sent = []
        try:
            for nf, _, name, info, keys, values in moving:
                for ks, vs in chunks(keys, values, info["key_size"], info["value_size"]):
                    msg = pb.ImportFlowsRequest(
                        sfc=request.sfc, nf=nf, table=name, flags=info["flags"],
                        key_size=info["key_size"], value_size=info["value_size"],
                        capacity=info["capacity"], keys=ks, values=vs)
                    sent.append(msg)
                    await target.ImportFlows(msg, timeout=max(0.05, deadline - time.monotonic()))
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            why = e.details() if isinstance(e, grpc.aio.AioRpcError) else "timed out"
            await self._undo(target, sent)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"target {request.target.node or request.target.address}: "
                                f"{why}; nothing moved")
        entries = 0
        for _, namespace, name, _, keys, _ in moving:
            entries += await asyncio.to_thread(delete, node.state, namespace, name, keys)
        log.info("sfc %s: %d per-flow entries of %d tables moved to %s (waited %.1f ms)",
                 request.sfc, entries, len(moving), request.target.node, waited * 1000)
        return pb.MoveFlowsResponse(entries=entries, tables=len(moving),
                                    wait_us=int(waited * 1e6))

    def _wait_quiet(self, request, deadline: float) -> float:
        entry = self.node.running.get(request.sfc)
        router = self.node.router
        if entry is None or router is None:
            raise NotQuiet(f"SFC {request.sfc} stopped")
        return wait_quiet(router, entry.sfc_id, request.marker, deadline)

    async def _undo(self, target, sent):
        for msg in sent:
            undo = pb.ImportFlowsRequest()
            undo.CopyFrom(msg)
            undo.undo, undo.values = True, b""
            try:
                await target.ImportFlows(undo, timeout=2)
            except grpc.aio.AioRpcError as e:
                log.warning("undoing an import of %s on the target: %s", msg.table, e.details())

    async def ImportFlows(self, request, context):
        try:
            n = await asyncio.to_thread(import_chunk, self.node, request)
        except LookupError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except MoveRefused as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except OSError as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"table {request.table}: {e.strerror or e}")
        return pb.ImportFlowsResponse(entries=n)
