/*
 * The gateway's packet loop (paper §IV-B1, DESIGN §7 "Gateway"): frames from the outside to
 * the servers that run their SFC, over VXLAN, and the servers' results back out.
 *
 * Theory of operation. Each loop: RX a burst (32) from the next ingress port; classify each
 * frame to an SFC with the router's match semantics (router/classify.h: VLAN tag, rules,
 * default; a frame no SFC takes is counted `unmatched` and freed); find its flow (the same
 * symmetric flow hash, keyed with the SFC) in the flow table: a live entry names the server the
 * flow is pinned to, as long as that server still serves the SFC; otherwise the SFC's Maglev
 * table (built by the control side from the servers' weights, i.e. their instance counts)
 * picks one and the flow is pinned to it. So a live flow keeps its server when servers are
 * added or weights change (only new flows follow the new table), and removing a server moves
 * only its flows. Then the frame is VXLAN-encapsulated in place (runtime_cy/src/vxlan.h: the
 * SFC's tag and VNI, outer source port from the flow hash) and sent on the server's underlay
 * port: the gateway's underlay port, or one of its own when the server has one (point-to-point
 * links such as memif between containers on one host: one port per server).
 *
 * From every underlay port: VXLAN for the gateway's address whose tag and VNI are an SFC's is
 * decapsulated and leaves on the egress port; ARP requests for its address are answered on the
 * port they came on; everything else is counted by reason and freed. Neighbours (the servers'
 * MACs) are pushed by the control side: the gateway resolves nothing itself.
 *
 * The flow table is bounded (SERPENS_GW_FLOW_BUCKETS x SERPENS_GW_FLOW_WAYS); an entry unused
 * for `idle_cycles` is free again. A flow whose bucket holds only live entries is sent by the
 * Maglev table alone, unpinned, and counted (`flow_full`): while the table does not change it
 * still reaches the same server.
 *
 * An ingress port may be paced (router/pace.h) to replay a capture at a given rate.
 *
 * Back-pressure, bounded in time (as the router's toward its instances, DESIGN §8): what a
 * port's full TX queue (a server's underlay link, the egress) does not take waits in the
 * port's `out` (two bursts). While an underlay port cannot take another burst, the loop
 * reads no more from the outside: arrivals wait in the ingress port's RX queue, where a
 * NIC's buffering is, instead of being dropped because a server's link was momentarily full
 * (on one host: its router had not run yet). Likewise a full egress stops the reading of
 * the underlay ports (what the servers return waits in their links). A port that has held
 * back for `stall_cycles` and HOLD_PASSES passes of the loop (a pause of the loop's own CPU
 * is no evidence against the link) without its queue ever emptying sheds: what waits is
 * dropped (`tx_failed`), and so is whatever its TX does not take at once, until it takes all
 * it is given again. So a dead or slow link holds the others back for at most about
 * stall_cycles. A move's marker is never dropped: it waits until nothing waits on its port
 * and its TX queue takes it.
 *
 * Moving flows between servers with their state (issue 14, docs/moves.md): a move (moves[])
 * names an SFC, a source and a target server and the Maglev slots of its flows (or all). While
 * it holds, the packets of those flows that would go to the source wait in the move's bounded
 * hold ring instead (counted; dropped and counted when it is full); every other flow goes on.
 * The control side then sends a marker after the last frame the source got of them: an ARP
 * request to the source carrying the move's marker id (runtime_cy/src/vxlan.h); once the
 * source's router recorded that id, it has received all of them. On release
 * the loop re-pins the moving flows (commit: to the target; abort: they stay on the source) in
 * one pass over the flow table, marking their entries with the move, then sends the held
 * packets first: each loop sends part of the ring before it reads the ports, and newer
 * packets of the marked flows (only those: not the target's own) join the ring's end until
 * it is empty, so a flow's packets leave in the order they came; a last pass unmarks them. No allocation: the
 * ring holds the received mbufs (their flow hash in hash.rss). The release is paced
 * (`release_gap`, set by the control side from the rate the flows arrived at while held): a
 * backlog sent at the gateway's own speed would land on the target's queues in one burst and
 * overflow them. The first SERPENS_GW_RELEASE_CREDIT held packets leave at once, later
 * bursts of at most SERPENS_BURST.
 *
 * Writers: the control side writes the configuration (ports, underlay, servers, SFCs, rules,
 * tags) and `stop`; a server or an SFC is switched by writing its fields first and its `used`
 * (or an SFC's `table_live`) last. The gateway thread writes everything else.
 */
#ifndef SERPENS_GATEWAY_H
#define SERPENS_GATEWAY_H

#include <stdint.h>
#include <string.h>

#include "classify.h"
#include "pace.h"
#include "vxlan.h"

