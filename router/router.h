/*
 * The node's router (paper §IV-B1, DESIGN §3 "Router"), first piece: one SFC behind one pair
 * of ports, dispatched over that SFC's instances with flow affinity.
 *
 * Theory of operation. Each loop: RX a burst from the input port; for each packet find its
 * flow (5-tuple, or the L2 header for non-IP frames) in the flow table: a known flow goes to
 * the instance it is pinned to, a new one to the active instance with the fewest queued
 * packets. Packets are enqueued per instance; a sleeping instance is woken once 128 packets
 * wait for it or the oldest has waited `wake_us`; an instance whose ring is full holds the
 * router's RX until its packets went in (back-pressure to the port's queue: nothing is
 * dropped or reordered here). Then every instance's TX ring is drained:
 * OUT packets are buffered for the output port (flushed when 32 are ready or after
 * `drain_us`), the rest are freed. With nothing to do the router backs off, sleeping up to
 * 4 ms, so an idle node costs almost no CPU (the first packet after a long idle period may
 * wait that long).
 *
 * Scale-in without reordering or two instances on one flow: an instance being retired is
 * marked `draining`; it gets no new flows, keeps its flows until every packet given to it
 * came back (nothing queued, nothing in flight), and only then are its flows re-pinned (on
 * their next packet) to a live instance, which finds their state in shared memory. Under
 * traffic that never pauses this waits for a moment with nothing in flight.
 *
 * Writers: the control side (Python) writes `stop` and the instance slots' `state`; the router
 * thread writes everything else.
 */
#ifndef SERPENS_ROUTER_H
#define SERPENS_ROUTER_H

#include <stdint.h>

#include <rte_mbuf.h>
#include <rte_ring.h>

#include "pool_ctl.h"

#define SERPENS_ROUTER_MAX_INSTANCES 16
#define SERPENS_FLOW_WAYS 8
#define SERPENS_FLOW_BUCKETS 8192 /* x 8 ways: 64K flows pinned at once (LRU beyond) */

enum serpens_instance_state {
	SERPENS_INST_EMPTY = 0,
	SERPENS_INST_ACTIVE = 1,   /* takes new flows */
	SERPENS_INST_DRAINING = 2, /* keeps its flows until drained, takes no new ones */
};

struct serpens_router_instance {
	volatile uint32_t state;     /* control side */
	int efd;
	struct rte_ring *rx, *tx;
	struct serpens_pool_ctl *ctl;
	/* router thread */
	uint32_t waiting;            /* enqueued since the last wake-up */
	uint64_t oldest_tsc;         /* when the first of those was enqueued */
	uint64_t enqueued, returned, wakeups;
	uint32_t npending;           /* packets its full ring did not take yet */
	struct rte_mbuf *pending[SERPENS_BURST];
	volatile uint32_t drained;   /* draining and empty: its flows have moved */
};

/* A flow is known by a 32-bit symmetric hash of its 5-tuple: both directions, and the rare
 * flows sharing a hash, share a pin, which is harmless. One bucket is one cache line. */
struct serpens_flow_bucket {
	uint32_t hash[SERPENS_FLOW_WAYS]; /* 0: empty */
	uint16_t inst[SERPENS_FLOW_WAYS];
	uint16_t used[SERPENS_FLOW_WAYS]; /* coarse last-use time, for LRU replacement */
};

struct serpens_router {
	volatile uint32_t stop;
	int label_off;            /* mbuf verdict dynfield, for serpens_router_lcore_main */
	uint16_t in_port, out_port;
	uint32_t wake_batch;      /* wake after this many queued packets (128) */
	uint64_t wake_cycles;     /* ... or after the oldest waited this long */
	uint64_t drain_cycles;    /* TX flush period */
	struct serpens_router_instance inst[SERPENS_ROUTER_MAX_INSTANCES];
	/* statistics (router thread) */
	uint64_t rx, tx, dropped, no_instance, tx_failed, new_flows, moved_flows, sleeps;
	uint32_t npending;       /* sum of the instances' pending: no RX while > 0 */
	volatile uint32_t wants_instance; /* packets wait and no instance runs (router sets,
					   * the instance manager clears when it started one) */
	int notify_fd;           /* eventfd written when wants_instance is raised (-1: none) */
	uint32_t nheld;          /* a burst received while no instance ran */
	struct rte_mbuf *held[SERPENS_BURST];
	struct serpens_flow_bucket flows[SERPENS_FLOW_BUCKETS];
};

/* Run until r->stop; returns 0. label_off: the mbuf verdict dynfield. */
int serpens_router_run(struct serpens_router *r, int label_off);
/* The same as an lcore function (rte_eal_remote_launch): arg is the router, label_off set. */
int serpens_router_lcore_main(void *arg);

#endif
