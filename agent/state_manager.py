"""The state manager's agent side: the node's state tables as files (paper §III-B).

NFs create and use their tables from inside instances (serpens/nf.h, state API); the tables
are files under `state_dir/<nf>/<table>.tbl`, so they stay when instances stop and are found
again by a restarted agent. Here the agent lists and reads them (counters for `serpensctl`),
and snapshots and restores them (persistence at scale-to-zero, migration between servers).
Snapshot and restore want the NF quiescent: no instance running, or the copy may mix old and
new entries of flows being updated.
"""
from __future__ import annotations

import errno
import mmap
import os
import shutil
import struct

from serpens.runtime_cy import _dataplane as dp

TABLE_SUFFIX = ".tbl"
TABLE_MAGIC = 0x3142415453505253  # "SRPSTAB1", state_table.h
_HDR_FILE_SIZE = 48  # offset of serpens_table_hdr.file_size
_HDR_SHAPE_END = 32  # flags, key_size, value_size, capacity end here (state_table.h)


class StateError(RuntimeError):
    pass


class StateFilesystemFull(StateError):
    """No room on the state filesystem for what was asked; nothing was changed."""


class BrokenTable(StateError):
    """A table file that is not a whole table (truncated, corrupt): `drop` it."""


def table_error(nf: str, table: str, e: OSError) -> StateError:
    """The StateError for an OSError of opening table `table` of `nf` (StateTable)."""
    if e.errno == errno.ENOSPC:
        return StateFilesystemFull(f"table {nf}/{table}: {e.strerror}")
    return BrokenTable(f"table {nf}/{table}: {e.strerror}")


