"""The baselines' ways of starting an instance in the agent's process pool
(agent.process_pool.InstanceStart): NFs loaded as other systems load them (the C loaders of
bench/native/loaders.c) or state kept in Redis (bench/native/redis_state.c, and the Redis
server it talks to). Pass one as `how` to ProcessPool.start_instance.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from serpens.agent.process_pool import InstanceStart
from serpens.runtime_cy import _dataplane as dp

from .common import BenchError


@dataclass(frozen=True)
class Dlopen(InstanceStart):
    """SOCK-style: the pool process dlopen()s the NF's .so at `path` on every start."""
    path: str

    def command(self, sfc):
        return [], {"load_mode": dp.LOAD_DLOPEN, "dl_paths": [self.path]}


@dataclass(frozen=True)
class Fork(InstanceStart):
    """SAND-style: the pool process (a zygote) dlopen()s the NF at `path` on its first start
    and forks a child per start that runs the instance until its ring idles."""
    path: str
    detached = True  # (class attribute: not a field)

    def command(self, sfc):
        return [], {"load_mode": dp.LOAD_FORK, "dl_paths": [self.path]}


@dataclass(frozen=True)
class ForkRedis(Fork):
    """Fork, with the NF's state in the Redis at Unix socket `socket` (`backend`, as
    RedisState's): SAND keeps no state of its own, so a forked child that ends (its ring
    idled) leaves its NF's state where the next child finds it. The pool must be unsandboxed
    (sandbox=False: the zygote forks)."""
    backend: int
    socket: str

    def command(self, sfc):
        fds, fields = super().command(sfc)
        return fds, {**fields, "state_backend": self.backend, "state_arg": self.socket}


@dataclass(frozen=True)
class RedisState(InstanceStart):
    """Images mapped as Serpens maps them, NF state in the Redis listening on Unix socket
    `socket` (bench/native/redis_state.h): every table (dp.STATE_REDIS, Fission-style) or the
    global ones only (dp.STATE_REDIS_GLOBAL, SNF-style). The pool must allow a Unix socket
    client (ProcessPool sandbox="network")."""
    backend: int
    socket: str

    def command(self, sfc):
        fds, fields = super().command(sfc)
        return fds, {**fields, "state_backend": self.backend, "state_arg": self.socket}


class RedisServer:
    """A private redis-server for the state baselines: a Unix socket only (no TCP: the
    cheapest way to a local store), no persistence, on CPU `cpu` (None: wherever the kernel
    puts it). `socket` is its path."""

    def __init__(self, cpu: int | None = None):
        self.cpu = cpu
        self.dir = self.proc = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="serpens-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        pin = (lambda: os.sched_setaffinity(0, {self.cpu})) if self.cpu is not None else None
        try:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", "0", "--unixsocket", self.socket,
                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir",
                 self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=pin)
        except OSError as e:
            self.__exit__()
            raise BenchError(f"cannot run redis-server (the Redis baselines need it): "
                             f"{e.strerror}") from None
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.02)

    def pin(self, cpu: int | None):
        """Move the server (every thread of it) to CPU `cpu` (None: leave it)."""
        if cpu is None:
            return
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except OSError:
                pass  # the thread ended meanwhile

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
