# Declarations of the baselines' state backends and global proxy (bench/native/redis_state.h,
# proxy.h).
from libc.stdint cimport uint32_t, uint64_t

from includes.dpdk cimport rte_ring


cdef extern from "redis_state.h" nogil:
    int SERPENS_STATE_REDIS, SERPENS_STATE_REDIS_GLOBAL

cdef extern from "proxy.h" nogil:
    int SERPENS_BENCH_PROXY_HOPS
    int serpens_bench_proxy(rte_ring **rx, rte_ring **tx, uint32_t n, int label_off,
                            const uint32_t *stop, uint32_t running, uint64_t *forwarded)
