"""Checkpoints against node loss (issue 14 item 4; docs/state.md "Checkpoints").

An SFC whose spec says `state: {checkpoint_s: N}` runs with RunSFC `checkpoint_to` (a peer
node the controller picked). Every N s this node's Checkpointer asks the SFC's instances to
merge (merge request: eventual replicas into the shared tables, release shares back to their
pools, between batches), reads every NF's shared tables, and ships to the peer only the pages
that differ from the last checkpoint the peer acknowledged (Peer.PutCheckpoint, zlib'd pages
in bounded messages). The peer's CheckpointStore makes the new checkpoint whole (its last one
plus the pages) in a file beside the old and renames it over it: a stream cut short, a page
missing or a base that is not the peer's changes nothing, and the sender then sends it whole.

Consistency: the copy is taken while the instances run (stopping them every N s would stop
the SFC's traffic), right after they merged. A value is what the table held at some moment
between the merge and the end of the copy; an entry published before the merge is there
(slots are published by their signature, written last and read first). Counters only grow, so
a restored counter lies between its value at the merge and at the copy's end. Per-instance
replicas are not copied (what they counted after the merge is in the next checkpoint), nor are
release shares held at the copy (instances split them again on their next use): a restored
pool lacks at most those shares, and never hands out a resource twice.

After a lost node, RunSFC comes with `restore_from` (the peer) and `restore_of` (the lost
node): the agent pulls that checkpoint (Peer.GetCheckpoint) and installs each NF's tables
(StateManager.replace_nf) before the SFC is applied, so before its first instance starts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass

import grpc

from serpens.common import rpc
from serpens.common.names import NODE_NAME, SFC_NAME
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.proto.serpens.v1 import serpens_pb2_grpc as pb_grpc

from .state_manager import StateError
from .state_manager import _write_file as write_file   # tables' way: fallocate, then mmap

log = logging.getLogger(__name__)

PAGE = 4096
PAGES_PER_MESSAGE = 128          # 512 KiB of pages a message at most (before zlib)
MAX_CHECKPOINT_BYTES = 256 << 20  # one checkpoint's tables, in all
MAX_CHECKPOINTS = 64             # (node, SFC) pairs a peer keeps
MAX_STORE_BYTES = 1 << 30        # all of a peer's checkpoints
_FILE_MAGIC = b"SRPSCKP1"
_PUT_TIMEOUT = 30.0


class CheckpointError(Exception):
    """A checkpoint this peer cannot take or give (the message says why)."""


class WrongBase(CheckpointError):
    """The pages apply to another checkpoint than the one this peer keeps."""


class OverBounds(CheckpointError):
    """Over the peer's bounds (one checkpoint's size, their count or their total size)."""


@dataclass
class Checkpoint:
    seq: int
    taken_unix_ms: int
    tables: dict                 # (nf, table) -> bytes

    def size(self) -> int:
        return sum(len(d) for d in self.tables.values())


# ---- the page diff ------------------------------------------------------------------------

def changed_pages(old: bytes | None, new: bytes, page: int = PAGE) -> list[int]:
    """The pages of `new` that differ from `old` (all of them when there is no `old` or its
    length differs: a table of another size is another table)."""
    n = -(-len(new) // page)
    if old is None or len(old) != len(new):
        return list(range(n))
    a, b = memoryview(old), memoryview(new)
    return [i for i in range(n) if a[i * page:(i + 1) * page] != b[i * page:(i + 1) * page]]


def apply_pages(base: bytes | None, size: int, pages: dict[int, bytes],
                page: int = PAGE) -> bytes:
    """`base` with `pages` (index -> bytes) written over it, `size` bytes long; every page
    `base` cannot give (none, or of another size) must be among `pages`."""
    n = -(-size // page)
    reuse = base is not None and len(base) == size
    if not reuse and set(pages) != set(range(n)):
        raise CheckpointError(f"a table of {size} bytes needs all its {n} pages, got "
                              f"{len(pages)}")
    out = bytearray(base) if reuse else bytearray(size)
    for i, data in pages.items():
        if not 0 <= i < n or len(data) != min(page, size - i * page):
            raise CheckpointError(f"page {i}: {len(data)} bytes does not fit a table of "
                                  f"{size} bytes")
        out[i * page:i * page + len(data)] = data
    return bytes(out)


# ---- the peer's store ---------------------------------------------------------------------

class CheckpointStore:
    """The last complete checkpoint of each (node, SFC) this peer was sent: one file each,
    `<root>/<node>/<sfc>.ckpt`, replaced by rename only once the new one is whole."""

    def __init__(self, root: str, max_bytes: int = MAX_CHECKPOINT_BYTES,
                 max_count: int = MAX_CHECKPOINTS, max_total: int = MAX_STORE_BYTES):
        self.root, self.max_bytes, self.max_count = root, max_bytes, max_count
        self.max_total = max_total

    def path(self, node: str, sfc: str) -> str:
        if not NODE_NAME.match(node or ""):
            raise CheckpointError(f"node: {node[:64]!r} is not a node name")
        if not SFC_NAME.match(sfc or ""):
            raise CheckpointError(f"sfc: {sfc[:64]!r} is not an SFC name")
        return os.path.join(self.root, node, sfc + ".ckpt")

    def _files(self) -> dict[str, int]:
        """path -> size of every checkpoint kept."""
        out = {}
        if os.path.isdir(self.root):
            for node in os.listdir(self.root):
                folder = os.path.join(self.root, node)
                for name in os.listdir(folder) if os.path.isdir(folder) else ():
                    if name.endswith(".ckpt") and not name.startswith("."):
                        p = os.path.join(folder, name)
                        out[p] = os.path.getsize(p)
        return out

    def load(self, node: str, sfc: str) -> Checkpoint | None:
        try:
            with open(self.path(node, sfc), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        if data[:8] != _FILE_MAGIC or len(data) < 12:
            raise CheckpointError(f"checkpoint of {node}/{sfc}: not a checkpoint file")
        (n,) = struct.unpack_from("<I", data, 8)
        meta = json.loads(data[12:12 + n])
        tables, at = {}, 12 + n
        for nf, table, size in meta["tables"]:
            tables[(nf, table)] = data[at:at + size]
            at += size
        if at > len(data):   # (beyond `at`: the filesystem's padding to a whole block)
            raise CheckpointError(f"checkpoint of {node}/{sfc}: {len(data)} bytes, not {at}")
        return Checkpoint(meta["seq"], meta["taken_unix_ms"], tables)

    def put(self, header: pb.CheckpointHeader, pages: dict[int, dict[int, bytes]]) -> Checkpoint:
        """Make the checkpoint `header` describes (its tables, `pages` by table index then page
        index over the base's) and keep it instead of the last one. WrongBase when the base is
        not the one kept, OverBounds past the bounds, CheckpointError for pages that do not
        make whole tables; nothing is changed then."""
        path = self.path(header.node, header.sfc)
        if header.page_size != PAGE:
            raise CheckpointError(f"page_size: {header.page_size}, this peer takes {PAGE}")
        size = sum(t.size for t in header.tables)
        if size > self.max_bytes:
            raise OverBounds(f"checkpoint of {header.node}/{header.sfc}: {size} bytes, over "
                             f"the {self.max_bytes} a checkpoint may have")
        files = self._files()
        if path not in files and len(files) >= self.max_count:
            raise OverBounds(f"this peer keeps {len(files)} checkpoints, its most")
        if sum(files.values()) - files.get(path, 0) + size > self.max_total:
            raise OverBounds(f"this peer's checkpoints would take over {self.max_total} bytes")
        old = self.load(header.node, header.sfc)
        if header.base_seq and (old is None or old.seq != header.base_seq):
            raise WrongBase(f"checkpoint of {header.node}/{header.sfc}: pages over "
                            f"{header.base_seq}, this peer keeps "
                            f"{old.seq if old else 'none'}")
        base = old.tables if header.base_seq else {}
        tables = {}
        for i, t in enumerate(header.tables):
            if (t.nf, t.table) in tables or not t.table or "/" in t.table:
                raise CheckpointError(f"tables[{i}]: {t.nf}/{t.table}: a bad or second name")
            tables[(t.nf, t.table)] = apply_pages(base.get((t.nf, t.table)), t.size,
                                                  pages.get(i, {}))
        if set(pages) - set(range(len(header.tables))):
            raise CheckpointError("pages of a table the header does not list")
        new = Checkpoint((old.seq if old else 0) + 1, header.taken_unix_ms, tables)
        self._write(path, new)
        return new

    def _write(self, path: str, ck: Checkpoint):
        """Write `ck` beside `path` and rename it over it: whole, or the last one stays. As
        the state manager writes tables (a full filesystem is StateFilesystemFull with
        nothing left behind; hugetlbfs, whose files are written through a mapping and sized
        in whole pages, works too)."""
        meta = json.dumps({"seq": ck.seq, "taken_unix_ms": ck.taken_unix_ms,
                           "tables": [[nf, t, len(d)] for (nf, t), d in ck.tables.items()]}
                          ).encode()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
        try:
            write_file(tmp, b"".join([_FILE_MAGIC, struct.pack("<I", len(meta)), meta,
                                      *ck.tables.values()]))
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def drop(self, node: str, sfc: str) -> bool:
        try:
            os.unlink(self.path(node, sfc))
            return True
        except FileNotFoundError:
            return False


# ---- messages -----------------------------------------------------------------------------

def chunks(header: pb.CheckpointHeader, tables: list[bytes], pages: list[list[int]]):
    """The stream of a checkpoint: the header, then the pages (`pages[i]`: the indices of
    table i to send), at most PAGES_PER_MESSAGE a message."""
    yield pb.CheckpointChunk(header=header)
    batch = []
    for i, data in enumerate(tables):
        for index in pages[i]:
            batch.append(pb.CheckpointPage(table=i, index=index, zdata=zlib.compress(
                data[index * PAGE:(index + 1) * PAGE], 1)))
            if len(batch) == PAGES_PER_MESSAGE:
                yield pb.CheckpointChunk(pages=batch)
                batch = []
    if batch:
        yield pb.CheckpointChunk(pages=batch)


async def received(stream) -> tuple[pb.CheckpointHeader, dict[int, dict[int, bytes]]]:
    """The header and pages of a checkpoint stream; CheckpointError when it is not one (no
    header first, more pages than it says, a page that inflates past PAGE bytes), OverBounds
    for more pages than its tables have or tables over MAX_CHECKPOINT_BYTES (checked before
    any page is taken in)."""
    header, pages, count = None, {}, 0
    async for chunk in stream:
        if header is None:
            if not chunk.HasField("header"):
                raise CheckpointError("the first message has no header")
            header = chunk.header
            whole_pages = sum(-(-t.size // PAGE) for t in header.tables)
            if sum(t.size for t in header.tables) > MAX_CHECKPOINT_BYTES or \
                    header.pages > whole_pages:
                raise OverBounds(f"{header.pages} pages of {len(header.tables)} tables: over "
                                 f"the tables' {whole_pages} pages or {MAX_CHECKPOINT_BYTES} "
                                 "bytes")
            continue
        for p in chunk.pages:
            count += 1
            if count > header.pages:
                raise CheckpointError(f"more pages than the {header.pages} the header says")
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(p.zdata, PAGE + 1)
            except zlib.error as e:
                raise CheckpointError(f"page {p.table}/{p.index}: {e}") from None
            if len(data) > PAGE or not inflater.eof:
                raise CheckpointError(f"page {p.table}/{p.index}: not one page")
            pages.setdefault(p.table, {})[p.index] = data
    if header is None:
        raise CheckpointError("an empty stream")
    if count != header.pages:
        raise CheckpointError(f"{count} pages of the {header.pages} the header says")
    return header, pages


# ---- the peer side (Peer service methods) -------------------------------------------------

class CheckpointPeer:
    """Peer.PutCheckpoint and Peer.GetCheckpoint over the node's CheckpointStore (in
    `.checkpoints` of its state directory: never in etcd). A base of the agent's Peer
    servicer; `self.node` is the Node."""

    node = None

    @property
    def checkpoints(self) -> CheckpointStore:
        return store_of(self.node)

    async def PutCheckpoint(self, request_iterator, context):
        try:
            header, pages = await received(request_iterator)
            if header.drop:
                await asyncio.to_thread(self.checkpoints.drop, header.node, header.sfc)
                log.info("checkpoint of %s/%s dropped", header.node, header.sfc)
                return pb.PutCheckpointResponse()
            ck = await asyncio.to_thread(self.checkpoints.put, header, pages)
        except WrongBase as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except OverBounds as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except CheckpointError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (OSError, StateError) as e:   # StateFilesystemFull: the filesystem is full
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"checkpoint: {e}")
        return pb.PutCheckpointResponse(seq=ck.seq, bytes=ck.size())

    async def GetCheckpoint(self, request, context):
        try:
            ck = await asyncio.to_thread(self.checkpoints.load, request.node, request.sfc)
        except CheckpointError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if ck is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no checkpoint of {request.node}/{request.sfc} on "
                                f"{self.node.spec.name}")
        for chunk in await asyncio.to_thread(lambda: list(whole(request.node, request.sfc,
                                                                ck))):
            yield chunk


def store_of(node) -> CheckpointStore:
    return CheckpointStore(os.path.join(node.dataplane.config.state_dir, ".checkpoints"))


def whole(node: str, sfc: str, ck: Checkpoint):
    """A checkpoint as a stream of all its pages."""
    names, data = list(ck.tables), list(ck.tables.values())
    pages = [list(range(-(-len(d) // PAGE))) for d in data]
    header = pb.CheckpointHeader(
        node=node, sfc=sfc, seq=ck.seq, taken_unix_ms=ck.taken_unix_ms, page_size=PAGE,
        pages=sum(map(len, pages)),
        tables=[pb.CheckpointTable(nf=nf, table=t, size=len(d))
                for (nf, t), d in zip(names, data)])
    return chunks(header, data, pages)


# ---- the node running the SFC -------------------------------------------------------------

def take(node, sfc: str) -> dict:
    """(nf, table) -> bytes of SFC `sfc`'s shared tables, right after its instances merged
    (the consistency the module's docstring gives)."""
    node.merge_state(sfc)
    spec = node.running[sfc].spec
    state = node.state
    out = {}
    for nf in spec.nfs:
        namespace = spec.state_namespace(nf)
        for owner, table in state.tables():
            if owner == namespace and "@" not in table:
                try:
                    with open(state.path(namespace, table), "rb") as f:
                        out[(nf, table)] = f.read()
                except FileNotFoundError:
                    pass  # dropped meanwhile (a reset)
    return out


@dataclass
class _Job:
    peer: pb.PeerRef
    period_s: int
    task: asyncio.Task | None = None
    acked: dict | None = None       # the tables as the peer's checkpoint `seq` has them
    seq: int = 0
    taken_unix_ms: int = 0          # of the last acknowledged checkpoint
    drop_after: tuple | None = None  # (peer, node) of a checkpoint restored from: dropped
                                     # once this node's own first checkpoint is acknowledged
    error: str = ""                 # why the last one failed ("" once one succeeds)


class Checkpointer:
    """This node's checkpoint shipping: one task per SFC with a checkpoint peer."""

    def __init__(self, node):
        self.node = node
        self.jobs: dict[str, _Job] = {}
        self.peers = rpc.Stubs(pb_grpc.PeerStub)
        self.restored: dict[str, tuple[str, int, str]] = {}  # sfc -> (of, age ms, words)

    def follow(self, sfc: str, peer: pb.PeerRef | None, period_s: int):
        """Checkpoint `sfc` to `peer` every `period_s` (no peer or period: stop)."""
        job = self.jobs.get(sfc)
        if job is not None and peer is not None and period_s and \
                (job.peer.node, job.peer.address, job.period_s) == \
                (peer.node, peer.address, period_s):
            return
        drop_after = job.drop_after if job else None
        self.stop(sfc, drop=job is not None and (peer is None or job.peer.node != peer.node))
        if peer is None or not peer.node or not period_s:
            return
        job = self.jobs[sfc] = _Job(pb.PeerRef(node=peer.node, address=peer.address),
                                    period_s, drop_after=drop_after)
        job.task = asyncio.get_running_loop().create_task(self._run(sfc, job),
                                                          name=f"checkpoint-{sfc}")

    def stop(self, sfc: str, drop: bool = True):
        """No more checkpoints of `sfc`; with `drop` the peer deletes the one it keeps."""
        job = self.jobs.pop(sfc, None)
        if job is None:
            return
        job.task.cancel()
        if drop:
            asyncio.get_running_loop().create_task(
                self._drop(job.peer, self.node.spec.name, sfc, after=job.task))

    def forget(self, sfc: str):
        """`sfc` stopped here: no more checkpoints, the peer's one deleted."""
        self.stop(sfc, drop=True)
        self.restored.pop(sfc, None)

    async def _drop(self, peer: pb.PeerRef, node: str, sfc: str,
                    after: asyncio.Task | None = None):
        """Have `peer` delete its checkpoint of (`node`, `sfc`), once `after` (the SFC's
        checkpoint task, cancelled) has ended: no checkpoint of it is in flight then."""
        if after is not None:
            await asyncio.wait([after])
        if peer.node == self.node.spec.name:   # this node keeps it
            await asyncio.to_thread(store_of(self.node).drop, node, sfc)
            return
        header = pb.CheckpointHeader(node=node, sfc=sfc, drop=True, page_size=PAGE)
        try:
            await self.peers[peer.address].PutCheckpoint(
                iter([pb.CheckpointChunk(header=header)]), timeout=5)
        except grpc.aio.AioRpcError as e:
            log.warning("dropping the checkpoint of %s/%s on %s: %s", node, sfc, peer.node,
                        e.details())

    async def _run(self, sfc: str, job: _Job):
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # every period_s from the start (a slow checkpoint does not push the next ones
            # later; one that takes longer than a period skips to the next due time)
            due += job.period_s
            while due < loop.time():
                due += job.period_s
            await asyncio.sleep(due - loop.time())
            try:
                await self.ship(sfc, job)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    job.acked, job.seq = None, 0   # the peer has another base: whole next
                job.error = f"{e.code().name}: {e.details()}"   # for the SFC's status
                log.warning("checkpoint of %s to %s: %s: %s", sfc, job.peer.node,
                            e.code().name, e.details())
            except Exception as e:  # noqa: BLE001 - a failed checkpoint is retried next period
                job.error = str(e) or type(e).__name__
                log.warning("checkpoint of %s to %s failed: %s", sfc, job.peer.node, e)

    async def ship(self, sfc: str, job: _Job):
        """Take a checkpoint of `sfc` and send the peer what changed since the last it
        acknowledged."""
        if sfc not in self.node.running:
            return
        taken = int(time.time() * 1000)
        tables = await asyncio.to_thread(take, self.node, sfc)
        size = sum(map(len, tables.values()))
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{size} bytes of tables, over the {MAX_CHECKPOINT_BYTES} "
                                  "a checkpoint may have")
        names, data = list(tables), list(tables.values())
        base = job.acked if job.seq else None
        pages = await asyncio.to_thread(
            lambda: [changed_pages(base.get(k) if base else None, d) for k, d in tables.items()])
        header = pb.CheckpointHeader(
            node=self.node.spec.name, sfc=sfc, base_seq=job.seq if base else 0,
            taken_unix_ms=taken, page_size=PAGE, pages=sum(map(len, pages)),
            tables=[pb.CheckpointTable(nf=nf, table=t, size=len(d))
                    for (nf, t), d in zip(names, data)])
        # compressed off the event loop (a first, whole checkpoint may be large)
        messages = await asyncio.to_thread(lambda: list(chunks(header, data, pages)))
        reply = await self.peers[job.peer.address].PutCheckpoint(iter(messages),
                                                                 timeout=_PUT_TIMEOUT)
        job.acked, job.seq, job.taken_unix_ms, job.error = tables, reply.seq, taken, ""
        # (a whole one is said: the first, or after the peer lost the base; the rest are not)
        log.log(logging.INFO if base is None else logging.DEBUG,
                "checkpoint %d of %s to %s: %s, %d of %d pages", reply.seq, sfc, job.peer.node,
                "whole" if base is None else "incremental", header.pages,
                sum(-(-len(d) // PAGE) for d in data))
        if job.drop_after is not None:
            (peer, of), job.drop_after = job.drop_after, None
            await self._drop(peer, of, sfc)

    def status(self, sfc: str) -> dict:
        """AgentSFC's checkpoint fields of `sfc`."""
        job = self.jobs.get(sfc)
        out = {"checkpoint_to": job.peer.node if job else "",
               "checkpoint_unix_ms": job.taken_unix_ms if job else 0,
               "checkpoint_error": job.error if job else ""}
        if sfc in self.restored:
            of, age, words = self.restored[sfc]
            out.update(restored_of=of, restored_age_ms=age, restore=words)
        return out

    # ---- restore -------------------------------------------------------------------------

    async def pull(self, peer: pb.PeerRef, of: str, sfc: str) -> Checkpoint | None:
        """The checkpoint of (`of`, `sfc`) that `peer` keeps (this node's own store when the
        peer is this node), None when it has none."""
        if peer.node == self.node.spec.name:
            return await asyncio.to_thread(store_of(self.node).load, of, sfc)
        try:
            header, pages = await received(self.peers[peer.address].GetCheckpoint(
                pb.GetCheckpointRequest(node=of, sfc=sfc), timeout=_PUT_TIMEOUT))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        tables = {(t.nf, t.table): apply_pages(None, t.size, pages.get(i, {}))
                  for i, t in enumerate(header.tables)}
        return Checkpoint(header.seq, header.taken_unix_ms, tables)

    async def restore(self, spec, peer: pb.PeerRef | None, of: str):
        """Before SFC `spec` is applied here in place of lost node `of`: its NFs' tables from
        the checkpoint `peer` keeps; what happened is kept for its status. No checkpoint (or
        none usable): the SFC starts empty, and the status says so. Returns (peer, of) once
        restored (forget_restored() after the SFC is applied), else None."""
        sfc = spec.name
        if peer is None or not peer.node:
            self.restored[sfc] = (of, -1, f"node {of} lost and no checkpoint peer known: "
                                  "started empty")
            return
        try:
            ck = await self.pull(peer, of, sfc)
        except (grpc.aio.AioRpcError, CheckpointError) as e:
            why = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            self.restored[sfc] = (of, -1, f"checkpoint of {of} on {peer.node} unreadable "
                                  f"({why}): started empty")
            return
        if ck is None:
            self.restored[sfc] = (of, -1, f"no checkpoint of node {of} on {peer.node}: "
                                  "started empty")
            return
        age = max(0, int(time.time() * 1000) - ck.taken_unix_ms)
        try:
            await asyncio.to_thread(install, self.node, spec, ck)
        except StateError as e:
            self.restored[sfc] = (of, -1, f"checkpoint of {of} (from {peer.node}) refused: "
                                  f"{e}: started empty")
            return
        self.restored[sfc] = (of, age, f"restored from the checkpoint of node {of} kept by "
                              f"{peer.node}, taken {age / 1000:.1f} s before")
        log.info("sfc %s: %s", sfc, self.restored[sfc][2])
        return peer, of

    def forget_restored(self, sfc: str, peer: pb.PeerRef, of: str):
        """The checkpoint of (`of`, `sfc`) on `peer` is no longer needed once this node's
        own first checkpoint of `sfc` is acknowledged (at once when it takes none)."""
        job = self.jobs.get(sfc)
        if job is not None:
            job.drop_after = (peer, of)
        else:
            asyncio.get_running_loop().create_task(self._drop(peer, of, sfc))


def install(node, spec, ck: Checkpoint):
    """Make the checkpoint's tables all the state of `spec`'s NFs on this node (the SFC does
    not run here yet): each NF's tables replaced whole (StateManager.replace_nf)."""
    state = node.state
    by_nf: dict[str, list] = {}
    for (nf, table), data in ck.tables.items():
        if nf in spec.nfs:
            by_nf.setdefault(nf, []).append((table, data))
    for nf, tables in by_nf.items():
        namespace = spec.state_namespace(nf)
        state.drop(namespace)   # a stale copy of an older run here is no base for this one
        state.replace_nf(namespace, tables)
