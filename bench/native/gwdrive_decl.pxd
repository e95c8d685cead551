# Declarations of bench/native/gwdrive.h (traffic for the gateway, bench multinode).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from includes.dpdk cimport rte_mempool, rte_ring
from router_decl cimport serpens_lat_rec, serpens_pace
from gateway_decl cimport serpens_gateway


cdef extern from "gwdrive.h" nogil:
    struct serpens_gwdrive:
        uint32_t stop
        serpens_gateway *g
        rte_ring *in_ "in"
        rte_ring *out
        rte_mempool *mp
        const uint8_t *frames
        const uint16_t *len
        const uint32_t *off
        uint32_t nframes, stamp_off
        serpens_pace pace
        uint32_t log_on
        serpens_lat_rec *log
        uint64_t log_cap, log_n
        uint64_t sent, received, sleeps

    int serpens_gwdrive_lcore_main(void *arg)
    double serpens_encap_cycles(rte_mempool *mp, const uint8_t *frame, uint16_t len,
                                uint32_t iters)
