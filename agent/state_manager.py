"""The state manager's agent side: the node's state tables as files (paper §III-B).

NFs create and use their tables from inside instances (serpens/nf.h, state API); the tables
are files under `state_dir/<nf>/<table>.tbl`, so they stay when instances stop and are found
again by a restarted agent. Here the agent lists and reads them (counters for `serpensctl`),
and snapshots and restores them (persistence at scale-to-zero, migration between servers).
Snapshot and restore want the NF quiescent: no instance running, or the copy may mix old and
new entries of flows being updated.
"""
from __future__ import annotations

import os
import shutil
import struct

from serpens.runtime_cy import _dataplane as dp

TABLE_SUFFIX = ".tbl"
TABLE_MAGIC = 0x3142415453505253  # "SRPSTAB1", state_table.h


class StateError(RuntimeError):
    pass


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
            if os.path.isdir(folder):
                out += [(nf, f[:-len(TABLE_SUFFIX)]) for f in sorted(os.listdir(folder))
                        if f.endswith(TABLE_SUFFIX)]
        return out

    def open(self, nf: str, table: str) -> dp.StateTable:
        return dp.StateTable(self.state_dir, nf, table)

    def path(self, nf: str, table: str) -> str:
        return os.path.join(self.state_dir, nf, table + TABLE_SUFFIX)

    def snapshot(self, nf: str, table: str, dest: str) -> int:
        """Copy a table to `dest` (a file); returns its size."""
        src = self.path(nf, table)
        if not os.path.exists(src):
            raise StateError(f"no table {table!r} of NF {nf!r} in {self.state_dir}")
        shutil.copyfile(src, dest)
        return os.path.getsize(dest)

    def restore(self, src: str, nf: str, table: str):
        """Install a snapshot as table `table` of `nf`, replacing any table of that name.
        Instances started afterwards see it; stop running ones first."""
        with open(src, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or struct.unpack("<Q", head)[0] != TABLE_MAGIC:
            raise StateError(f"{src} is not a Serpens state table snapshot")
        folder = os.path.join(self.state_dir, nf)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        staging = f".restore-{table}"
        shutil.copyfile(src, self.path(nf, staging))
        try:
            dp.StateTable(self.state_dir, nf, staging).close()  # checks the header and layout
        except OSError as e:
            os.unlink(self.path(nf, staging))
            raise StateError(f"{src}: {e.strerror}") from None
        os.replace(self.path(nf, staging), self.path(nf, table))

    def drop(self, nf: str, table: str | None = None):
        """Delete a table (or all tables of an NF): its state is gone for good."""
        if table is None:
            shutil.rmtree(os.path.join(self.state_dir, nf), ignore_errors=True)
        else:
            try:
                os.unlink(self.path(nf, table))
            except FileNotFoundError:
                pass
