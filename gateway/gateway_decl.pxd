# gateway.h declared to Cython (the router's shared types come from router_decl.pxd); only the
# fields the control side reads or writes are listed.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from includes.dpdk cimport rte_mbuf
from router_decl cimport serpens_match_rule, serpens_pace, serpens_underlay, SERPENS_VLAN_IDS


cdef extern from "classify.h" nogil:
    uint32_t serpens_frame_flow_hash(const uint8_t *f, uint32_t len)


cdef extern from "gateway.h" nogil:
    enum:
        SERPENS_GW_MAX_PORTS
        SERPENS_GW_MAX_SFCS
        SERPENS_GW_MAX_RULES
        SERPENS_GW_MAX_SERVERS
        SERPENS_GW_MAGLEV
        SERPENS_GW_NO_SERVER
        SERPENS_GW_MAX_MOVES
        SERPENS_GW_HOLD
        SERPENS_GW_RELEASE_CREDIT
        SERPENS_GW_SLOT_WORDS
        SERPENS_GW_MOVE_FREE
        SERPENS_GW_MOVE_HOLD
        SERPENS_GW_MOVE_COMMIT
        SERPENS_GW_MOVE_ABORT
        SERPENS_GW_MOVE_DRAINING
        SERPENS_GW_MOVE_DONE

    struct serpens_gw_server:
        uint32_t used
        uint32_t ip
        uint8_t mac[6]
        uint32_t port
        uint64_t tx

    struct serpens_gw_sfc:
        uint32_t used, tag, vni
        uint64_t servers
        uint32_t table_live
        uint8_t table[2][SERPENS_GW_MAGLEV]
        uint64_t rx, tx, back, new_flows, moved_flows
        uint64_t no_server, over_mtu, no_room, flow_full
        uint64_t held, held_dropped, moves

    struct serpens_gw_move:
        uint32_t state, sfc, source, target, all
        uint64_t slots[32]
        uint32_t marker
        uint64_t hold_tsc, release_gap
        uint32_t head, tail
        uint64_t held, held_dropped, repinned

    struct serpens_gw_port:
        uint16_t id
        uint8_t ingress, underlay
        serpens_pace pace
        uint32_t nout
        uint8_t shedding
        uint64_t rx, tx, tx_failed, unmatched, tx_stalls

    struct serpens_gateway:
        uint32_t stop
        uint64_t loops
        uint64_t stall_cycles
        uint64_t idle_cycles
        uint32_t nports
        int32_t default_sfc, underlay_port, egress_port
        serpens_underlay underlay
        serpens_gw_port ports[SERPENS_GW_MAX_PORTS]
        uint32_t rules_live
        uint32_t nrules[2]
        serpens_match_rule rules[2][SERPENS_GW_MAX_RULES]
        uint8_t tag_sfc[SERPENS_VLAN_IDS]
        serpens_gw_server servers[SERPENS_GW_MAX_SERVERS]
        serpens_gw_sfc sfcs[SERPENS_GW_MAX_SFCS]
        uint64_t rx, tx, tx_failed, sleeps
        uint64_t arp_replies, not_ours, bad_outer, over_mtu, unknown_tag, unmatched
        uint32_t moving
        serpens_gw_move moves[SERPENS_GW_MAX_MOVES]
        rte_mbuf *marker
        uint32_t marker_port

    cdef struct serpens_flow  # serpens/nf.h's: read only by the C side
    int serpens_gw_flow_slot(int sfc, const serpens_flow *flow)
    int serpens_gateway_run(serpens_gateway *g)
    uint32_t serpens_gateway_poll(serpens_gateway *g)
    void serpens_gateway_release(serpens_gateway *g)
    int serpens_gateway_lcore_main(void *arg)
