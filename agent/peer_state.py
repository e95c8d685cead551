"""State between servers (issue 14 item 2; docs/state.md "Between servers").

An SFC served by several nodes shares its global/write state per the table's class:
- `global|read` tables (IDS patterns) are copied to a new node before its first instance
  (Peer.Seed);
- `release` pools (NAT's ports) are split: the node that has the state splits a share of
  every pool off with the NF's own split op, in a sandboxed pool process (pool_ctl.h
  split_req: `<table>@out`), and ships it; a node leaving the SFC returns its pools
  (Peer.ReturnState). Received shares are written as `<table>@in<k>` beside the pool and
  folded in by the NF's merge op in a pool process (at a merge request, or when the next
  instance opens the table): NF code never runs in the agent, and no two nodes ever hold the
  same resource;
- `eventual` tables (MON's per-host counters) stay each node's own; every `delta_period`
  each node pushes the entries that changed to every peer (Peer.PushDeltas). A push carries
  the origin table's cumulative values (uint64 words, as the runtime adds replicas), so
  applying one twice changes nothing; the receiver keeps them as the replica
  `<table>@p<origin>` (replaced per key, never added) with the (epoch, seq) of the last push
  applied, and refuses older pushes. ReadState adds those replicas to the table: totals are
  exact after retries, reconnects and agent restarts (a restarted sender resends everything
  in a newer epoch). A table whose NF merges with its own op is not a word-wise sum: it is
  not exchanged, and the SFC's status says so.
"""
from __future__ import annotations

import asyncio
import logging
import mmap
import os
import struct
import threading
import time
import zlib

import grpc

from serpens.common.tasks import sleep_unless
from serpens.proto.serpens.v1 import serpens_pb2 as pb
from serpens.runtime_cy import _dataplane as dp

from .state_manager import TABLE_SUFFIX, StateError, StateManager, _write_file

log = logging.getLogger(__name__)

ORIGIN_OFF = 144          # state_table.h serpens_table_hdr.origin (16 bytes)
APPLIED_OFF = 160         # applied_epoch, applied_seq (u64 each)
NAME_OFF, NAME_LEN = 72, 64
_COUNT_OFF = 56           # serpens_table_hdr.count
RETURN_SLOTS = 8          # nf_api.h SERPENS_RETURN_SLOTS: `<table>@in0..7`
PUSH_ENTRIES = 4096       # entries per PushDeltas (a big table goes over several periods)
PUSH_BYTES = 1 << 20      # and keys + values per PushDeltas (far below a server's RECEIVE_LIMIT)
PUSH_TIMEOUT_S = 2.0


class PeerStateError(StateError):
    pass


# ---- table files --------------------------------------------------------------------------

def header(path: str) -> dict:
    with open(path, "rb", buffering=0) as f:   # (a buffered read takes 2 MiB on hugetlbfs)
        h = f.read(APPLIED_OFF + 16)
    if len(h) < APPLIED_OFF + 16:
        raise PeerStateError(f"{path}: not a whole table header")
    flags, ks, vs, cap = struct.unpack_from("<4I", h, 16)
    epoch, seq = struct.unpack_from("<QQ", h, APPLIED_OFF)
    return {"flags": flags, "key_size": ks, "value_size": vs, "capacity": cap,
            "origin": h[ORIGIN_OFF:ORIGIN_OFF + 16], "applied": (epoch, seq)}


def _patch_header(path: str, offset: int, data: bytes):
    """Write header bytes through a shared mapping (hugetlbfs has no write())."""
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as m:
            m[offset:offset + len(data)] = data
    finally:
        os.close(fd)


def origin_of(path: str) -> bytes:
    """The table's identity among servers: made once (random) and kept in its header, so a
    table dropped and made again is another origin (its counts start again at zero)."""
    origin = header(path)["origin"]
    if origin == bytes(16):
        origin = os.urandom(16)
        _patch_header(path, ORIGIN_OFF, origin)
    return origin


def is_read_table(flags: int) -> bool:
    return bool(flags & dp.GLOBAL) and bool(flags & dp.READ) and not flags & dp.WRITE


