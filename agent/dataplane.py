"""The agent's DPDK primary: serpens.runtime_cy.primary (shared with the gateway), under the
name the agent's modules, tests and benchmarks import it by."""
from serpens.runtime_cy.primary import (  # noqa: F401
    CLEANUP_TIMEOUT_S, DEFAULT_BASE_VIRTADDR, IOVA_MODE, RUNTIME_ROOT, Dataplane,
    DataplaneConfig, cpu_set, remove_stale_files, remove_stale_prefixes)
