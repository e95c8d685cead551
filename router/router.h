/*
 * The node's router (paper §IV-B1, DESIGN §3 "Router"): packets from the node's input ports
 * to the SFCs' instances, with flow affinity, and from the instances to the output ports.
 *
 * Theory of operation. Each loop: RX a burst from the next input port; classify each packet
 * to an SFC: a VLAN ID mapped to an SFC (an SFC tag an upstream router put on the packet)
 * wins, else the first matching rule of the match table, else the default SFC; a packet no
 * SFC takes is counted (`unmatched`) and freed. Then find its flow (symmetric 5-tuple hash,
 * or the L2 header for non-IP frames) in the flow table: a known flow goes to the instance it
 * is pinned to, a new one to the SFC's active instance with the fewest queued packets.
 * Packets are enqueued per instance; a sleeping instance is woken once 128 packets wait for it
 * or the oldest has waited `wake_us`; an instance whose ring is full holds the router's RX
 * until its packets went in (back-pressure to the port's queue: nothing is dropped or
 * reordered here). Then every instance's TX ring is drained: an OUT packet goes to its SFC's
 * `next` SFC if it has one (local-proxy chaining: the hop between NFs passes the router), or
 * to the SFC's output port, buffered there (flushed when 32 are ready or after `drain_us`);
 * the rest are freed. With nothing to do the router backs off, sleeping up to 4 ms, so an idle
 * node costs almost no CPU (the first packet after a long idle period may wait that long).
 *
 * An SFC without a running instance (scaled to zero): its packets wait in a hold queue, the
 * router raises the SFC's `wants_instance` and writes its `notify_fd` once; the instance manager
 * starts an instance in microseconds (paper §III-A) and the held packets go first. A full hold
 * queue stops RX (back-pressure), so nothing is lost.
 *
 * Scale-in without reordering or two instances on one flow: an instance being retired is
 * marked `draining`; it gets no new flows, keeps its flows until every packet given to it
 * came back (nothing queued, nothing in flight), and only then are its flows re-pinned (on
 * their next packet) to a live instance, which finds their state in shared memory.
 *
 * Scale-out moves load too (`rebalance_to`): a share (1/n) of every instance's pinned flows is
 * re-pinned to the new instance, each instance gets a barrier (the packets given to it so
 * far), and a moved flow's packets wait in the SFC's hold queue (with every later packet of
 * the SFC, so order holds) until its old instance returned everything before the barrier.
 * Then no packet of the flow is left behind it, and the new instance takes over; its state
 * is in shared memory already.
 *
 * Containment (DESIGN §8: the router never waits on one instance or one SFC). Instances run
 * untrusted NFs and may die (a fault, SIGSYS from the sandbox, SIGKILL) or hang:
 * - Back-pressure is bounded in time. RX stops for an instance whose full ring left packets
 *   pending, or for a full hold queue, for at most `stall_cycles`; after that the instance (or
 *   SFC) sheds: what it cannot take is dropped and counted (`drop_stuck`, `drop_hold`) until
 *   it takes packets again, so other SFCs' traffic flows.
 * - Held packets wait at most `hold_cycles` (then `drop_hold`); an SFC the control side marked
 *   `drop_all` (failed) has its packets dropped at once (`drop_failed`), never held.
 * - Watchdog: an instance inside one batch (its control block's batch_tsc) for longer than its
 *   budget is killed through its pidfd (`watchdog_fired`), then handled as dead. This VM's
 *   host stops a vCPU for up to ~15 ms now and then, so wall time alone would kill healthy
 *   instances: past the budget in wall time, the batch must also burn a budget's worth of CPU
 *   (the process's /proc schedstat, which excludes steal time; read only for such suspects).
 *   The control block is the NF's to scribble on, so a backstop uses only what the router
 *   knows: an instance holding packets that returned none for 10 budgets is a suspect too,
 *   killed on the same CPU-time evidence.
 * - An instance whose process is gone (or that was stopped) is retired by the control side
 *   setting state DEAD: the router then forwards what the instance finished, frees everything
 *   it still held for it (pending, its RX ring, and the part of its last batch that never
 *   reached the TX ring: the RX ring's consumer count minus the TX ring's producer count,
 *   taken from the end of the control block's inflight[]), counts those as `drop_died`, marks
 *   its barrier met, and sets REAPED; only then may the control side free its rings. Flows
 *   pinned to it move to a live instance on their next packet. An instance whose process
 *   recorded a fatal signal in its control block is killed (SIGKILL: the record could be
 *   forged) and reaped by the router itself a watchdog period later, which then writes the
 *   SFC's notify_fd.
 *
 * VXLAN (DESIGN §7, runtime_cy/src/vxlan.h). With an underlay set, frames on the underlay port
 * are the overlay's only: VXLAN to the node's underlay address is decapsulated and its SFC tag
 * (the 24 reserved bits) with its VNI names the SFC (`vx_tag`, `vx_vni` of an SFC with
 * `vx_on`; another tenant's VNI makes the tag unknown); the inner frame then
 * goes the way of any classified packet, flow hash and all. ARP requests for the underlay
 * address are answered (a move's marker among them: its id is recorded, `markers`). Unknown tags, malformed outer headers, frames over the underlay MTU
 * and frames not for us are counted by reason and freed. An SFC whose output is the gateway
 * (`to_gateway`) has its OUT packets encapsulated with its tag toward the gateway (outer
 * source port from the packet's flow hash) and sent on the underlay port; one the MTU cannot
 * carry is counted (`drop_mtu`), never truncated.
 *
 * Every received packet carries metadata in an mbuf dynfield (`serpens_rx_meta`): its arrival
 * time, flow hash and a receive sequence number. When a latency log is armed, the router
 * records them with the transmit time of every packet it sends: benchmarks read latency and
 * per-flow order at the point packets leave the node.
 *
 * Pacing (benchmarks): an input port may be paced to emulate a NIC fed at a constant rate
 * (pace.h, shared with the gateway); each packet is stamped with its scheduled arrival.
 *
 * Writers: the control side (Python) writes `stop`, the configuration (SFCs, rules, tags,
 * ports) before the router runs or while an SFC has no instance, and the instances'
 * `state`; the router thread writes everything else.
 */