#define SERPENS_GW_MAX_PORTS 8
#define SERPENS_GW_MAX_SFCS 16
#define SERPENS_GW_MAX_RULES 64
#define SERPENS_GW_MAX_SERVERS 64  /* one bit each in an SFC's `servers` mask */
#define SERPENS_GW_MAGLEV 2039     /* Maglev table size: prime, >> servers */
#define SERPENS_GW_FLOW_WAYS 8
#define SERPENS_GW_FLOW_BUCKETS 8192 /* x 8 ways: 64K flows */
#define SERPENS_GW_NO_SERVER 0xFF
#define SERPENS_GW_MAX_MOVES 4
#define SERPENS_GW_HOLD 65536        /* packets held per move (a power of two) */
#define SERPENS_GW_SLOT_WORDS ((SERPENS_GW_MAGLEV + 63) / 64)
#define SERPENS_GW_RELEASE_BURST 64  /* held packets sent per loop while a move releases */
/* Held packets a release may send before its pace applies: a wave's hold (tens to hundreds
 * of packets) leaves at once, which a target's queues take; a long hold's backlog (16k
 * packets) is paced after them (gateway.h "Moving flows"). */
#define SERPENS_GW_RELEASE_CREDIT 256
#define SERPENS_GW_OUT (2 * SERPENS_BURST) /* frames a port's TX queue may leave waiting */

enum serpens_gw_move_state {
	SERPENS_GW_MOVE_FREE = 0,
	SERPENS_GW_MOVE_HOLD = 1,      /* control: holding the moving flows' packets */
	SERPENS_GW_MOVE_COMMIT = 2,    /* control: release to the target */
	SERPENS_GW_MOVE_ABORT = 3,     /* control: release to the source */
	SERPENS_GW_MOVE_DRAINING = 4,  /* loop: re-pinned, sending what it held */
	SERPENS_GW_MOVE_DONE = 5,      /* loop: the ring is empty; control frees the move */
};

/* The Maglev slot of a flow key (flow_key() in gateway.c: hash and SFC). */
static inline uint32_t serpens_gw_slot(uint32_t key)
{
	return (key * 0x9E3779B1u >> 7) % SERPENS_GW_MAGLEV;
}

/* A flow's key in the flow table: its hash, keyed with the SFC (never 0). */
static inline uint32_t serpens_gw_flow_key(int sfc, uint32_t hash)
{
	return (hash + (uint32_t)sfc * 0x85EBCA6Bu) | 1;
}

/* The Maglev slot of the flow a per-flow state table keys as `f` (nf.h struct serpens_flow)
 * in the gateway's SFC `sfc`: the slot its packets' flow hash picks (-1: not IP). */
static inline int serpens_gw_flow_slot(int sfc, const struct serpens_flow *f)
{
	struct serpens_hdrs h;
	if (f->family != 4 && f->family != 6)
		return -1;
	memset(&h, 0, sizeof(h));
	h.family = f->family;
	h.flow = *f;
	return (int)serpens_gw_slot(serpens_gw_flow_key(sfc, serpens_flow_hash(NULL, 0, &h,
										SERPENS_PARSE_OK)));
}

struct serpens_gw_move {
	volatile uint32_t state;     /* enum serpens_gw_move_state (see there: who writes) */
	uint32_t sfc;
	uint32_t source, target;     /* server indexes */
	uint32_t all;                /* every slot (slots[] unused) */
	uint64_t slots[SERPENS_GW_SLOT_WORDS]; /* bit s: flows in Maglev slot s move */
	uint32_t marker;             /* its marker's id (vxlan.h serpens_arp_marker) */
	uint64_t hold_tsc;           /* when the hold began */
	uint64_t release_gap;        /* TSC cycles x 256 between held packets sent (0: unpaced) */
	/* gateway thread */
	uint64_t release_clock;      /* TSC x 256: the next held packet may leave then */
	uint32_t to;                 /* where the held packets go (release) */
	uint32_t head, tail;         /* ring[head..tail) (mod SERPENS_GW_HOLD) is held */
	volatile uint64_t held, held_dropped, repinned;
	struct rte_mbuf *ring[SERPENS_GW_HOLD];
};

struct serpens_gw_server {
	volatile uint32_t used;
	uint32_t ip;                 /* underlay address, network order */
	uint8_t mac[6];              /* its MAC on the underlay (pushed, not resolved) */
	uint32_t port;               /* index into ports[]: the underlay port it is reached on */
	uint64_t tx;                 /* gateway thread: frames sent to it */
};

struct serpens_gw_sfc {
	volatile uint32_t used;
	uint32_t tag;                /* SFC tag in the VXLAN reserved bits (24 bits) */
	uint32_t vni;                /* 24 bits, the tenant (0 by default) */
	volatile uint64_t servers;   /* bitmask of the servers serving it */
	volatile uint32_t table_live; /* which of table[] is in use */
	uint8_t table[2][SERPENS_GW_MAGLEV]; /* Maglev: slot -> server (NO_SERVER: none) */
	/* gateway thread */
	uint64_t rx, tx, back, new_flows, moved_flows;
	uint64_t no_server;          /* dropped: no server serves it */
	uint64_t over_mtu;           /* dropped: the encapsulated frame would exceed the MTU */
	uint64_t no_room;            /* dropped: no headroom for the outer header */
	uint64_t flow_full;          /* sent unpinned: its flow's bucket was full of live flows */
	uint64_t held, held_dropped, moves; /* moves: packets held, dropped full, moves done */
};