class StateManager:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    def tables(self) -> list[tuple[str, str]]:
        """[(nf, table)] of every table on this node."""
        out = []
        if not os.path.isdir(self.state_dir):
            return out
        for nf in sorted(os.listdir(self.state_dir)):
            folder = os.path.join(self.state_dir, nf)
            if os.path.isdir(folder) and not nf.startswith("."):  # ".restore-*": staging
                out += [(nf, f[:-len(TABLE_SUFFIX)]) for f in sorted(os.listdir(folder))
                        if f.endswith(TABLE_SUFFIX)]
        return out

    def open(self, nf: str, table: str) -> dp.StateTable:
        return dp.StateTable(self.state_dir, nf, table)

    def path(self, nf: str, table: str) -> str:
        return os.path.join(self.state_dir, nf, table + TABLE_SUFFIX)

    def read_nf(self, nf: str) -> list[tuple[str, bytes]]:
        """[(table, file contents)] of every table of `nf`, its instances' replicas included
        (unmerged counts, release shares): all of the NF's state. Wants it quiescent."""
        out = []
        for owner, table in self.tables():
            if owner == nf:
                with open(self.path(nf, table), "rb") as f:
                    out.append((table, f.read()))
        return out

    def replace_nf(self, nf: str, tables: list[tuple[str, bytes]]):
        """Make `tables` ([(table, file contents)] as read_nf() gives) all the state of `nf`.
        Every table is written and checked aside first, so a bad one raises StateError and
        changes nothing; then the NF's tables are dropped and these moved in. A table the NF
        has keeps its shape (flags, key and value sizes, capacity): its instances attach to
        it by that shape. Wants the NF quiescent."""
        if not tables:
            raise StateError("the snapshot has no tables")
        names = [table for table, _ in tables]
        if len(set(names)) != len(names):
            raise StateError(f"a table appears twice: {sorted(names)}")
        staging = f".restore-{nf}-{os.getpid()}"
        folder = os.path.join(self.state_dir, staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, mode=0o700)
        try:
            for table, data in tables:
                if not table or "/" in table or table.startswith("."):
                    raise StateError(f"bad table name {table!r}")
                if len(data) < 8 or struct.unpack_from("<Q", data)[0] != TABLE_MAGIC:
                    raise StateError(f"table {table}: not a Serpens state table snapshot")
                if len(data) < _HDR_FILE_SIZE + 8 or \
                        len(data) < struct.unpack_from("<Q", data, _HDR_FILE_SIZE)[0]:
                    raise StateError(f"table {table}: cut short ({len(data)} bytes)")
                _check_layout(table, data)
                self._check_shape(nf, table, data)
                _write_file(self.path(staging, table), data)
                try:
                    dp.StateTable(self.state_dir, staging, table).close()  # header and layout
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise table_error(nf, table, e) from None
                    raise StateError(f"table {table}: {e.strerror}") from None
            self.drop(nf)
            os.makedirs(os.path.join(self.state_dir, nf), mode=0o700, exist_ok=True)
            for table, _ in tables:
                os.replace(self.path(staging, table), self.path(nf, table))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _check_shape(self, nf: str, table: str, data: bytes):
        if "@" in table or not os.path.exists(self.path(nf, table)):
            return  # replicas are the instances' own; a new table has no shape yet
        with open(self.path(nf, table), "rb", buffering=0) as f:   # (2 MiB if buffered)
            have = f.read(_HDR_SHAPE_END)
        # (SERPENS_FLOW_VALUE says what the values hold, not the layout: a snapshot from
        # before its NF declared it restores into the table that has it)
        flags = [int.from_bytes(b[16:20], "little") | dp.FLOW_VALUE for b in (have, data)]
        if flags[0] != flags[1] or have[20:] != data[20:_HDR_SHAPE_END]:
            raise StateError(f"table {table}: another shape (flags, key, value or capacity) "
                             f"than {nf}'s table of that name")

    def drop(self, nf: str, table: str | None = None) -> list[str]:
        """Delete a table (or all tables of an NF): its state is gone for good. A table goes
        with its instances' replicas ("table@rN") and any copy a crash left half-made
        (".table.tbl.PID", state_table.c create()). Returns the tables deleted."""
        folder = os.path.join(self.state_dir, nf)
        if not os.path.isdir(folder):
            return []
        gone = [t for owner, t in self.tables() if owner == nf and
                (table is None or t == table or t.startswith(table + "@"))]
        if table is None:
            shutil.rmtree(folder, ignore_errors=True)
            return gone
        for name in os.listdir(folder):
            if name.startswith("."):  # ".T.tbl.PID": a table being (or left half-) made
                base = name[1:].rpartition(TABLE_SUFFIX + ".")[0]
            else:
                base = name.removesuffix(TABLE_SUFFIX)
            if base == table or base.startswith(table + "@"):
                try:
                    os.unlink(os.path.join(folder, name))
                except FileNotFoundError:
                    pass
        return gone


def _write_file(path: str, data: bytes):
    """Write through a shared mapping: hugetlbfs has no write(); its files are sized in
    whole huge pages (a state table may be longer than its layout needs). The pages are
    reserved first (fallocate: tmpfs pages, hugetlbfs huge pages), so a full filesystem is
    StateFilesystemFull here rather than a SIGBUS while copying."""
    block = os.statvfs(os.path.dirname(path)).f_bsize
    size = max(block, -(-len(data) // block) * block)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise StateFilesystemFull(f"state filesystem full (ENOSPC): no room for the "
                                      f"{size} bytes of {os.path.basename(path)}") from None
        with mmap.mmap(fd, size) as m:
            m[:len(data)] = data
    finally:
        os.close(fd)


def _check_layout(table: str, data: bytes):
    """The header's derived fields agree with its key and value sizes (state_table.c
    create()), so a crafted header cannot make the NF write outside its slots."""
    version, = struct.unpack_from("<I", data, 8)
    ks, vs, cap, nslots, slot_size, key_off, value_off = struct.unpack_from("<7I", data, 20)

    def round8(n):
        return (n + 7) & ~7
    slot = 8 + round8(ks) + round8(vs)
    if version >= 2 and 32 < slot < 64:  # state_table.c slot_bytes(): padded to a line
        slot = 64
    if not (version in (1, 2) and key_off == 8 and value_off == 8 + round8(ks) and
            slot_size == slot and nslots and
            nslots & (nslots - 1) == 0 and nslots * 3 >= cap * 4):
        raise StateError(f"table {table}: inconsistent header")