#ifndef SERPENS_ROUTER_H
#define SERPENS_ROUTER_H

#include <stdint.h>

#include <rte_mbuf.h>
#include <rte_ring.h>

#include "classify.h"
#include "pace.h"
#include "observe.h"
#include "pool_ctl.h"
#include "vxlan.h"

#define SERPENS_ROUTER_MAX_INSTANCES 64
#define SERPENS_ROUTER_MAX_SFCS 16
#define SERPENS_ROUTER_MAX_PORTS 8
#define SERPENS_ROUTER_MAX_RULES 64
#define SERPENS_ROUTER_MARKERS 16 /* move marker ids remembered (markers[]) */
#define SERPENS_ROUTER_HOLD 256  /* packets held per SFC while its first instance starts */
#define SERPENS_FLOW_WAYS 8
#define SERPENS_FLOW_BUCKETS 8192 /* x 8 ways: 64K flows pinned at once (LRU beyond) */
#define SERPENS_NO_MOVE 0
#define SERPENS_LAT_BUCKETS 16 /* bounds of the sampled latency histogram */
/* Packets per RX and per instance dequeue: twice an NF batch, so ring and port work (and the
 * loop around them) are paid once per 64 packets (measured: docs/dataplane.md budget). */
#define SERPENS_ROUTER_BURST 64

/* Stages of the loop whose cycles `stamp_stages` accounts (docs/dataplane.md budget). */
enum serpens_stage {
	SERPENS_STAGE_LOOP,     /* loop bookkeeping: watchdog, timers, polling empty slots */
	SERPENS_STAGE_RX,       /* rte_eth_rx_burst (net_pcap: a copy into a fresh mbuf) */
	SERPENS_STAGE_CLASSIFY, /* match, flow hash, stamps, bucket prefetch */
	SERPENS_STAGE_DISPATCH, /* flow table: the pinned instance, or a new pin */
	SERPENS_STAGE_ENQUEUE,  /* instance RX rings, wake-ups, pending */
	SERPENS_STAGE_DEQUEUE,  /* instance TX rings */
	SERPENS_STAGE_VERDICT,  /* reading verdicts, buffering OUT packets per port */
	SERPENS_STAGE_TX,       /* rte_eth_tx_burst (net_null: frees the mbufs) */
	SERPENS_STAGE_FREE,     /* freeing dropped packets */
	SERPENS_STAGE_IDLE,     /* yields and sleeps */
	SERPENS_STAGES
};