def renamed(data: bytes, name: str) -> bytes:
    """A table file's bytes with its header naming `name` (a share made as `t@out` is `t`)."""
    raw = name.encode()[:NAME_LEN - 1].ljust(NAME_LEN, b"\0")
    return data[:NAME_OFF] + raw + data[NAME_OFF + NAME_LEN:]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def base_tables(state: StateManager, namespace: str) -> list[str]:
    return [t for ns, t in state.tables() if ns == namespace and "@" not in t]


# ---- release pools and read tables --------------------------------------------------------

def seed_tables(node, sfc: str) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Source side of Peer.Seed: per NF of `sfc`, its read tables (copies) and a share of
    each release pool, split off by an instance of the SFC (one starts if none runs)."""
    with node._lock:
        entry = node._entry(sfc)
        entry.manager.split_state()   # every release pool: a share into `<table>@out`
        state = node.state
        out = []
        for nf in entry.spec.nfs:
            ns = entry.spec.state_namespace(nf)
            tables = []
            for t in base_tables(state, ns):
                flags = header(state.path(ns, t))["flags"]
                if is_read_table(flags):
                    tables.append((t, _read(state.path(ns, t))))
                elif flags & dp.RELEASE:
                    share = state.path(ns, f"{t}@out")
                    if os.path.exists(share):
                        # read, then gone before we answer: a share is never shipped twice
                        # (a lost answer loses it; a leftover `@out` goes back at next split)
                        tables.append((t, renamed(_read(share), t)))
                        os.unlink(share)
            out.append((nf, tables))
        return out


def install_tables(state: StateManager, namespace: str,
                   tables: list[tuple[str, bytes]]) -> int:
    """Target side: read tables replace ours; release pools (shares) go beside ours as
    `<table>@in<k>`, folded in by the NF's merge op in a pool process. Returns the pools
    written."""
    folder = os.path.join(state.state_dir, namespace)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    pools = 0
    for table, data in tables:
        if not table or "/" in table or "@" in table or table.startswith("."):
            raise PeerStateError(f"bad table name {table!r}")
        if len(data) < APPLIED_OFF + 16:
            raise PeerStateError(f"table {table}: cut short ({len(data)} bytes)")
        flags = struct.unpack_from("<I", data, 16)[0]
        tmp_name = f".{table}.peer{os.getpid()}"   # made aside, checked, then linked in
        tmp = state.path(namespace, tmp_name)
        if flags & dp.RELEASE:
            _write_file(tmp, data)
            try:
                _check_opens(state, namespace, tmp_name, table)
                _link_free_slot(tmp, folder, table)
            finally:
                _unlink(tmp)
            pools += 1
        elif is_read_table(flags):
            _write_file(tmp, data)
            try:
                _check_opens(state, namespace, tmp_name, table)
                os.replace(tmp, state.path(namespace, table))
            finally:
                _unlink(tmp)
        else:
            raise PeerStateError(f"table {table}: neither a read table nor a release pool "
                                 f"(flags 0x{flags:x})")
    return pools


def _check_opens(state: StateManager, namespace: str, name: str, table: str):
    """Table file `name` is a whole table (header, layout) of the shape of `table` here, if
    there is one."""
    try:
        dp.StateTable(state.state_dir, namespace, name).close()
    except OSError as e:
        raise PeerStateError(f"table {table}: {e.strerror}") from None
    ours = state.path(namespace, table)
    if os.path.exists(ours):
        a, b = header(ours), header(state.path(namespace, name))
        if [a[k] for k in ("flags", "key_size", "value_size", "capacity")] != \
                [b[k] for k in ("flags", "key_size", "value_size", "capacity")]:
            raise PeerStateError(f"table {table}: another shape (flags, key, value or "
                                 f"capacity) than {namespace}'s table of that name")


def _link_free_slot(tmp: str, folder: str, table: str):
    for k in range(RETURN_SLOTS):
        try:
            os.link(tmp, os.path.join(folder, f"{table}@in{k}{TABLE_SUFFIX}"))
            return
        except FileExistsError:
            continue
    raise PeerStateError(f"table {table}: {RETURN_SLOTS} returned pools wait to be merged "
                         "already (no instance opened the table since)")


def _unlink(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def pools_to_return(state: StateManager, spec) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Every release pool of a stopped SFC as files to return, with what is not in the pool
    yet: shares returned here and not merged (`@in<k>`), an unshipped `@out`, replicas a
    crashed instance left (`@r<lcore>`). Each is a whole share, merged on the other side."""
    out = []
    for nf in spec.nfs:
        ns = spec.state_namespace(nf)
        tables = []
        for owner, t in state.tables():
            if owner != ns:
                continue
            base = t.partition("@")[0]
            path = state.path(ns, t)
            try:
                flags = header(path)["flags"]
            except (OSError, PeerStateError):
                continue
            side = t[len(base) + 1:][:1] in ("i", "o", "r")
            if flags & dp.RELEASE and (base == t or side):
                data = _read(path)
                if base != t and struct.unpack_from("<Q", data, _COUNT_OFF)[0] == 0:
                    continue   # an empty side table (a replica given back at stop)
                tables.append((base, renamed(data, base)))
        if tables:
            out.append((nf, tables))
    return out