struct serpens_gw_port {
	uint16_t id;                 /* DPDK port id */
	uint8_t ingress;             /* frames from the outside arrive here */
	uint8_t underlay;            /* an underlay port (servers behind it) */
	struct serpens_pace pace;    /* ingress pacing (replayed captures; off unless set) */
	/* what waits to be sent (back-pressure, gateway.h "Theory"): up to two bursts */
	uint32_t nout;
	uint8_t shedding;            /* it held back for stall_cycles: no back-pressure now */
	uint64_t hold_since;         /* TSC: it began to hold back what feeds it, and has had
				      * frames waiting since (0: not) */
	uint32_t hold_passes;        /* loop passes it has held back for */
	struct rte_mbuf *out[SERPENS_GW_OUT];
	uint64_t rx, tx, tx_failed, unmatched;
	uint64_t tx_stalls;          /* times it began to hold back what feeds it */
};

struct serpens_gateway {
	volatile uint32_t stop;
	volatile uint64_t loops;     /* iterations: two more = a control change is in effect */
	uint64_t stall_cycles;       /* longest a full TX queue may hold the ingress back */
	uint64_t now_tsc;            /* gateway thread: this loop's time */
	uint64_t idle_cycles;        /* a flow unused this long is forgotten */
	uint32_t nports;
	int32_t default_sfc;
	int32_t underlay_port;       /* index into ports[]: servers' default (-1: none yet) */
	int32_t egress_port;         /* index into ports[]: decapsulated frames leave here */
	struct serpens_underlay underlay;
	struct serpens_gw_port ports[SERPENS_GW_MAX_PORTS];
	/* match rules, double-buffered (classify.h): rules[rules_live] is the table in effect */
	volatile uint32_t rules_live;
	uint32_t nrules[2];
	struct serpens_match_rule rules[2][SERPENS_GW_MAX_RULES];
	uint8_t tag_sfc[SERPENS_VLAN_IDS];
	struct serpens_gw_server servers[SERPENS_GW_MAX_SERVERS];
	struct serpens_gw_sfc sfcs[SERPENS_GW_MAX_SFCS];
	/* gateway thread: counters by reason */
	uint64_t rx, tx, tx_failed, sleeps;
	uint64_t arp_replies;
	uint64_t not_ours;           /* underlay frames neither VXLAN nor ARP for us */
	uint64_t bad_outer;          /* VXLAN for us with a malformed outer header */
	uint64_t over_mtu;           /* VXLAN for us larger than the MTU */
	uint64_t unknown_tag;        /* VXLAN for us whose tag and VNI are no SFC's */
	int32_t last_tag_sfc;        /* the SFC of the last VXLAN frame back (tried first) */
	uint64_t unmatched;          /* from the outside, no SFC takes it */
	uint32_t next_port;
	/* moves (control: a move's fields, then its state; `moving` counts the moves not FREE,
	 * so the loop looks at them only while there is one) */
	volatile uint32_t moving;
	struct serpens_gw_move moves[SERPENS_GW_MAX_MOVES];
	/* control: a frame to send on port index marker_port after everything before (the
	 * loop takes it and clears this) */
	struct rte_mbuf *volatile marker;
	uint32_t marker_port;
	struct serpens_gw_flow_bucket {
		uint32_t key[SERPENS_GW_FLOW_WAYS];  /* 0: empty */
		uint32_t used[SERPENS_GW_FLOW_WAYS]; /* last use, TSC >> 16 */
		uint8_t server[SERPENS_GW_FLOW_WAYS];
		uint8_t sfc[SERPENS_GW_FLOW_WAYS];   /* its SFC (re-pinning a move's flows) */
		uint8_t move[SERPENS_GW_FLOW_WAYS];  /* 1 + the move releasing it (0: none) */
	} flows[SERPENS_GW_FLOW_BUCKETS];
};

/* Run until g->stop; returns 0. */
int serpens_gateway_run(struct serpens_gateway *g);
/* The same as an lcore function (rte_eal_remote_launch): arg is the gateway. */
int serpens_gateway_lcore_main(void *arg);
/* One loop iteration (RX from one port + underlay, TX); returns the frames handled (or, if
 * none, those that had waited and left): 0 means idle. */
uint32_t serpens_gateway_poll(struct serpens_gateway *g);
/* Frames waiting for a full TX queue (a loop must not sleep while there are any). */
uint32_t serpens_gateway_waiting(const struct serpens_gateway *g);
/* Free every frame the gateway holds (waiting on ports, held by moves, a marker not sent):
 * its loop must not run. */
void serpens_gateway_release(struct serpens_gateway *g);

#endif