enum serpens_instance_state {
	SERPENS_INST_EMPTY = 0,
	SERPENS_INST_ACTIVE = 1,   /* takes new flows */
	SERPENS_INST_DRAINING = 2, /* keeps its flows until drained, takes no new ones */
	SERPENS_INST_DEAD = 3,     /* control: the process is gone or stopped: router, let go */
	SERPENS_INST_REAPED = 4,   /* router: nothing of it left here; control may free rings */
};

/* Per packet, set at RX (mbuf dynfield "serpens_rx_meta"). */
struct serpens_rx_meta {
	uint64_t rx_tsc; /* arrival (paced ports: the scheduled arrival) */
	uint32_t flow;   /* flow hash */
	uint32_t seq;    /* router-wide receive order */
};

/* One latency-log record per transmitted packet. */
struct serpens_lat_rec {
	uint64_t rx_tsc, tx_tsc;
	uint32_t flow, seq;
};

struct serpens_router_instance {
	volatile uint32_t state;     /* control side */
	uint16_t sfc;
	int efd;
	struct rte_ring *rx, *tx;
	struct serpens_pool_ctl *ctl;
	/* on the first line with state and sfc: dispatch reads them for every packet */
	volatile uint32_t watchdog_fired; /* the router killed it (stuck in a batch) */
	uint64_t crash_seen_tsc;     /* its crash record was seen (and it was killed) */
	int pidfd;                   /* its pool process (watchdog kills through it; -1: none) */
	int pid;                     /* the same process (its CPU time, for the watchdog) */
	uint64_t budget_cycles;      /* longest batch before the watchdog kills it (0: never) */
	uint64_t budget_ns;
	/* router thread */
	uint32_t waiting;            /* enqueued since the last wake-up */
	uint64_t oldest_tsc;         /* when the first of those was enqueued */
	uint64_t enqueued, returned, wakeups;
	uint32_t npending;           /* packets its full ring did not take yet (pending[]) */
	/* packets given to it (its ring or pending[]), one counter a mover reads whole, and
	 * those of pending[] dropped (shed, reaped): given back or dropped, all are accounted
	 * for once returned + pending_dropped reaches assigned (a mover's wait, a rebalance's
	 * barrier). A shed's packets count there only once the ring's packets ahead of them
	 * (enqueued then: shed_mark) came back: until then shed_owed (router thread). */
	volatile uint64_t assigned, pending_dropped;
	uint64_t shed_mark, shed_owed;
	volatile uint32_t drained;   /* draining and empty: its flows have moved */
	uint64_t barrier;            /* flows moving away wait until returned + pending_dropped
				      * >= barrier (assigned when the rebalance began) */
	uint32_t barrier_on;
	uint32_t shedding;           /* stalled too long: drop what its ring does not take */
	uint64_t stall_since;        /* when its pending packets began waiting (0: none) */
	uint64_t watchdog_tsc;       /* when the watchdog killed it */
	uint64_t suspect_batch;      /* batch_tsc of a batch past its budget in wall time */
	uint64_t suspect_cpu_ns;     /* the process's CPU time when it became suspect */
	uint64_t last_return_tsc;    /* it last returned packets (or began to hold some) */
	uint64_t dropped;            /* packets dropped because of it (pending, ring, batch) */
	struct rte_mbuf *pending[2 * SERPENS_ROUTER_BURST]; /* last: the loop reads the rest */
};

