# router.h declared to Cython: the one place the extension learns the router's layout. Array
# sizes and states are the header's own names (extern enums), so a change there needs no edit
# here; only the fields the control side reads or writes are listed.
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from includes.core cimport serpens_obs, serpens_pool_ctl
from includes.dpdk cimport rte_ring


cdef extern from "vxlan.h" nogil:
    enum:
        SERPENS_VXLAN_OVERHEAD
        SERPENS_VXLAN_IP_OVERHEAD
        SERPENS_VXLAN_MAX_TAG

    struct serpens_underlay:
        uint32_t ip
        uint8_t mac[6]
        uint16_t mtu
        uint16_t ip_id

    uint16_t serpens_vxlan_sport(uint32_t hash)


cdef extern from "pace.h" nogil:
    struct serpens_pace:
        uint64_t missed, rx_empty

    void serpens_pace_set(serpens_pace *p, double pps, uint32_t depth)


cdef extern from "router.h" nogil:
    enum:
        SERPENS_ROUTER_MAX_INSTANCES
        SERPENS_ROUTER_MAX_SFCS
        SERPENS_ROUTER_MARKERS
        SERPENS_ROUTER_MAX_PORTS
        SERPENS_ROUTER_MAX_RULES
        SERPENS_VLAN_IDS
        SERPENS_LAT_BUCKETS
        SERPENS_STAGES

    enum serpens_instance_state:
        SERPENS_INST_EMPTY
        SERPENS_INST_ACTIVE
        SERPENS_INST_DRAINING
        SERPENS_INST_DEAD
        SERPENS_INST_REAPED

    struct serpens_rx_meta:
        uint64_t rx_tsc
        uint32_t flow, seq

    struct serpens_lat_rec:
        uint64_t rx_tsc, tx_tsc
        uint32_t flow, seq

    struct serpens_router_instance:
        uint32_t state
        uint16_t sfc
        int efd
        rte_ring *rx
        rte_ring *tx
        serpens_pool_ctl *ctl
        uint32_t watchdog_fired
        uint64_t crash_seen_tsc
        int pidfd, pid
        uint64_t budget_cycles, budget_ns
        uint32_t waiting
        uint64_t enqueued, returned, wakeups, assigned, pending_dropped, shed_mark, shed_owed
        uint32_t npending
        uint32_t drained
        uint64_t barrier
        uint32_t barrier_on, shedding
        uint64_t stall_since, watchdog_tsc, suspect_batch, suspect_cpu_ns, last_return_tsc
        uint64_t dropped

    struct serpens_router_sfc:
        uint32_t used
        int16_t next
        uint16_t out_port
        uint32_t wants_instance
        int notify_fd
        int32_t rebalance_to
        uint32_t drop_all, nheld, moving, hold_shedding
        uint64_t release_loop
        uint64_t rx, out, dropped, new_flows, moved_flows, rebalanced_flows
        uint64_t bytes
        uint64_t drop_died, drop_stuck, drop_hold, drop_failed, drop_mtu
        uint32_t vx_tag, vx_vni
        uint8_t vx_on, to_gateway
        serpens_obs *obs

    struct serpens_match_rule:
        uint8_t src[16]
        uint8_t src_mask[16]
        uint8_t dst[16]
        uint8_t dst_mask[16]
        uint16_t sport_lo, sport_hi, dport_lo, dport_hi
        uint8_t family, proto
        int8_t in_port
        uint16_t sfc

    struct serpens_router_port:
        uint16_t id
        uint8_t input
        serpens_pace pace
        uint64_t rx, tx, tx_failed, unmatched

    struct serpens_gw_addr:
        uint32_t ip
        uint8_t mac[6]

    struct serpens_router:
        uint32_t stop, requests
        int label_off, meta_off
        uint32_t wake_batch
        uint64_t wake_cycles, drain_cycles, stall_cycles, hold_cycles
        uint32_t nports
        int32_t default_sfc
        serpens_router_port ports[SERPENS_ROUTER_MAX_PORTS]
        uint32_t rules_live
        uint32_t nrules[2]
        serpens_match_rule rules[2][SERPENS_ROUTER_MAX_RULES]
        uint8_t tag_sfc[SERPENS_VLAN_IDS]
        serpens_router_sfc sfcs[SERPENS_ROUTER_MAX_SFCS]
        serpens_router_instance inst[SERPENS_ROUTER_MAX_INSTANCES]
        uint32_t ninst
        serpens_underlay underlay
        uint32_t underlay_port
        uint32_t gw_live
        serpens_gw_addr gw[2]
        uint64_t vx_rx, vx_arp, vx_not_ours, vx_bad_outer, vx_over_mtu, vx_unknown_tag
        uint32_t markers[SERPENS_ROUTER_MARKERS]
        uint64_t marker_loops[SERPENS_ROUTER_MARKERS]
        uint64_t nmarkers
        uint32_t log_on
        serpens_lat_rec *log
        uint64_t log_cap, log_n
        uint32_t log_stamp_off
        uint32_t lat_on, lat_nbounds
        uint64_t lat_bounds[SERPENS_LAT_BUCKETS]
        uint64_t lat_counts[SERPENS_LAT_BUCKETS + 1]
        uint64_t lat_sum
        uint32_t npending, nheld, nstalled
        uint64_t rx, tx, dropped, tx_failed, sleeps, loops, busy_cycles
        uint32_t stamp_on
        uint64_t stamp_last
        uint64_t stage_cycles[SERPENS_STAGES]

    serpens_router *serpens_router_alloc()

    int serpens_router_run(serpens_router *r)
    void serpens_router_reap(serpens_router *r, int i)
    int serpens_router_lcore_main(void *arg)
