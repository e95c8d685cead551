# DPDK 22.11 declarations used by the dataplane extension (declarations only).
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "rte_eal.h" nogil:
    int rte_eal_init(int argc, char **argv)
    int rte_eal_cleanup()
    int rte_eal_process_type()
    int RTE_PROC_PRIMARY
    int RTE_PROC_SECONDARY

cdef extern from "rte_errno.h" nogil:
    int rte_errno "per_lcore__rte_errno"
    const char *rte_strerror(int errnum)

cdef extern from "rte_lcore.h" nogil:
    unsigned rte_lcore_id()
    int rte_socket_id()

cdef extern from "rte_cycles.h" nogil:
    uint64_t rte_rdtsc()
    uint64_t rte_get_tsc_hz()

cdef extern from "rte_mempool.h" nogil:
    struct rte_mempool:
        unsigned size
    unsigned rte_mempool_avail_count(const rte_mempool *mp)
    unsigned rte_mempool_in_use_count(const rte_mempool *mp)
    rte_mempool *rte_mempool_lookup(const char *name)
    void rte_mempool_free(rte_mempool *mp)

cdef extern from "rte_mbuf.h" nogil:
    struct rte_mbuf:
        uint16_t data_len
        uint32_t pkt_len
        uint16_t nb_segs
        uint16_t port
    rte_mempool *rte_pktmbuf_pool_create(const char *name, unsigned n, unsigned cache_size,
                                         uint16_t priv_size, uint16_t data_room_size,
                                         int socket_id)
    rte_mbuf *rte_pktmbuf_alloc(rte_mempool *mp)
    int rte_pktmbuf_alloc_bulk(rte_mempool *pool, rte_mbuf **mbufs, unsigned count)
    void rte_pktmbuf_free(rte_mbuf *m)
    void rte_pktmbuf_free_bulk(rte_mbuf **mbufs, unsigned count)
    char *rte_pktmbuf_append(rte_mbuf *m, uint16_t len)
    uint16_t rte_pktmbuf_tailroom(const rte_mbuf *m)

cdef extern from "rte_mbuf_dyn.h" nogil:
    struct rte_mbuf_dynfield:
        char name[64]
        size_t size
        size_t align
        unsigned int flags
    int rte_mbuf_dynfield_register(const rte_mbuf_dynfield *params)
    int rte_mbuf_dynfield_lookup(const char *name, rte_mbuf_dynfield *params)

cdef extern from "rte_ring.h" nogil:
    struct rte_ring:
        pass
    unsigned RING_F_SP_ENQ
    unsigned RING_F_SC_DEQ
    rte_ring *rte_ring_create(const char *name, unsigned count, int socket_id, unsigned flags)
    rte_ring *rte_ring_lookup(const char *name)
    void rte_ring_free(rte_ring *r)
    unsigned rte_ring_count(const rte_ring *r)
    unsigned rte_ring_enqueue_burst(rte_ring *r, void * const *obj_table, unsigned n,
                                    unsigned *free_space)
    unsigned rte_ring_dequeue_burst(rte_ring *r, void **obj_table, unsigned n,
                                    unsigned *available)

cdef extern from "dp_inline.h" nogil:
    char *serpens_mtod(rte_mbuf *m)
    uint16_t serpens_label_get(rte_mbuf *m, int off)
    size_t serpens_cmd_head()
    void serpens_fence()
    uint32_t serpens_inc_u32(uint32_t *p)
    int serpens_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired)
    uint32_t serpens_load_u32(const uint32_t *p)
    uint64_t serpens_load_u64(const uint64_t *p)
    void serpens_store_u32(uint32_t *p, uint32_t v)
    void serpens_store_u64(uint64_t *p, uint64_t v)

cdef extern from "rte_launch.h" nogil:
    ctypedef int (*lcore_function_t)(void *)
    int rte_eal_remote_launch(lcore_function_t f, void *arg, unsigned worker_id)
    int rte_eal_wait_lcore(unsigned worker_id)

cdef extern from "rte_dev.h" nogil:
    int rte_dev_probe(const char *devargs)
    int rte_dev_remove(void *dev)

cdef extern from "rte_ethdev.h" nogil:
    int rte_eth_dev_get_port_by_name(const char *name, uint16_t *port_id)
    struct rte_ether_addr:
        unsigned char addr_bytes[6]
    int rte_eth_macaddr_get(uint16_t port_id, rte_ether_addr *mac_addr)
    struct rte_eth_stats:
        uint64_t ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors, rx_nombuf
    int rte_eth_stats_get(uint16_t port_id, rte_eth_stats *stats)

cdef extern from "rte_eth_ring.h" nogil:
    int rte_eth_from_rings(const char *name, rte_ring * const rx_queues[], unsigned nb_rx_queues,
                           rte_ring * const tx_queues[], unsigned nb_tx_queues,
                           unsigned numa_node)