struct serpens_router_sfc {
	uint32_t used;
	int16_t next;                /* OUT packets go to this SFC (-1: to out_port) */
	uint16_t out_port;           /* index into ports[] */
	volatile uint32_t wants_instance; /* set by the router, cleared by the instance manager */
	int notify_fd;               /* eventfd written when wants_instance is raised (-1: none) */
	volatile int32_t rebalance_to; /* control: move a share of the flows to instance - 1 */
	volatile uint32_t drop_all;  /* control: failed, drop its packets instead of holding */
	volatile uint32_t nheld;
	/* `loops` when held packets last left this hold queue for an instance: until the loop
	 * passed it they may be in neither count (nheld, the instance's assigned) */
	volatile uint64_t release_loop;
	struct rte_mbuf *held[SERPENS_ROUTER_HOLD];
	/* router thread */
	uint32_t moving;             /* a rebalance waits for its barriers */
	uint32_t hold_shedding;      /* its full hold queue stalled RX too long: drop instead */
	uint64_t rx, out, dropped, new_flows, moved_flows, rebalanced_flows;
	uint64_t bytes;              /* of the packets its instances returned (out + dropped):
				      * usage metering, frames as the chain left them */
	/* dropped by the router, by reason (`dropped` above: NF verdicts) */
	uint64_t drop_died;          /* queued for or held by an instance that died */
	uint64_t drop_stuck;         /* its instance took nothing for stall_cycles */
	uint64_t drop_hold;          /* waited for an instance longer or beyond the hold queue */
	uint64_t drop_failed;        /* the SFC is failed (drop_all) */
	uint64_t drop_mtu;           /* OUT to the gateway, beyond the underlay MTU (or headroom) */
	/* VXLAN (control side) */
	uint32_t vx_tag, vx_vni;     /* its SFC tag and VNI on the underlay */
	uint8_t vx_on;               /* underlay frames tagged vx_tag are its */
	uint8_t to_gateway;          /* OUT packets go back to the gateway, encapsulated */
	/* control: the ring of a capture of its drops (observe.h), NULL: none; cleared, then the
	 * router quiesced, before the ring is freed */
	struct serpens_obs *volatile obs;
};

struct serpens_router_port {
	uint16_t id;                 /* DPDK port id */
	uint8_t input;               /* the router receives from it */
	struct serpens_pace pace;    /* pacing (benchmarks; off unless set) */
	/* router thread */
	uint32_t nout;
	uint64_t last_flush;
	struct rte_mbuf *out[SERPENS_BURST];
	uint64_t rx, tx, tx_failed, unmatched;
};

/* Metadata stays valid within a process: mbufs' dynfield offset and the TSC. */
struct serpens_gw_addr {
	uint32_t ip;
	uint8_t mac[6];
};

