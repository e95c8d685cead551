# Declarations of bench/native/driver.h (the benchmarks' traffic driver).
from libc.stdint cimport uint16_t, uint32_t, uint64_t

from includes.core cimport serpens_pool_ctl
from includes.dpdk cimport rte_mempool, rte_ring


cdef extern from "driver.h" nogil:
    struct serpens_drive_result:
        uint64_t packets
        uint64_t out
        uint64_t ns
    int serpens_drive(rte_ring *rx, rte_ring *tx, rte_mempool *mp, const unsigned char *frames,
                      const uint16_t *len, uint32_t nframes, uint32_t inflight, double warmup,
                      double seconds, int rewrite, serpens_pool_ctl *ctl, int efd,
                      int label_offset, serpens_drive_result *res)
