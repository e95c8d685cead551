# Declarations of the Serpens C core (runtime_cy/src) used by the dataplane extension.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

from includes.dpdk cimport rte_mempool, rte_ring

cdef extern from "serpens/nf.h" nogil:
    enum:  # array sizes below come from the header (enum: usable as dimensions)
        SERPENS_BURST
        SERPENS_MAX_PORTS
        SERPENS_MAX_COUNTERS
        SERPENS_COUNTER_NAME
    uint16_t SERPENS_LABEL_OUT
    uint16_t SERPENS_LABEL_DROP
    struct serpens_hdrs:
        uint16_t ethertype
        uint16_t l3_off
        uint16_t l4_off
        uint16_t payload_off
        uint32_t payload_len
        uint32_t l3_len
        uint8_t family
        uint8_t flags

from includes.nf_image cimport serpens_image_layout, serpens_region_reserve

cdef extern from "state_backend.h" nogil:
    enum:
        SERPENS_STATE_ARG
    int SERPENS_STATE_LOCAL

cdef extern from "pool_ctl.h" nogil:
    enum:
        SERPENS_MAX_STEPS
        SERPENS_MAX_IMAGES
        SERPENS_RING_NAME
    int SERPENS_CONFIG_MAX
    uint32_t SERPENS_CMD_MAGIC
    int SERPENS_CMD_START, SERPENS_CMD_STOP, SERPENS_CMD_EXIT
    int SERPENS_LOAD_MAP, SERPENS_LOAD_DLOPEN, SERPENS_LOAD_FORK
    int SERPENS_STEP_NF, SERPENS_STEP_HASH
    int SERPENS_POOL_BOOTING, SERPENS_POOL_IDLE, SERPENS_POOL_RUNNING, SERPENS_POOL_EXITED

    struct serpens_step:
        uint16_t kind
        uint16_t image
        uint16_t nports
        uint16_t next[SERPENS_MAX_PORTS]
        uint32_t config_off
        uint32_t config_len
        char name[48]

    struct serpens_cmd:
        uint32_t magic
        uint32_t kind
        uint32_t seq
        uint32_t instance_id
        uint32_t load_mode
        uint32_t populate
        uint32_t state_backend
        uint32_t pad
        uint16_t nsteps
        uint16_t nimages
        uint32_t config_len
        char rx_ring[SERPENS_RING_NAME]
        char tx_ring[SERPENS_RING_NAME]
        uint64_t rx_ring_addr
        uint64_t tx_ring_addr
        serpens_image_layout images[SERPENS_MAX_IMAGES]
        char dl_path[SERPENS_MAX_IMAGES][108]
        char state_arg[SERPENS_STATE_ARG]
        serpens_step steps[SERPENS_MAX_STEPS]
        unsigned char config[1]  # SERPENS_CONFIG_MAX bytes in C

    struct serpens_nf_counters:
        uint32_t n
        uint32_t ops
        char names[SERPENS_MAX_COUNTERS][SERPENS_COUNTER_NAME]
        uint64_t values[SERPENS_MAX_COUNTERS]
        uint64_t in_pkts
        uint64_t dropped
        uint64_t timed_cycles
        uint64_t timed_pkts

    struct serpens_crash:
        uint32_t signo
        int32_t code, step, syscall
        uint64_t addr, ip, tsc

    enum:
        SERPENS_OBS_RING
    int SERPENS_OBS_CAPTURE, SERPENS_OBS_TRACE
    int SERPENS_AT_IN, SERPENS_AT_OUT, SERPENS_AT_DROP

    struct serpens_obs:
        uint32_t on
        uint32_t flags
        int32_t step
        uint32_t at
        uint32_t snaplen
        uint32_t trace_max
        uint64_t tail
        uint64_t head
        uint64_t lost
        unsigned char ring[1]  # SERPENS_OBS_RING bytes in C

    struct serpens_pool_ctl:
        uint32_t cmd_seq
        uint32_t merge_req
        uint64_t wake_cycles
        uint32_t own_cpu
        uint32_t nf_cycles_on
        uint32_t split_req
        uint32_t state
        uint32_t ack_seq
        uint64_t sleeping
        int32_t last_error
        uint32_t instance_id
        uint32_t pid
        uint32_t merge_done
        uint32_t split_done
        int32_t split_rc
        char split_error[120]
        char split_only[128]
        char error[200]
        char state_error[128]
        uint64_t woken
        uint64_t rx_pkts
        uint64_t tx_pkts
        uint64_t drop_pkts
        uint64_t bad_labels
        uint64_t bad_mbufs
        uint64_t batches
        uint64_t wakeups
        uint64_t forked_done
        uint64_t t_cmd_cycles
        uint64_t t_ready_cycles
        uint64_t t_burst_cycles
        uint64_t t_batch_cycles
        uint64_t busy_cycles
        uint32_t inflight_n
        int32_t cur_step
        uint64_t batch_tsc
        void *inflight[SERPENS_BURST]
        serpens_crash crash
        serpens_nf_counters nf[SERPENS_MAX_STEPS]
        serpens_obs obs

    int serpens_pool_wake(serpens_pool_ctl *ctl, int efd)