struct serpens_router {
	volatile uint32_t stop;
	volatile uint32_t requests; /* control: some SFC's rebalance_to is set */
	int label_off;            /* mbuf verdict dynfield */
	int meta_off;             /* mbuf serpens_rx_meta dynfield */
	uint32_t wake_batch;      /* wake after this many queued packets (128) */
	uint64_t wake_cycles;     /* ... or after the oldest waited this long */
	uint64_t drain_cycles;    /* TX flush period */
	uint64_t stall_cycles;    /* longest RX stall one instance or hold queue may cause */
	uint64_t hold_cycles;     /* longest a packet waits in a hold queue */
	uint32_t nports;
	int32_t default_sfc;      /* unmatched packets go here (-1: counted and freed) */
	struct serpens_router_port ports[SERPENS_ROUTER_MAX_PORTS];
	/* match rules, double-buffered (classify.h): rules[rules_live] is the table in effect */
	volatile uint32_t rules_live;
	uint32_t nrules[2];
	struct serpens_match_rule rules[2][SERPENS_ROUTER_MAX_RULES];
	uint8_t tag_sfc[SERPENS_VLAN_IDS]; /* VLAN ID -> SFC + 1 (0: not a tag) */
	struct serpens_router_sfc sfcs[SERPENS_ROUTER_MAX_SFCS];
	struct serpens_router_instance inst[SERPENS_ROUTER_MAX_INSTANCES];
	volatile uint32_t ninst;  /* control: inst[] at and beyond this index were never used */
	/* VXLAN: underlay.ip 0 = no underlay */
	struct serpens_underlay underlay;
	uint32_t underlay_port;   /* index into ports[] */
	/* the gateway's underlay address (network order) and MAC, double-buffered as the rules:
	 * gw[gw_live] is in effect (a packet never meets one's address with the other's MAC) */
	volatile uint32_t gw_live;
	struct serpens_gw_addr gw[2];
	uint64_t vx_rx, vx_arp, vx_not_ours, vx_bad_outer, vx_over_mtu, vx_unknown_tag;
	/* the ids of the last move markers received (vxlan.h), markers[(nmarkers - 1) % N] the
	 * newest: a move's source waits until its marker is among them (several moves from this
	 * node may be under way, from several gateways); marker_loops[k] is `loops` when
	 * markers[k] came: once `loops` passed it, every frame before the marker was dispatched
	 * (given to an instance or held for one) */
	uint32_t markers[SERPENS_ROUTER_MARKERS];
	uint64_t marker_loops[SERPENS_ROUTER_MARKERS];
	volatile uint64_t nmarkers;
	int32_t vx_last;             /* the SFC of the last VXLAN frame taken (tried first) */
	/* latency log (benchmarks): armed by setting log, log_cap, then log_on */
	volatile uint32_t log_on;
	struct serpens_lat_rec *log;
	uint64_t log_cap;
	volatile uint64_t log_n;
	/* 0: a record's rx_tsc is the router's arrival stamp; else the arrival time is the u64
	 * at this offset of the frame sent (a benchmark's source stamped it upstream, on another
	 * process of this host: one TSC), for latency across the gateway and the VXLAN hop */
	uint32_t log_stamp_off;
	/* sampled RX-to-TX latency (metrics): with lat_on, the first packet of every burst a
	 * port sends adds its latency to this histogram (one branch per burst when off). The
	 * control side sets the bounds (TSC cycles, ascending) before lat_on; the router thread
	 * alone writes the counts, which a reader takes as they are (cumulative, monotonic). */
	volatile uint32_t lat_on;
	uint32_t lat_nbounds;
	uint64_t lat_bounds[SERPENS_LAT_BUCKETS];
	uint64_t lat_counts[SERPENS_LAT_BUCKETS + 1]; /* [lat_nbounds]: above every bound */
	uint64_t lat_sum;         /* cycles */
	/* router thread */
	uint32_t next_port;       /* input port polled next */
	uint32_t npending;        /* sum of the instances' pending: no RX while > 0 */
	uint32_t nheld;           /* sum of the SFCs' held packets */
	/* a burst part no hold queue took yet (no RX while > 0); not 0 until all of it was
	 * placed (a mover reads it: Router.quiet()) */
	volatile uint32_t nstalled;
	uint64_t stalled_since;
	struct rte_mbuf *stalled[SERPENS_ROUTER_BURST];
	uint64_t next_watchdog;   /* TSC of the next watchdog pass */
	uint32_t seq;
	uint64_t rx, tx, dropped, tx_failed, sleeps;
	uint64_t busy_cycles;      /* time in loop iterations that did work (busy fraction) */
	volatile uint64_t loops;  /* iterations: two more = a control change is in effect */
	/* stage stamps (benchmarks; off: one branch per stage): with stamp_on, the TSC time
	 * between consecutive points of the loop is added to the stage that just ended */
	volatile uint32_t stamp_on;
	uint64_t stamp_last;         /* the last stamp (0: start over) */
	uint64_t stage_cycles[SERPENS_STAGES];
	/* One cache line per bucket (the router allocates itself line-aligned: router_alloc):
	 * a lookup touches one line, which classification prefetches. */
	struct serpens_flow_bucket {
		uint32_t hash[SERPENS_FLOW_WAYS]; /* 0: empty */
		uint16_t used[SERPENS_FLOW_WAYS]; /* coarse last-use time, for LRU replacement */
		uint8_t inst[SERPENS_FLOW_WAYS];
		uint8_t from[SERPENS_FLOW_WAYS];  /* moving from instance from - 1 (NO_MOVE: not) */
	} __attribute__((aligned(64))) flows[SERPENS_FLOW_BUCKETS];
};

_Static_assert(sizeof(struct serpens_flow_bucket) == 64, "a flow bucket is one cache line");
_Static_assert(SERPENS_ROUTER_MAX_INSTANCES <= 255, "flow buckets keep instances in a byte");

/* A zeroed router, aligned for its flow buckets; NULL: no memory. Freed with free(). */
struct serpens_router *serpens_router_alloc(void);

/* Run until r->stop; returns 0. */
int serpens_router_run(struct serpens_router *r);
/* Reap instance i (state DEAD) on the caller's thread: only while the router does not
 * run (serpens_router_run reaps by itself). */
void serpens_router_reap(struct serpens_router *r, int i);
/* The same as an lcore function (rte_eal_remote_launch): arg is the router. */
int serpens_router_lcore_main(void *arg);

#endif
