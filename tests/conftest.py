"""Shared fixtures: one DPDK primary per test session (the EAL initialises once per process)
with a unique file prefix, a small process pool of real DPDK secondaries, and a real etcd per
module (`etcd`, tests/support/etcd.py). Helpers that tests import live in tests/support/.

Compiled NFs are shared by the session's processes through a cache directory (removed at
exit). Every test belongs to one layer, named by a module-level `pytestmark` (registered in
pyproject.toml): unit, dataplane, cluster, multinode or deploy; `pytest -m unit` runs one alone."""
import atexit
import os
import shutil
import tempfile

import pytest

from serpens.runtime_cy.builder import NF_CACHE_ENV

from support.etcd import etcd  # noqa: F401 (a fixture, for every module)
from support.nfs import nf_source
from support.packets import forbid_address_resolution

LAYERS = ("unit", "dataplane", "cluster", "multinode", "deploy")

# No test frame may send scapy to the host's network for an address.
forbid_address_resolution()

# The session's processes (agents, nodes, benchmarks in subprocesses) share compiled NFs: each
# source is compiled once per session, not once per process (runtime_cy/builder.py).
_nf_cache = tempfile.mkdtemp(prefix="serpens-test-nf-cache-")
atexit.register(shutil.rmtree, _nf_cache, True)
os.environ[NF_CACHE_ENV] = _nf_cache


def pytest_collection_modifyitems(items):
    for item in items:
        layers = [m.name for m in item.iter_markers() if m.name in LAYERS]
        if len(layers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: marked {layers or 'with no layer'}; give "
                                    f"its module one of {', '.join(LAYERS)} (pytestmark)")


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