cdef extern from "nf_api.h" nogil:
    void serpens_clock_init()
    uint64_t serpens_now_ns()
    uint64_t serpens_cycles_to_ns(uint64_t cycles)

cdef extern from "pkt.h" nogil:
    int serpens_parse(const unsigned char *frame, uint32_t len, serpens_hdrs *h)
    int serpens_parse_general(const unsigned char *frame, uint32_t len, serpens_hdrs *h)
    uint32_t serpens_hash_crc(const void *key, uint32_t len, uint32_t seed)

cdef extern from "runtime.h" nogil:
    struct serpens_runtime_env:
        serpens_pool_ctl *ctl
        int sock
        int efd
        int label_off
        uint32_t idle_us
    int serpens_runtime_main(const serpens_runtime_env *env)

cdef extern from "state_table.h" nogil:
    struct serpens_table_hdr:
        uint32_t flags
        uint32_t key_size
        uint32_t value_size
        uint32_t capacity
        uint32_t nslots
        uint64_t file_size
        uint64_t count
        char name[64]
        uint64_t epoch
    struct serpens_table:
        serpens_table_hdr *hdr
        uint8_t *slots
        uint32_t mask
        uint32_t slot_size
        uint32_t flags
    int serpens_table_open(serpens_table *t, const char *dir, const char *ns, const char *name,
                           uint32_t flags, uint32_t key_size, uint32_t value_size,
                           uint32_t capacity, char *err, size_t errlen)
    void serpens_table_close(serpens_table *t)
    void *serpens_table_get(const serpens_table *t, const void *key)
    uint32_t serpens_table_get_bulk(const serpens_table *t, const void *const *keys, uint32_t n,
                                    void **values)
    int serpens_table_put(serpens_table *t, const void *key, const void *value, void **stored)
    int serpens_table_delete(serpens_table *t, const void *key)
    uint64_t serpens_table_inserts(const serpens_table *t)
    int serpens_table_populate(const serpens_table *t)
    int serpens_table_logged(const serpens_table *t, uint64_t seq, const void **key)
    int64_t serpens_table_next(const serpens_table *t, uint64_t *pos, const void **key,
                               const void **value)

cdef extern from "nf_api.h" nogil:
    void serpens_state_set_dir(const char *dir)

cdef extern from "lost_batch.h" nogil:
    uint32_t serpens_free_lost_batch(serpens_pool_ctl *ctl, rte_ring *rx, const rte_ring *tx)

cdef extern from "ports.h" nogil:
    int serpens_port_open(const char *name, rte_mempool *mp, char *err, size_t errlen)
    int serpens_port_start(uint16_t port, const char *name, rte_mempool *mp, char *err,
                           size_t errlen)
    void serpens_port_close(uint16_t port)

cdef extern from "replay.h" nogil:
    struct serpens_replay_stats:
        uint64_t rx
        uint64_t out
        uint64_t dropped
        uint64_t tx_failed
    int serpens_replay(uint16_t in_port, uint16_t out_port, rte_ring *rx, rte_ring *tx,
                       serpens_pool_ctl *ctl, int efd, int label_offset,
                       serpens_replay_stats *st)

cdef extern from "sandbox.h" nogil:
    int serpens_sandbox_enter(int flags, char *err, size_t errlen)
    int SERPENS_SANDBOX_NET
