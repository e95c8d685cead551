"""The baselines' ways of starting an instance in the agent's process pool
(agent.process_pool.InstanceStart): NFs loaded as other systems load them (the C loaders of
bench/native/loaders.c) or state kept in Redis. Pass one as `how` to ProcessPool.start_instance.
"""
from __future__ import annotations

from dataclasses import dataclass

from serpens.agent.process_pool import InstanceStart
from serpens.runtime_cy import _dataplane as dp


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
class RedisState(InstanceStart):
    """Images mapped as Serpens maps them, NF state in the Redis on `port`: every table
    (dp.STATE_REDIS, Fission-style) or the global ones only (dp.STATE_REDIS_GLOBAL,
    SNF-style). The pool must allow an AF_INET client (ProcessPool sandbox="network")."""
    backend: int
    port: int

    def command(self, sfc):
        fds, fields = super().command(sfc)
        return fds, {**fields, "state_backend": self.backend, "redis_port": self.port}