def images(nfs) -> list[pb.NFTables]:
    return [pb.NFTables(nf=nf, tables=[pb.TableImage(name=t, size=len(d),
                                                     zdata=zlib.compress(d, 1))
                                       for t, d in tables]) for nf, tables in nfs]


def inflate(nfs: list) -> list[tuple[str, list[tuple[str, bytes]]]]:
    out = []
    for entry in nfs:
        tables = []
        for image in entry.tables:
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(image.zdata, image.size + 1)
            except zlib.error as e:
                raise PeerStateError(f"table {image.name}: {e}") from None
            if len(data) != image.size or not inflater.eof:
                raise PeerStateError(f"table {image.name}: not the {image.size} bytes it says")
            tables.append((image.name, data))
        out.append((entry.nf, tables))
    return out


# ---- eventual tables: deltas --------------------------------------------------------------

def peer_replica(table: str, origin: bytes) -> str:
    return f"{table}@p{origin.hex()}"


def with_peers(state: StateManager, namespace: str, table: str,
               items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`items` of eventual table `table` plus every peer's replica (`table@p<origin>`), word
    by word: the cluster-wide totals."""
    replicas = [t for ns, t in state.tables() if ns == namespace and t.startswith(table + "@p")]
    if not replicas:
        return items
    totals = {k: list(struct.unpack(f"<{len(v) // 8}Q", v)) for k, v in items}
    order = [k for k, _ in items]
    for name in replicas:
        try:
            rep = state.open(namespace, name)
        except OSError:
            continue
        try:
            for k, v in rep.items():
                words = struct.unpack(f"<{len(v) // 8}Q", v)
                have = totals.get(k)
                if have is None:
                    totals[k] = list(words)
                    order.append(k)
                else:
                    for i, w in enumerate(words):
                        have[i] = (have[i] + w) & 0xFFFFFFFFFFFFFFFF
        finally:
            rep.close()
    return [(k, struct.pack(f"<{len(totals[k])}Q", *totals[k])) for k in order]


class Receiver:
    """Applies other nodes' pushes into `<table>@p<origin>` (idempotent, see the module)."""

    def __init__(self, state_dir: str):
        self.state = StateManager(state_dir)
        self._lock = threading.Lock()
        self.applied: dict[str, int] = {}   # SFC -> pushes applied

    def apply(self, namespace: str, sfc: str, req) -> tuple[bool, int]:
        if len(req.origin) != 16 or req.origin == bytes(16):
            raise ValueError("origin: 16 bytes, not all zero")
        if not req.table or "@" in req.table or "/" in req.table or req.table.startswith("."):
            raise ValueError(f"table: bad name {req.table!r}")
        ks, vs = req.key_size, req.value_size
        if not (0 < ks <= 256 and 0 < vs <= (1 << 20) and vs % 8 == 0 and req.capacity > 0):
            raise ValueError("key_size/value_size/capacity: not an eventual table's")
        for e in req.entries:
            if len(e.key) != ks or len(e.value) != vs:
                raise ValueError(f"entries: a key or value not of {ks}/{vs} bytes")
        with self._lock:
            ours = self.state.path(namespace, req.table)
            if os.path.exists(ours):
                h = header(ours)
                if (h["key_size"], h["value_size"]) != (ks, vs):
                    raise ValueError(f"table: {req.table} here has key {h['key_size']} value "
                                     f"{h['value_size']} bytes")
                if h["origin"] == req.origin:
                    return False, 0   # our own table (a copy): never count it twice
            name = peer_replica(req.table, req.origin)
            try:
                rep = dp.StateTable(self.state.state_dir, namespace, name,
                                    dp.GLOBAL | dp.WRITE | dp.EVENTUAL, ks, vs, req.capacity)
            except OSError as e:
                raise PeerStateError(f"table {name}: {e.strerror}") from None
            try:
                path = self.state.path(namespace, name)
                if (req.epoch, req.seq) <= header(path)["applied"]:
                    return False, 0   # a retry, or older than what was applied
                for e in req.entries:   # cumulative values: replace, never add
                    rep.put(e.key, e.value)
                _patch_header(path, APPLIED_OFF, struct.pack("<QQ", req.epoch, req.seq))
            finally:
                rep.close()
            self.applied[sfc] = self.applied.get(sfc, 0) + 1
            return True, len(req.entries)


class DeltaSender:
    """Pushes this node's eventual tables to each SFC's peers every `period_s`."""

    def __init__(self, node, period_s: float = 0.1, stubs=None):
        self.node, self.period_s = node, period_s
        self.epoch = time.time_ns()    # a restarted agent resends everything, newer
        self.seq = 0
        self.stubs = stubs             # address -> PeerStub (common/rpc.Stubs)
        self.peers: dict[str, list[tuple[str, str]]] = {}   # SFC -> [(node, address)]
        # what each peer has of each table: (sfc, address, ns, table, origin) -> {key: value},
        # kept only for the SFC's peers and tables now (_prune)
        self.acked: dict[tuple, dict[bytes, bytes]] = {}
        self.pushed: dict[str, int] = {}
        self.problems: dict[str, str] = {}     # SFC -> what is not exchanged, and why
        self.failure: dict[str, str] = {}      # SFC -> the last push that failed
        self.ops_cache: dict[str, dict] = {}
        self.unreached: dict[str, set] = {}    # SFC -> peers its last push did not reach
        self._busy = asyncio.Lock()

    def set_peers(self, sfc: str, peers):
        me = self.node.spec.name
        self.peers[sfc] = [(p.node, p.address) for p in peers if p.address and p.node != me]
        addresses = {a for _, a in self.peers[sfc]}
        self._prune(sfc, lambda k: k[1] in addresses)  # a peer gone: what it had goes too
        if not self.peers[sfc]:
            self.peers.pop(sfc)

    def reached(self, sfc: str, address: str) -> bool:
        """The last push of the SFC reached `address`."""
        return address not in self.unreached.get(sfc, ())

    def _prune(self, sfc: str, keep):
        for key in [k for k in self.acked if k[0] == sfc and not keep(k)]:
            del self.acked[key]

    def forget(self, sfc: str):
        self._prune(sfc, lambda k: False)
        self.peers.pop(sfc, None)
        self.unreached.pop(sfc, None)
        self.ops_cache.pop(sfc, None)
        self.problems.pop(sfc, None)
        self.failure.pop(sfc, None)

    def status(self, sfc: str) -> str:
        return "; ".join(x for x in (self.problems.get(sfc), self.failure.get(sfc)) if x)

    def tables(self, sfc: str, spec=None) -> list[tuple[str, str, str, bytes, dict, list]]:
        """[(nf, namespace, table, origin, header, items)] of the SFC's eventual tables that
        can be exchanged (a thread: reads table files)."""
        entry = self.node.running.get(sfc)
        spec = spec or (entry.spec if entry else None)
        if spec is None:
            return []
        ops = self.nf_ops(sfc) or {}
        state = self.node.state
        out, problems = [], []
        for nf in spec.nfs:
            ns = spec.state_namespace(nf)
            for t in base_tables(state, ns):
                path = state.path(ns, t)
                try:
                    h = header(path)
                except (OSError, PeerStateError):
                    continue
                if not h["flags"] & dp.EVENTUAL:
                    continue
                nf_ops = ops.get(ns)
                if nf_ops is None or nf_ops["merge"]:
                    problems.append(f"{nf}.{t} not exchanged: " + (
                        "its NF merges with its own op (not a sum of words)" if nf_ops
                        else "no instance has run yet to say how its NF merges"))
                    continue
                try:
                    table = state.open(ns, t)
                except OSError:
                    continue
                try:
                    items = table.items()
                finally:
                    table.close()
                out.append((nf, ns, t, origin_of(path), h, items))
        problem = "; ".join(problems)
        if problem and problem != self.problems.get(sfc):
            log.warning("sfc %s: %s", sfc, problem)
        self.problems[sfc] = problem
        return out

    def nf_ops(self, sfc: str) -> dict | None:
        """{namespace: {"merge", "split"}} of the SFC's NFs as its last instance found them
        (kept after the SFC stopped, for its last push); None before any instance ran."""
        entry = self.node.running.get(sfc)
        if entry is not None:
            ops = entry.manager.nf_ops()
            if ops is not None:
                self.ops_cache[sfc] = {step.name: ops[i] for i, step in
                                       enumerate(entry.built.compiled.steps) if i < len(ops)}
        return self.ops_cache.get(sfc)

    async def push_sfc(self, sfc: str, extra=(), spec=None, tables=None) -> bool:
        """Push what changed in the SFC's eventual tables to its peers (and `extra`);
        True when every peer took it."""
        targets = list(dict.fromkeys(self.peers.get(sfc, []) + list(extra)))
        if not targets:
            return True
        if tables is None:
            tables = await asyncio.to_thread(self.tables, sfc, spec)
        # (a table reset or made anew has another origin: what peers had of the old one goes)
        now = {(ns, table, origin) for _, ns, table, origin, _, _ in tables}
        self._prune(sfc, lambda k: k[2:] in now)
        # to every peer at once: one that does not answer costs the others nothing
        ok = all(await asyncio.gather(*(self._push_to(sfc, node, address, tables)
                                        for node, address in targets)))
        if ok:
            self.failure.pop(sfc, None)
        return ok

    async def _push_to(self, sfc: str, node: str, address: str, tables) -> bool:
        self.unreached.setdefault(sfc, set()).discard(address)
        for nf, ns, table, origin, h, items in tables:
            try:
                await self._push(sfc, address, nf, ns, table, origin, h, items)
            except Exception as e:  # noqa: BLE001 - tried again next period
                # (setdefault: forget() may have dropped the SFC during the call)
                self.unreached.setdefault(sfc, set()).add(address)
                detail = e.details() if isinstance(e, grpc.RpcError) else e
                why = f"push to {node} failed: {detail}"
                if self.failure.get(sfc) != why:
                    log.warning("sfc %s: %s", sfc, why)
                self.failure[sfc] = why
                return False
        return True

    async def _push(self, sfc, address, nf, ns, table, origin, h, items):
        key = (sfc, address, ns, table, origin)
        acked = self.acked.get(key)
        changed = [(k, v) for k, v in items if acked is None or acked.get(k) != v]
        if acked is not None and not changed:
            return
        stub = self.stubs[address]
        per_push = max(1, min(PUSH_ENTRIES, PUSH_BYTES // (h["key_size"] + h["value_size"])))
        for i in range(0, max(1, len(changed)), per_push):
            chunk = changed[i:i + per_push]
            self.seq += 1
            req = pb.PushDeltasRequest(
                node=self.node.spec.name, sfc=sfc, nf=nf, table=table, origin=origin,
                epoch=self.epoch, seq=self.seq, key_size=h["key_size"],
                value_size=h["value_size"], capacity=h["capacity"],
                entries=[pb.DeltaEntry(key=k, value=v) for k, v in chunk])
            await stub.PushDeltas(req, timeout=PUSH_TIMEOUT_S)
            # only for a peer it still is: one that left dropped its copy, and must get
            # everything again if it comes back
            if address in {a for _, a in self.peers.get(sfc, ())}:
                self.acked.setdefault(key, {}).update(chunk)
            self.pushed[sfc] = self.pushed.get(sfc, 0) + 1

    async def run(self, stop: asyncio.Event):
        while not stop.is_set():
            await sleep_unless(stop, self.period_s)
            async with self._busy:
                sfcs = list(self.peers)
                outcomes = await asyncio.gather(*(self.push_sfc(sfc) for sfc in sfcs),
                                                return_exceptions=True)
            for sfc, outcome in zip(sfcs, outcomes):
                if isinstance(outcome, Exception):  # (the others went on; tried next period)
                    log.error("sfc %s: pushing deltas failed: %r", sfc, outcome)

    async def flush(self, sfc: str, spec, extra=()) -> bool:
        """The last deltas of a stopping SFC (its instances stopped: replicas merged)."""
        async with self._busy:
            return await self.push_sfc(sfc, extra=extra, spec=spec)
