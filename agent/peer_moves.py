"""Moving flows with their per-flow state, the agents' part (issue 14 item 3, docs/moves.md).

The gateway holds the moving flows' packets and sends this node (the source) a marker, an ARP
request for its underlay address carrying the move's marker id (runtime_cy/src/vxlan.h),
behind the last frame of them it sent here. Peer.MoveFlows then, on the source:
1. waits until the router recorded that id (the link is FIFO: every frame of those flows is
   in the router now; any other ARP request is no marker of this move) and its loop began
   another iteration since (those frames were dispatched), until the SFC holds nothing for a
   starting instance (Router.quiet), and until every instance of the SFC is done with what
   it had been given then (Router.owed): no packet of a moving flow is in the node any more,
   so no NF writes their entries;
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
import errno
import logging
import os
import secrets
import threading
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
SNAPSHOT_S = 60.0           # a prepared move's Snapshot is kept this long at most
MAX_SNAPSHOTS = 8           # prepared moves kept at once per node (the oldest is closed)


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


def by_value(info: dict) -> bool:
    """Is the table's flow its value's first 40 bytes (SERPENS_FLOW_VALUE), not its key?"""
    return bool(info["flags"] & dp.FLOW_VALUE)


def slot_selectable(info: dict) -> bool:
    """Can a move of some flows (by the gateway's Maglev slots) pick this table's entries:
    keyed by a flow, or SERPENS_FLOW_VALUE?"""
    return info["key_size"] == FLOW_KEY_SIZE or \
        (by_value(info) and info["value_size"] >= FLOW_KEY_SIZE)


def check_partial(tables: list[tuple[str, str, str, dict]], sfc: str | None = None):
    """MoveRefused unless every table is keyed by a flow or SERPENS_FLOW_VALUE (a partial
    move selects entries by their flow's Maglev slot)."""
    for nf, _, name, info in tables:
        if not slot_selectable(info):
            raise MoveRefused(
                f"slots: per-flow table {name} of NF {nf}{f' in SFC {sfc}' if sfc else ''} "
                f"is keyed by "
                f"{info['key_size']}-byte keys, not a flow (struct serpens_flow, "
                f"{FLOW_KEY_SIZE} bytes), and its values do not begin with one "
                f"(SERPENS_FLOW_VALUE): its entries move only with all of the SFC's flows")


def select(gateway_sfc: int, info: dict, keys: bytes, values: bytes, slots) -> tuple:
    """(keys, values) of the entries whose flow is in the Maglev `slots`."""
    if not keys:
        return keys, values
    return dp.gateway_flow_select(gateway_sfc, keys, values, slots, info["key_size"],
                                  by_value(info))


def flow_slots(gateway_sfc: int, info: dict, keys: bytes, values: bytes):
    """The Maglev slot of each entry's flow (an array of ints, -1: no IP flow)."""
    if by_value(info):
        return dp.gateway_flow_slots(gateway_sfc, values, info["value_size"])
    return dp.gateway_flow_slots(gateway_sfc, keys)


# wait_quiet's polls: what it waits for usually ends within 0.1-0.2 ms (the instances'
# batches), so it sleeps 20 us between polls for the first 0.5 ms (~90 us with the kernel's
# default 50 us timer slack; 200 us sleeps made a wave's hold 0.15 ms longer), then 200 us
# (an instance starting, a stalled CPU).
POLL_S, POLL_FINE_S, POLL_COARSE_S = 0.00002, 0.0005, 0.0002


def wait_quiet(router, sfc_id: int, marker: int, deadline: float) -> float:
    """Wait until the gateway's marker `marker` (its id) arrived at `router` (a dp.Router) and
    no packet of its SFC `sfc_id` received before it is left in the node (step 1 above);
    returns the seconds waited."""
    start = time.monotonic()

    def until(done, what):
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise NotQuiet(f"{what} (after {now - start:.3f} s)")
            time.sleep(POLL_S if now - start < POLL_FINE_S else POLL_COARSE_S)

    until(lambda: router.marker_passed(marker),
          f"the gateway's marker {marker} did not arrive (or the router stopped)")
    until(lambda: router.quiet(sfc_id), "packets still wait for an instance to start")
    owed = {i: given for i, (given, _) in router.owed(sfc_id).items()}

    def returned():   # (an instance no longer given packets has nothing of theirs)
        now = router.owed(sfc_id)
        return all(i not in now or now[i][1] >= want for i, want in owed.items())
    until(returned, "the SFC's instances did not finish the moving flows' packets")
    return time.monotonic() - start


def export(state, tables, slots: set[int] | None, gateway_sfc: int,
           opened: OpenTables | None = None) -> list:
    """[(nf, namespace, table, info, keys, values)] of the moving flows' entries in `tables`
    (per_flow_tables()): their keys and their values, each back to back (bytes). With
    `slots`, every table must be keyed by a flow (MoveRefused: check_partial()). `opened`:
    the tables kept open there."""
    if slots is not None:
        check_partial(tables)
    out = []
    for nf, namespace, name, info in tables:
        if opened is not None:
            keys, values = opened.get(state.state_dir, namespace, name).dump()
        else:
            table = state.open(namespace, name)
            try:
                keys, values = table.dump()
            finally:
                table.close()
        if slots is not None:
            keys, values = select(gateway_sfc, info, keys, values, slots)
        out.append((nf, namespace, name, info, keys, values))
    return out


PREPARE_PAUSE_S = 0.0001    # Snapshot's read, between its steps (~0.18 ms with timer slack)


class Snapshot:
    """The keys of an SFC's per-flow tables read once before a move's first hold, each with
    its flow's Maglev slot, so that each wave's export (taking()) looks up its own keys and
    those inserted since (the table's insert log) instead of reading every table whole
    during the hold: a table's read is bound by its size (~1 ms for 65536 entries here),
    a lookup by the entries moved. The tables must be slot-selectable (check_partial).
    The read pauses PREPARE_PAUSE_S between its steps: it comes before any hold, so the
    pauses delay no moving flow, and on a CPU shared with instances it never keeps the CPU
    from them for more than one step (one table's dump: ~0.2 ms for 10k entries here)."""

    def __init__(self, state, tables, gateway_sfc: int):
        check_partial(tables)
        self.gateway_sfc = gateway_sfc
        self.taken: set[int] = set()
        self.lock = threading.Lock()   # a wave's reads and close() never overlap
        # [nf, namespace, name, info, table, since, keys, slots_of, taken_then, by_slot]
        self.tables = []
        self.inodes: list[int] = []   # of the tables' files: one made again is another table
        try:
            for nf, namespace, name, info in tables:
                table = state.open(namespace, name)   # kept open: each wave reads it
                populate(table)
                self.tables.append([nf, namespace, name, info, table, 0, b"", None, set(),
                                    None])
                self.inodes.append(os.stat(table.path).st_ino)
                self._read(self.tables[-1], pause=lambda: time.sleep(PREPARE_PAUSE_S))
        except BaseException:
            self.close()
            raise

    def _read(self, t: list, pause=lambda: None):
        """(Re)read table t's keys and their slots (and the keys grouped by slot: a wave
        takes its own without a scan of all), where its insert log starts, and which slots
        had moved by then (a key of theirs read now is a flow that came since); `pause()`
        between the steps."""
        table, info = t[4], t[3]
        pause()
        since = table.inserts     # before the read: an insert during it is logged
        keys, values = table.dump()
        pause()
        slots_of = flow_slots(self.gateway_sfc, info, keys, values)
        pause()
        t[5:] = [since, keys, slots_of, set(self.taken),
                 dp.gateway_keys_by_slot(keys, info["key_size"], slots_of)]

    def close(self):
        with self.lock:
            for t in self.tables:
                t[4].close()
            self.tables = []

    @property
    def entries(self) -> int:
        return sum(entries(t[3], t[6]) for t in self.tables)

    def taking(self, slots: list[int] | None) -> list:
        """export() of the flows in `slots` (None: every flow not taken by an earlier wave),
        once they are quiet: their keys read before, and those inserted since, looked up.
        took(slots) once they moved."""
        with self.lock:
            if not self.tables:
                raise MoveRefused("the move's snapshot was closed (it expired)")
            return [self._take(t, inode, slots) for t, inode in zip(self.tables, self.inodes)]

    def _take(self, t: list, inode: int, slots) -> tuple:
        nf, namespace, name, info, table = t[:5]
        try:
            same = os.stat(table.path).st_ino == inode
        except FileNotFoundError:
            same = False
        if not same:
            raise MoveRefused(f"table {name} of NF {nf} was removed or made again since "
                              "the move began (its SFC restarted)")
        logged = table.logged_keys(t[5])
        if logged is None:        # more inserts than the log keeps: read the table again
            self._read(t)
            logged = table.logged_keys(t[5])
            if logged is None:    # overflowed even now (inserts racing the read): all of it
                logged = table.dump()[0]
        since, keys, slots_of, taken_then, (grouped, starts) = t[5:]
        ks = info["key_size"]
        if slots is None:    # (the keys of slots taken after the read are gone from here)
            mine = dp.gateway_keys_in(keys, ks, slots_of, self.taken - taken_then,
                                      invert=True)
        else:
            mine = dp.gateway_keys_of(grouped, ks, starts, slots)
        ks_, vs_ = table.get_many(mine + logged)
        if slots is not None:
            ks_, vs_ = select(self.gateway_sfc, info, ks_, vs_, slots)
        return (nf, namespace, name, info, ks_, vs_)

    def took(self, slots: list[int]):
        """The flows of `slots` moved: a last wave (taking(None)) leaves them out."""
        self.taken.update(slots)


def entries(info: dict, keys: bytes) -> int:
    """How many entries `keys` (back to back) holds."""
    return len(keys) // info["key_size"]


def populate(table):
    """Map a table kept open across waves whole now: mapped afresh, every page an entry lands
    on would fault in during a wave's hold (about 1 ms for a wave's thousand entries here,
    more than their copy). Best effort: a kernel without MADV_POPULATE_WRITE faults later."""
    try:
        table.populate()
    except OSError as e:
        log.debug("%s: not populated (%s)", table.path, e.strerror)


def same_shape(table, info: dict | None):
    """FileExistsError unless `table` has the shape `info` asks (as opening it with that
    shape would say; SERPENS_FLOW_VALUE apart: state_table.c attach())."""
    if info is None:
        return
    have = table.info
    if (have["flags"] | dp.FLOW_VALUE, have["key_size"], have["value_size"],
            have["capacity"]) != (info["flags"] | dp.FLOW_VALUE, info["key_size"],
                                  info["value_size"], info["capacity"]):
        raise FileExistsError(errno.EEXIST, f"{table.path} exists with flags "
                              f"{have['flags']:#x} key {have['key_size']} value "
                              f"{have['value_size']} capacity {have['capacity']} (asked "
                              f"{info['flags']:#x} {info['key_size']} {info['value_size']} "
                              f"{info['capacity']})")


class OpenTables:
    """State tables kept open across a move's waves. A table opened afresh is mapped afresh,
    and every page an entry then lands on faults in: about 1 ms for a wave's thousand
    entries here, more than the copy. A file made again meanwhile (its SFC restarted) is
    opened again."""

    def __init__(self, idle_s: float = SNAPSHOT_S):
        self.tables: dict[str, tuple[int, dp.StateTable]] = {}   # path: (inode, table)
        self.idle_s, self.used = idle_s, time.monotonic()
        self.lock = threading.Lock()

    def get(self, state_dir: str, namespace: str, name: str, info: dict | None = None):
        """The table (made with `info`'s shape when absent: FileExistsError when it has
        another; FileNotFoundError without `info`); all are closed after idle_s unused."""
        with self.lock:
            if time.monotonic() - self.used > self.idle_s:
                self._close()
            self.used = time.monotonic()
            return self._get(state_dir, namespace, name, info)

    def _get(self, state_dir: str, namespace: str, name: str, info: dict | None):
        path = os.path.join(state_dir, namespace, name + ".tbl")
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            inode = None
        known = self.tables.pop(path, None)
        if known is not None:
            if known[0] == inode:
                self.tables[path] = known
                same_shape(known[1], info)
                return known[1]
            known[1].close()
        shape = () if info is None else (info["flags"], info["key_size"], info["value_size"],
                                         info["capacity"])
        table = dp.StateTable(state_dir, namespace, name, *shape)
        self.tables[path] = (os.stat(path).st_ino, table)
        populate(table)
        return table

    def close(self):
        with self.lock:
            self._close()

    def _close(self):
        for _, table in self.tables.values():
            table.close()
        self.tables.clear()


def delete(state, namespace: str, name: str, keys: bytes,
           tables: OpenTables | None = None) -> int:
    """Delete the entries of `keys` (back to back; those an NF's own expiry removed meanwhile
    are not counted); returns how many were deleted. `tables`: kept open there."""
    if tables is not None:
        return tables.get(state.state_dir, namespace, name).delete_many(keys)
    table = state.open(namespace, name)
    try:
        return table.delete_many(keys)
    finally:
        table.close()


def insert(state_dir: str, namespace: str, name: str, info: dict, keys, values,
           undo: bool = False, tables: OpenTables | None = None) -> int:
    """Put (undo: delete) entries into table `name` of `namespace`, made with `info`'s shape
    when absent; MoveRefused when it has another shape (flags, sizes, capacity). `keys` and
    `values`: lists of bytes, or each all of them back to back. `tables`: kept open there."""
    ks = info["key_size"]
    cache = tables or OpenTables()
    try:
        table = cache.get(state_dir, namespace, name, info)
    except FileExistsError as e:   # the target's table of that name has another shape
        raise MoveRefused(f"table: {e.strerror}") from None
    blob = keys if isinstance(keys, bytes) else b"".join(keys)
    try:
        if undo:
            table.delete_many(blob)
        else:
            table.put_many(blob, values if isinstance(values, bytes) else b"".join(values))
    finally:
        if tables is None:
            cache.close()
    return len(blob) // ks


def chunks(keys: bytes, values: bytes, key_size: int, value_size: int):
    """(keys, values) of at most CHUNK_BYTES each time, whole entries."""
    step = max(1, CHUNK_BYTES // max(1, key_size + value_size))
    for i in range(0, len(keys) // key_size, step):
        yield (keys[i * key_size:(i + step) * key_size],
               values[i * value_size:(i + step) * value_size])


def import_chunk(node, request, tables: OpenTables | None = None) -> int:
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
                  info, request.keys, request.values, undo=request.undo, tables=tables)


class FlowMoves:
    """Peer.MoveFlows and Peer.ImportFlows (a part of the agent's Peer servicer)."""

    def __init__(self, node):
        self.node = node
        self.peers = rpc.Stubs(pb_grpc.PeerStub)
        # prepared moves: id -> (sfc, Snapshot), each closed after SNAPSHOT_S at most
        self.snapshots: dict[int, tuple[str, Snapshot]] = {}
        self.tables = OpenTables()   # imported into (target), deleted from (source)

    def _keep(self, sfc: str, snap: Snapshot) -> int:
        while len(self.snapshots) >= MAX_SNAPSHOTS:   # the oldest goes
            self._drop(next(iter(self.snapshots)))
        sid = secrets.randbits(63) or 1
        self.snapshots[sid] = (sfc, snap)
        asyncio.get_running_loop().call_later(
            SNAPSHOT_S, lambda: asyncio.ensure_future(asyncio.to_thread(self._drop, sid)))
        return sid

    def _drop(self, sid: int):
        """Close snapshot `sid` (waits for a wave reading it: Snapshot.lock)."""
        _, snap = self.snapshots.pop(sid, (None, None))
        if snap is not None:
            snap.close()

    async def MoveFlows(self, request, context):
        node = self.node
        if request.sfc not in node.running:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"sfc: node {node.spec.name} runs no SFC {request.sfc!r}")
        slots = set(request.slots) or None
        if slots and max(slots) >= dp.GW_MAGLEV:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"slots: Maglev slots are 0..{dp.GW_MAGLEV - 1}")
        transfer = not (request.check or request.prepare)
        if transfer and not request.target.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target.address: empty")
        if transfer and not request.marker:
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
        if request.prepare:
            try:
                snap = await asyncio.to_thread(Snapshot, node.state, tables,
                                               request.gateway_sfc)
            except MoveRefused as e:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            except (ValueError, OverflowError) as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"gateway_sfc: {e}")
            return pb.MoveFlowsResponse(entries=snap.entries, tables=len(tables),
                                        snapshot=self._keep(request.sfc, snap))
        deadline = time.monotonic() + (request.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        try:
            waited = await asyncio.to_thread(self._wait_quiet, request, deadline)
        except NotQuiet as e:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"source: {e}")
        sid, moving = request.snapshot, None
        sfc_of, snap = self.snapshots.get(sid, (None, None))
        if snap is not None and (sfc_of != request.sfc or
                                 snap.gateway_sfc != request.gateway_sfc):
            snap = None   # another move's
        if snap is not None:
            try:
                moving = await asyncio.to_thread(snap.taking, sorted(slots or ()) or None)
            except MoveRefused as e:   # a table made again, or it expired: read them whole
                log.warning("sfc %s: %s", request.sfc, e)
                await asyncio.to_thread(self._drop, sid)
                snap = None
        elif sid:
            log.warning("sfc %s: no snapshot %d here (expired?): the tables are read whole",
                        request.sfc, sid)
        if moving is None:
            moving = await asyncio.to_thread(export, node.state, tables, slots,
                                             request.gateway_sfc, self.tables)
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
            if snap is not None:   # the move failed: a later one reads the tables afresh
                await asyncio.to_thread(self._drop, sid)
            await self._undo(target, sent)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"target {request.target.node or request.target.address}: "
                                f"{why}; nothing moved")
        entries = 0
        for _, namespace, name, _, keys, _ in moving:
            entries += await asyncio.to_thread(delete, node.state, namespace, name, keys,
                                               self.tables)
        if snap is not None:
            if slots:
                snap.took(slots)
            else:          # the last wave
                await asyncio.to_thread(self._drop, sid)
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
            n = await asyncio.to_thread(import_chunk, self.node, request, self.tables)
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
