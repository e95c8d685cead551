"""Shared fixtures: one DPDK primary per test session (the EAL initialises once per process)
with a unique file prefix, and a small process pool of real DPDK secondaries."""
import os
import shutil

import pytest

NFS_DIR = os.path.join(os.path.dirname(__file__), "nfs")


def nf_source(name: str) -> str:
    with open(os.path.join(NFS_DIR, name)) as f:
        return f.read()


@pytest.fixture(scope="session")
def dataplane():
    from serpens.agent.dataplane import Dataplane, DataplaneConfig

    state_dir = f"/dev/shm/serpens-test-{os.getpid()}/state"
    dpl = Dataplane(DataplaneConfig(file_prefix=f"serpens-test-{os.getpid()}",
                                    state_dir=state_dir)).start()
    yield dpl
    dpl.close()
    shutil.rmtree(os.path.dirname(state_dir), ignore_errors=True)


@pytest.fixture(scope="session")
def pool(dataplane):
    from serpens.agent.process_pool import ProcessPool

    with ProcessPool(dataplane, 3) as p:
        yield p


@pytest.fixture(scope="session")
def areas():
    from serpens.runtime_cy.builder import AreaAllocator

    return AreaAllocator()


@pytest.fixture(scope="session")
def build(areas):
    """build(file_name, copy=0) -> NFImage, prepared once per session and copy (an SFC that
    uses one NF twice needs two images: each step has its own globals)."""
    from serpens.runtime_cy.builder import build_nf

    cache = {}

    def _build(name, copy=0):
        if (name, copy) not in cache:
            cache[name, copy] = build_nf(nf_source(name), areas.allocate(), name.removesuffix(".c"))
        return cache[name, copy]

    yield _build
    for img in cache.values():
        img.close()


@pytest.fixture(scope="session")
def build_stock(areas):
    """build_stock(name, copy=0) -> NFImage of the stock NF nfs/<name>/<name>.c."""
    from serpens import nfs
    from serpens.runtime_cy.builder import build_nf

    cache = {}

    def _build(name, copy=0):
        if (name, copy) not in cache:
            cache[name, copy] = build_nf(nfs.source(name), areas.allocate(), name)
        return cache[name, copy]

    yield _build
    for img in cache.values():
        img.close()


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server on a Unix socket (the Fission/SNF-style baselines keep state
    there)."""
    from serpens.bench.baselines import RedisServer

    with RedisServer() as server:
        yield server
