/* The router (see router.h). */
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <rte_byteorder.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf_dyn.h>
#include <rte_prefetch.h>

#include "lost_batch.h"
#include "pkt.h"
#include "router.h"

#define IDLE_POLLS 256          /* empty polls before the router starts sleeping */
#define SHARED_QUANTUM_US 50 /* busy this long, the loop yields (a process switch ~1.4 us) */
#define WATCHDOG_US 1000  /* how often batches are checked against their budget */

#define META(r, m) RTE_MBUF_DYNFIELD((m), (r)->meta_off, struct serpens_rx_meta *)
#define LABEL(r, m) (*RTE_MBUF_DYNFIELD((m), (r)->label_off, uint16_t *))
#define BURST SERPENS_ROUTER_BURST

struct serpens_router *serpens_router_alloc(void)
{
	struct serpens_router *r = aligned_alloc(64, sizeof(*r)); /* sizeof: a multiple of 64 */
	if (r)
		memset(r, 0, sizeof(*r));
	return r;
}

/* ---- stage stamps (router.h; benchmarks) --------------------------------------------------- */

/* The time since the last stamp was spent in `stage`. */
static inline void stage(struct serpens_router *r, enum serpens_stage st)
{
	if (likely(!r->stamp_on))
		return;
	uint64_t t = rte_rdtsc();
	if (r->stamp_last)
		r->stage_cycles[st] += t - r->stamp_last;
	r->stamp_last = t;
}

/* ---- classification ------------------------------------------------------------------------ */

static void flush(struct serpens_router *r, struct serpens_router_port *p);

/* The match tables in effect, read once per burst (a rules change switches them whole). */
static struct serpens_match_tables match_tables(const struct serpens_router *r)
{
	const uint32_t live = serpens_rules_live(&r->rules_live);
	return (struct serpens_match_tables){r->rules[live], r->nrules[live], r->default_sfc,
					     r->tag_sfc};
}

/* The SFC of a packet received on ports[port] (-1: none); sets its flow hash. */
static int classify(const struct serpens_match_tables *t, uint32_t port, struct rte_mbuf *m,
		    uint32_t *hash)
{
	return serpens_classify(t, port, rte_pktmbuf_mtod(m, const uint8_t *), m->data_len, hash);
}

static int vxlan_is(const struct serpens_router_sfc *s, uint32_t tag, uint32_t vni)
{
	return s->used && s->vx_on && s->vx_tag == tag && s->vx_vni == vni;
}

/* The SFC whose VXLAN tag and VNI these are (-1: none). The last one found is tried first:
 * frames of one SFC come in runs, and the scan would touch every SFC's line per frame. */
static int sfc_of_vxlan(struct serpens_router *r, uint32_t tag, uint32_t vni)
{
	if (vxlan_is(&r->sfcs[r->vx_last], tag, vni))
		return r->vx_last;
	for (int sfc = 0; sfc < SERPENS_ROUTER_MAX_SFCS; sfc++)
		if (vxlan_is(&r->sfcs[sfc], tag, vni))
			return r->vx_last = sfc;
	return -1;
}

/* The SFC of a frame from the underlay (-1: none: answered, or counted and freed); the frame
 * is the inner one after, and its flow hash set. */
static int from_underlay(struct serpens_router *r, struct rte_mbuf *m, uint32_t *hash)
{
	uint32_t tag = 0, vni = 0;
	int sfc;
	switch (serpens_underlay_rx(m, &r->underlay, &tag, &vni)) {
	case SERPENS_UNDERLAY_VXLAN:
		sfc = sfc_of_vxlan(r, tag, vni);
		if (sfc >= 0) {
			r->vx_rx++;
			*hash = serpens_frame_flow_hash(rte_pktmbuf_mtod(m, const uint8_t *),
							m->data_len);
			return sfc;
		}
		r->vx_unknown_tag++;
		break;
	case SERPENS_UNDERLAY_ARP: {
		struct serpens_router_port *p = &r->ports[r->underlay_port];
		r->vx_arp++;
		if (tag) { /* a move's marker: every frame the gateway sent before is here */
			/* the loop first: a reader that sees the id sees its loop (the slot is the
			 * oldest one's, which a reader may be looking at) */
			r->marker_loops[r->nmarkers % SERPENS_ROUTER_MARKERS] = r->loops;
			__atomic_store_n(&r->markers[r->nmarkers % SERPENS_ROUTER_MARKERS], tag,
					 __ATOMIC_RELEASE);
			__atomic_store_n(&r->nmarkers, r->nmarkers + 1, __ATOMIC_RELEASE);
		}
		p->out[p->nout++] = m;
		if (p->nout == SERPENS_BURST)
			flush(r, p);
		return -1;
	}
	case SERPENS_UNDERLAY_BAD_OUTER:
		r->vx_bad_outer++;
		break;
	case SERPENS_UNDERLAY_OVER_MTU:
		r->vx_over_mtu++;
		break;
	default:
		r->vx_not_ours++;
		break;
	}
	rte_pktmbuf_free(m);
	return -1;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* Killed (watchdog) or crashed: it takes nothing more while it waits to be reaped. */
static int doomed(const struct serpens_router_instance *in)
{
	return in->watchdog_fired || in->crash_seen_tsc;
}

static int usable(const struct serpens_router_instance *in, int sfc)
{
	uint32_t st = in->state;
	return in->sfc == sfc && !doomed(in) &&
	       (st == SERPENS_INST_ACTIVE || (st == SERPENS_INST_DRAINING && !in->drained));
}

/* The SFC's active instance with the fewest packets queued, counting `assigned` (per
 * instance: given to it in the burst being routed, not enqueued yet; NULL: none), or a
 * burst's new flows would all go to one instance. */
static int least_loaded(struct serpens_router *r, int sfc, const uint32_t *assigned)
{
	int best = -1;
	uint32_t load = UINT32_MAX;
	for (int i = 0, end = (int)r->ninst; i < end; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		if (in->state != SERPENS_INST_ACTIVE || in->sfc != sfc || doomed(in))
			continue;
		uint32_t q = rte_ring_count(in->rx) + in->npending + (assigned ? assigned[i] : 0);
		if (q < load) {
			load = q;
			best = i;
		}
	}
	return best;
}

/* The instance for a flow of an SFC: its pin if that instance still takes it, else a new pin
 * (-1: the SFC has no active instance). */
static uint32_t flow_key(int sfc, uint32_t flow)
{
	return (flow + (uint32_t)sfc * 0x9E3779B9u) | 1;
}

static struct serpens_flow_bucket *flow_bucket(struct serpens_router *r, uint32_t key)
{
	return &r->flows[(key >> 1) % SERPENS_FLOW_BUCKETS];
}

/* The bucket a packet of `sfc` with this flow hash will look up: dispatch() reads it a
 * burst later, after the miss was served in the shadow of the other packets' work. */
static inline void prefetch_bucket(struct serpens_router *r, int sfc, uint32_t flow)
{
	rte_prefetch0(flow_bucket(r, flow_key(sfc, flow)));
}

static int dispatch(struct serpens_router *r, int sfc, uint32_t flow, uint16_t now,
		    const uint32_t *assigned)
{
	uint32_t key = flow_key(sfc, flow);
	struct serpens_flow_bucket *b = flow_bucket(r, key);
	struct serpens_router_sfc *s = &r->sfcs[sfc];
	int way = -1, lru = -1;

	for (int w = 0; w < SERPENS_FLOW_WAYS; w++)
		way = b->hash[w] == key ? w : way; /* no branch per way: keys are unique per bucket */
	if (way < 0) { /* a new flow: a free way, else the least recently used one */
		for (int w = 0; w < SERPENS_FLOW_WAYS; w++)
			if (lru < 0 || (b->hash[lru] != 0 &&
					(b->hash[w] == 0 ||
					 (uint16_t)(now - b->used[w]) > (uint16_t)(now - b->used[lru]))))
				lru = w;
	}
	if (way >= 0 && b->from[way] != SERPENS_NO_MOVE) { /* moved by a rebalance */
		const struct serpens_router_instance *old = &r->inst[b->from[way] - 1];
		if (old->state != SERPENS_INST_EMPTY && old->barrier_on &&
		    old->returned + old->pending_dropped < old->barrier)
			return -2; /* packets of it still with the old instance: wait */
		b->from[way] = SERPENS_NO_MOVE;
	}
	if (way >= 0 && usable(&r->inst[b->inst[way]], sfc)) {
		b->used[way] = now;
		return b->inst[way];
	}
	int inst = least_loaded(r, sfc, assigned);
	if (inst < 0)
		return -1;
	if (way < 0) {
		way = lru;
		s->new_flows++;
	} else {
		s->moved_flows++;
	}
	b->hash[way] = key;
	b->inst[way] = (uint8_t)inst;
	b->from[way] = SERPENS_NO_MOVE;
	b->used[way] = now;
	return inst;
}

/* Re-pin a share of an SFC's flows to instance `to` behind barriers (see router.h). */
static void start_rebalance(struct serpens_router *r, int sfc, int to)
{
	struct serpens_router_sfc *s = &r->sfcs[sfc];
	uint32_t n = 0;
	for (int i = 0, end = (int)r->ninst; i < end; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		if (in->state == SERPENS_INST_ACTIVE && in->sfc == sfc) {
			n++;
			if (i != to) {
				in->barrier = in->assigned;
				in->barrier_on = 1;
			}
		}
	}
	if (n < 2 || r->inst[to].state != SERPENS_INST_ACTIVE || r->inst[to].sfc != sfc)
		return;
	for (uint32_t bi = 0; bi < SERPENS_FLOW_BUCKETS; bi++) {
		struct serpens_flow_bucket *b = &r->flows[bi];
		for (int w = 0; w < SERPENS_FLOW_WAYS; w++) {
			uint16_t i = b->inst[w];
			if (!b->hash[w] || i == to || r->inst[i].sfc != sfc ||
			    r->inst[i].state != SERPENS_INST_ACTIVE || (b->hash[w] >> 13) % n)
				continue;
			b->from[w] = (uint8_t)(i + 1);
			b->inst[w] = (uint8_t)to;
			s->rebalanced_flows++;
		}
	}
	s->moving = 1;
}

/* A rebalance is over once every old instance returned what it had before its barrier. */
static int rebalance_done(struct serpens_router *r, int sfc)
{
	for (int i = 0, end = (int)r->ninst; i < end; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		if (in->sfc == sfc && in->barrier_on && in->state != SERPENS_INST_EMPTY &&
		    in->returned + in->pending_dropped < in->barrier)
			return 0;
	}
	for (int i = 0, end = (int)r->ninst; i < end; i++)
		if (r->inst[i].sfc == sfc)
			r->inst[i].barrier_on = 0;
	r->sfcs[sfc].moving = 0;
	return 1;
}

/* Rebalances asked for; one per SFC at a time (a later one waits). Returns 1 if some wait. */
static int take_requests(struct serpens_router *r)
{
	int waiting = 0;
	for (int sfc = 0; sfc < SERPENS_ROUTER_MAX_SFCS; sfc++) {
		struct serpens_router_sfc *s = &r->sfcs[sfc];
		if (!__atomic_load_n(&s->rebalance_to, __ATOMIC_ACQUIRE))
			continue;
		if (s->moving && !rebalance_done(r, sfc)) {
			waiting = 1;
			continue;
		}
		int32_t to = __atomic_exchange_n(&s->rebalance_to, 0, __ATOMIC_ACQ_REL);
		if (to > 0)
			start_rebalance(r, sfc, to - 1);
	}
	return waiting;
}

/* Packets wait for instance `in`: wake it if it sleeps (once per sleep: pool_ctl.h). */
static void wake(struct serpens_router_instance *in)
{
	in->waiting = 0;
	in->wakeups += serpens_pool_wake(in->ctl, in->efd);
}

/* Enqueue for instance i; what its full ring does not take waits in `pending`, and the router
 * receives nothing more until it went in: the port's queue absorbs the burst (back-pressure),
 * and nothing is reordered or dropped here. Callers give at most BURST packets to an
 * instance whose pending has room for them. */
static void enqueue(struct serpens_router *r, int i, struct rte_mbuf **pkts, uint32_t n, uint64_t now)
{
	struct serpens_router_instance *in = &r->inst[i];
	uint32_t q = in->npending ? 0 : rte_ring_enqueue_burst(in->rx, (void **)pkts, n, NULL);
	if (in->returned == in->enqueued)
		in->last_return_tsc = now; /* it held nothing: the watchdog's clock starts now */
	in->enqueued += q;
	uint32_t given = q; /* its ring's and pending's: assigned, one store below */
	if (q && in->waiting == 0)
		in->oldest_tsc = now;
	in->waiting += q;
	if (q < n && in->shedding) { /* stuck before: no back-pressure for it now */
		serpens_obs_dropping(r->sfcs[in->sfc].obs, pkts + q, n - q, SERPENS_WHY_STUCK);
		rte_pktmbuf_free_bulk(pkts + q, n - q);
		in->dropped += n - q;
		r->sfcs[in->sfc].drop_stuck += n - q;
		r->dropped += n - q;
		wake(in);
	} else if (q < n) {
		/* pending holds two bursts; callers leave room for one (room_in()), but what a
		 * reaped instance returns into a chained SFC may find less: drop the excess */
		uint32_t room = 2 * BURST - in->npending, keep = n - q < room ? n - q : room;
		memcpy(in->pending + in->npending, pkts + q, sizeof(pkts[0]) * keep);
		if (keep < n - q) {
			serpens_obs_dropping(r->sfcs[in->sfc].obs, pkts + q + keep, n - q - keep,
					     SERPENS_WHY_STUCK);
			rte_pktmbuf_free_bulk(pkts + q + keep, n - q - keep);
			in->dropped += n - q - keep;
			r->sfcs[in->sfc].drop_stuck += n - q - keep;
			r->dropped += n - q - keep;
		}
		if (!in->npending && keep)
			in->stall_since = now;
		in->npending += keep;
		r->npending += keep;
		given += keep;
		wake(in);
	} else {
		in->shedding = 0; /* its ring had room for everything: it takes packets again */
		if (in->waiting >= r->wake_batch)
			wake(in);
	}
	__atomic_store_n(&in->assigned, in->assigned + given, __ATOMIC_RELEASE);
}

/* A shed's packets are accounted for (pending_dropped) once every packet enqueued before
 * them came back: counted earlier, a mover or a barrier would take them for packets older
 * than they are, still in the ring or the NF's batch. */
static inline void credit_shed(struct serpens_router_instance *in)
{
	if (in->shed_owed && in->returned >= in->shed_mark) {
		__atomic_store_n(&in->pending_dropped, in->pending_dropped + in->shed_owed,
				 __ATOMIC_RELEASE);
		in->shed_owed = 0;
	}
}

/* Drop what waits for instance `in` beyond its ring (it took nothing for stall_cycles). */
static void shed(struct serpens_router *r, struct serpens_router_instance *in)
{
	serpens_obs_dropping(r->sfcs[in->sfc].obs, in->pending, in->npending, SERPENS_WHY_STUCK);
	rte_pktmbuf_free_bulk(in->pending, in->npending);
	in->dropped += in->npending;
	r->sfcs[in->sfc].drop_stuck += in->npending;
	r->dropped += in->npending;
	r->npending -= in->npending;
	in->shed_owed += in->npending; /* (the newest given: credited behind the ring, below) */
	in->shed_mark = in->enqueued;
	in->npending = 0;
	in->stall_since = 0;
	in->shedding = 1;
}

static uint32_t flush_pending(struct serpens_router *r, uint64_t now)
{
	uint32_t moved = 0;
	for (int i = 0, end = (int)r->ninst; i < end && r->npending; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		uint32_t n = in->npending;
		if (!n)
			continue;
		uint32_t q = rte_ring_enqueue_burst(in->rx, (void **)in->pending, n, NULL);
		if (q) {
			if (in->waiting == 0)
				in->oldest_tsc = now;
			in->waiting += q;
			in->enqueued += q;
			memmove(in->pending, in->pending + q, sizeof(in->pending[0]) * (n - q));
			in->npending -= q;
			r->npending -= q;
			moved += q;
			in->stall_since = in->npending ? now : 0; /* it moves: the stall starts over */
		}
		if (in->npending && now - in->stall_since > r->stall_cycles)
			shed(r, in);
		else if (in->npending)
			wake(in);
	}
	return moved;
}

/* Wake the SFC's instance manager (its notify_fd; -1 after a failed write: none). */
static void notify(struct serpens_router_sfc *s)
{
	uint64_t one = 1;
	if (s->notify_fd >= 0 && write(s->notify_fd, &one, sizeof(one)) < 0)
		s->notify_fd = -1;
}

/* Give packets of one SFC to its instances; what finds no instance goes to the SFC's hold
 * queue (in order). Returns how many were taken: the rest (hold queue full) stay with the
 * caller. */
static uint32_t route(struct serpens_router *r, int sfc, struct rte_mbuf **pkts, uint32_t n,
		      uint64_t now, int from_hold)
{
	struct rte_mbuf *per[SERPENS_ROUTER_MAX_INSTANCES][BURST];
	uint32_t count[SERPENS_ROUTER_MAX_INSTANCES] = {0};
	uint64_t used = 0; /* instances with packets in this call (bitmask) */
	struct serpens_router_sfc *s = &r->sfcs[sfc];
	uint16_t coarse = (uint16_t)(now >> 24);
	uint32_t k = 0;

	if (s->drop_all) { /* failed: nothing to wait for */
		serpens_obs_dropping(s->obs, pkts, n, SERPENS_WHY_FAILED);
		rte_pktmbuf_free_bulk(pkts, n);
		s->rx += n;
		s->drop_failed += n;
		r->dropped += n;
		return n;
	}
	/* (the flow buckets of the burst were prefetched where the packets were classified:
	 * prefetch_bucket(); the table is far larger than the caches) */
	for (; k < n; k++) {
		int i = s->nheld && !from_hold ? -1 :
			dispatch(r, sfc, META(r, pkts[k])->flow, coarse, count);
		if (i < 0) {
			if (s->nheld == SERPENS_ROUTER_HOLD && s->hold_shedding) {
				serpens_obs_dropping(s->obs, pkts + k, 1, SERPENS_WHY_HOLD);
				rte_pktmbuf_free(pkts[k]);
				s->drop_hold++;
				r->dropped++;
				continue;
			}
			if (s->nheld == SERPENS_ROUTER_HOLD)
				break;
			s->held[s->nheld++] = pkts[k];
			r->nheld++;
			continue;
		}
		per[i][count[i]++] = pkts[k];
		used |= 1ull << i;
	}
	stage(r, SERPENS_STAGE_DISPATCH);
	while (used) {
		int i = __builtin_ctzll(used);
		used &= used - 1;
		enqueue(r, i, per[i], count[i], now);
	}
	stage(r, SERPENS_STAGE_ENQUEUE);
	s->rx += k;
	if (s->nheld && !s->wants_instance) {
		__atomic_store_n(&s->wants_instance, 1, __ATOMIC_RELEASE);
		notify(s); /* once per episode: the instance manager sleeps on it, it does not poll */
	}
	return k;
}

/* Held packets of SFCs that have an instance now go first, 32 at a time. */
static uint32_t release_held(struct serpens_router *r, uint64_t now)
{
	uint32_t moved = 0;
	for (int sfc = 0; sfc < SERPENS_ROUTER_MAX_SFCS && r->nheld && !r->npending; sfc++) {
		struct serpens_router_sfc *s = &r->sfcs[sfc];
		if (!s->nheld || least_loaded(r, sfc, NULL) < 0 || (s->moving && !rebalance_done(r, sfc)))
			continue;
		uint32_t n = s->nheld < SERPENS_BURST ? s->nheld : SERPENS_BURST;
		struct rte_mbuf *pkts[SERPENS_BURST];
		memcpy(pkts, s->held, sizeof(pkts[0]) * n);
		/* before they leave nheld (its release store orders this one): a mover that sees
		 * them gone sees this (Router.quiet) */
		__atomic_store_n(&s->release_loop, r->loops, __ATOMIC_RELAXED);
		memmove(s->held, s->held + n, sizeof(s->held[0]) * (s->nheld - n));
		__atomic_store_n(&s->nheld, s->nheld - n, __ATOMIC_RELEASE);
		r->nheld -= n;
		s->rx -= n; /* counted when first routed */
		s->hold_shedding = 0;
		uint32_t k = route(r, sfc, pkts, n, now, 1); /* takes all: an instance is active */
		moved += k;
	}
	return moved;
}

/* Held packets older than hold_cycles are dropped: no SFC waits for an instance forever. */
static void expire_held(struct serpens_router *r, uint64_t now)
{
	for (int sfc = 0; sfc < SERPENS_ROUTER_MAX_SFCS && r->nheld; sfc++) {
		struct serpens_router_sfc *s = &r->sfcs[sfc];
		uint32_t n = 0;
		while (n < s->nheld && now - META(r, s->held[n])->rx_tsc > r->hold_cycles &&
		       (int64_t)(now - META(r, s->held[n])->rx_tsc) > 0)
			n++;
		if (!n)
			continue;
		serpens_obs_dropping(s->obs, s->held, n, SERPENS_WHY_HOLD);
		rte_pktmbuf_free_bulk(s->held, n);
		memmove(s->held, s->held + n, sizeof(s->held[0]) * (s->nheld - n));
		s->nheld -= n;
		r->nheld -= n;
		s->drop_hold += n;
		r->dropped += n;
		s->hold_shedding = 0;
	}
}

/* Route a classified burst (each packet's label holds its SFC), runs of one SFC together so
 * order holds within each SFC; what a full hold queue did not take stalls, and RX stops until
 * it went in. Returns the packets taken. */
static uint32_t place(struct serpens_router *r, struct rte_mbuf **pkts, uint32_t n, uint64_t now)
{
	uint32_t start = 0;
	while (start < n) {
		int sfc = LABEL(r, pkts[start]);
		uint32_t end = start + 1;
		while (end < n && LABEL(r, pkts[end]) == sfc)
			end++;
		uint32_t took = route(r, sfc, pkts + start, end - start, now, 0);
		if (took < end - start) {
			if (!r->stalled_since)
				r->stalled_since = now;
			r->nstalled = n - (start + took);
			memcpy(r->stalled, pkts + start + took, sizeof(pkts[0]) * r->nstalled);
			return start + took;
		}
		start = end;
	}
	return n;
}

static uint32_t receive(struct serpens_router *r, uint64_t now)
{
	struct rte_mbuf *pkts[BURST];

	if (r->nstalled) {
		uint32_t n = r->nstalled;
		memcpy(pkts, r->stalled, sizeof(pkts[0]) * n);
		if (now - r->stalled_since > r->stall_cycles) {
			/* a hold queue stayed full too long: its SFC sheds, the node receives again */
			for (uint32_t k = 0; k < n; k++)
				r->sfcs[LABEL(r, pkts[k])].hold_shedding = 1;
		}
		/* nstalled stays until all went in (place() sets what is left if some did not) */
		uint32_t took = place(r, pkts, n, now);
		if (took == n) {
			__atomic_store_n(&r->nstalled, 0, __ATOMIC_RELEASE);
			r->stalled_since = 0;
		}
		return took;
	}
	for (uint32_t tries = 0; tries < r->nports; tries++) {
		uint32_t port = r->next_port;
		r->next_port = port + 1 == r->nports ? 0 : port + 1;
		struct serpens_router_port *p = &r->ports[port];
		if (!p->input)
			continue;
		uint32_t quota = serpens_pace_quota(&p->pace, now, BURST);
		if (!quota)
			continue;
		stage(r, SERPENS_STAGE_LOOP);
		uint16_t n = rte_eth_rx_burst(p->id, 0, pkts, (uint16_t)quota);
		stage(r, SERPENS_STAGE_RX);
		if (!n) {
			serpens_pace_received(&p->pace, 0);
			continue;
		}
		p->rx += n;
		r->rx += n;
		/* classify, stamp, and compact out what no SFC takes */
		const struct serpens_match_tables tables = match_tables(r);
		uint32_t keep = 0;
		for (uint32_t k = 0; k < n; k++) {
			struct rte_mbuf *m = pkts[k];
			struct serpens_rx_meta *meta = META(r, m);
			uint32_t hash;
			int sfc;
			if (r->underlay.ip && port == r->underlay_port) {
				sfc = from_underlay(r, m, &hash);
				if (sfc < 0)
					continue; /* counted (or answered) there */
			} else {
				sfc = classify(&tables, port, m, &hash);
			}
			if (sfc < 0 || !r->sfcs[sfc].used) {
				rte_pktmbuf_free(m);
				p->unmatched++;
				continue;
			}
			meta->rx_tsc = serpens_pace_arrival(&p->pace, k, now);
			meta->flow = hash;
			meta->seq = ++r->seq;
			LABEL(r, m) = (uint16_t)sfc; /* the SFC, until an NF sets the verdict */
			prefetch_bucket(r, sfc, hash);
			pkts[keep++] = m;
		}
		serpens_pace_received(&p->pace, n);
		stage(r, SERPENS_STAGE_CLASSIFY);
		return place(r, pkts, keep, now) + (n - keep);
	}
	return 0;
}

/* ---- transmit ------------------------------------------------------------------------------ */

static void log_sent(struct serpens_router *r, struct rte_mbuf **pkts, uint32_t n, uint64_t now)
{
	uint64_t at = r->log_n;
	for (uint32_t k = 0; k < n && at < r->log_cap; k++, at++) {
		const struct serpens_rx_meta *meta = META(r, pkts[k]);
		struct serpens_lat_rec *rec = &r->log[at];
		uint32_t off = r->log_stamp_off;
		if (off && rte_pktmbuf_data_len(pkts[k]) >= off + sizeof(uint64_t))
			memcpy(&rec->rx_tsc, rte_pktmbuf_mtod(pkts[k], const uint8_t *) + off,
			       sizeof(uint64_t));
		else
			rec->rx_tsc = meta->rx_tsc;
		rec->tx_tsc = now;
		rec->flow = meta->flow;
		rec->seq = meta->seq;
	}
	__atomic_store_n(&r->log_n, at, __ATOMIC_RELEASE);
}

/* One latency sample: the first packet of a burst (bounded cost per burst, none per packet). */
static void lat_sample(struct serpens_router *r, const struct rte_mbuf *m, uint64_t now)
{
	int64_t d = (int64_t)(now - META(r, m)->rx_tsc);
	uint64_t c = d > 0 ? (uint64_t)d : 0;
	uint32_t b = 0;
	while (b < r->lat_nbounds && c > r->lat_bounds[b])
		b++;
	r->lat_counts[b]++;
	r->lat_sum += c;
}

static void flush(struct serpens_router *r, struct serpens_router_port *p)
{
	uint16_t sent = 0;
	uint64_t now = rte_rdtsc();
	stage(r, SERPENS_STAGE_VERDICT); /* what led here: forwarding, or the loop's flush_due */
	if (r->log_on)
		log_sent(r, p->out, p->nout, now);
	if (r->lat_on)
		lat_sample(r, p->out[0], now);
	for (int tries = 0; sent < p->nout && tries < 64; tries++)
		sent += rte_eth_tx_burst(p->id, 0, p->out + sent, (uint16_t)(p->nout - sent));
	if (sent < p->nout) {
		rte_pktmbuf_free_bulk(p->out + sent, p->nout - sent);
		p->tx_failed += p->nout - sent;
		r->tx_failed += p->nout - sent;
		if (r->log_on)
			__atomic_store_n(&r->log_n, r->log_n - (p->nout - sent), __ATOMIC_RELEASE);
	}
	p->tx += sent;
	r->tx += sent;
	p->nout = 0;
	p->last_flush = now;
	stage(r, SERPENS_STAGE_TX);
}

/* Room for a burst into SFC `sfc`: no instance of it has pending packets beyond one burst. */
static int room_in(const struct serpens_router *r, int sfc)
{
	for (int i = 0, end = (int)r->ninst; i < end; i++)
		if (r->inst[i].state != SERPENS_INST_EMPTY && r->inst[i].sfc == sfc &&
		    r->inst[i].npending > BURST)
			return 0;
	return r->sfcs[sfc].nheld + BURST <= SERPENS_ROUTER_HOLD;
}

/* Hand n packets an instance returned on: OUT to the SFC's next SFC or its output port, the
 * rest freed. Returns how many went on. */
static uint32_t forward(struct serpens_router *r, struct serpens_router_sfc *s,
			struct rte_mbuf **pkts, uint32_t n, uint64_t now)
{
	struct rte_mbuf *drop[BURST], *fwd[BURST];
	uint32_t ndrop = 0, nfwd = 0;
	uint64_t bytes = 0;
	/* the gateway's address and MAC, one pair for the whole burst (never one's IP with the
	 * other's MAC across a switch) */
	const struct serpens_gw_addr *gw = &r->gw[serpens_rules_live(&r->gw_live)];
	struct serpens_router_port *p = &r->ports[s->out_port];

	for (uint32_t k = 0; k < n; k++) {
		struct rte_mbuf *m = pkts[k];
		bytes += m->pkt_len; /* before an encapsulation below */
		if (LABEL(r, m) != SERPENS_LABEL_OUT) {
			drop[ndrop++] = m;
		} else if (s->next >= 0) {
			LABEL(r, m) = (uint16_t)s->next;
			prefetch_bucket(r, s->next, META(r, m)->flow);
			fwd[nfwd++] = m;
		} else if (s->to_gateway &&
			   serpens_vxlan_encap(m, &r->underlay, gw->ip, gw->mac, s->vx_tag,
					       s->vx_vni, META(r, m)->flow) != SERPENS_ENCAP_OK) {
			serpens_obs_dropping(s->obs, &m, 1, SERPENS_WHY_MTU);
			rte_pktmbuf_free(m);
			s->drop_mtu++;
			r->dropped++;
		} else {
			p->out[p->nout++] = m;
			if (p->nout == SERPENS_BURST)
				flush(r, p);
		}
	}
	stage(r, SERPENS_STAGE_VERDICT);
	rte_pktmbuf_free_bulk(drop, ndrop);
	stage(r, SERPENS_STAGE_FREE);
	s->dropped += ndrop;
	s->out += n - ndrop;
	s->bytes += bytes;
	r->dropped += ndrop;
	if (nfwd) {
		/* room_in() left room for a burst in the next SFC's hold queue; what a reaped
		 * instance returns may find none */
		uint32_t took = route(r, s->next, fwd, nfwd, now, 0);
		serpens_obs_dropping(r->sfcs[s->next].obs, fwd + took, nfwd - took, SERPENS_WHY_HOLD);
		rte_pktmbuf_free_bulk(fwd + took, nfwd - took);
		r->sfcs[s->next].drop_hold += nfwd - took;
		r->dropped += nfwd - took;
	}
	return n - ndrop;
}

static void free_counted(struct serpens_router *r, struct serpens_router_instance *in,
			 struct rte_mbuf **pkts, uint32_t n)
{
	serpens_obs_dropping(r->sfcs[in->sfc].obs, pkts, n, SERPENS_WHY_DIED);
	rte_pktmbuf_free_bulk(pkts, n);
	in->dropped += n;
	r->sfcs[in->sfc].drop_died += n;
	r->dropped += n;
}

/* Let go of a dead or stopped instance (router.h "Containment"). */
void serpens_router_reap(struct serpens_router *r, int i)
{
	struct serpens_router_instance *in = &r->inst[i];
	struct rte_mbuf *pkts[SERPENS_BURST];
	uint64_t now = rte_rdtsc();
	uint32_t n;

	if (in->state != SERPENS_INST_DEAD)
		return;
	/* its last batch first: that needs the RX ring's consumer count as the process left it */
	uint32_t lost = serpens_free_lost_batch(in->ctl, in->rx, in->tx);
	in->dropped += lost;
	r->sfcs[in->sfc].drop_died += lost;
	r->dropped += lost;
	/* What it finished goes on (chained SFCs too: nothing waits on room here). */
	while ((n = rte_ring_sc_dequeue_burst(in->tx, (void **)pkts, SERPENS_BURST, NULL)) > 0) {
		forward(r, &r->sfcs[in->sfc], pkts, n, now);
		in->returned += n;
	}
	free_counted(r, in, in->pending, in->npending);
	r->npending -= in->npending;
	__atomic_store_n(&in->pending_dropped, in->pending_dropped + in->npending + in->shed_owed,
			 __ATOMIC_RELEASE);
	in->shed_owed = 0;
	in->npending = 0;
	while ((n = rte_ring_sc_dequeue_burst(in->rx, (void **)pkts, SERPENS_BURST, NULL)) > 0)
		free_counted(r, in, pkts, n);
	/* Everything given to it is accounted for: rebalances waiting on it go on. */
	in->returned = in->enqueued;
	in->barrier_on = 0;
	in->waiting = 0;
	in->stall_since = 0;
	__atomic_store_n(&in->state, SERPENS_INST_REAPED, __ATOMIC_RELEASE);
}

/* CPU time (ns) a process has run, from /proc/<pid>/schedstat; 0 if unknown. */
static uint64_t process_cpu_ns(int pid)
{
	char path[48], buf[64];
	snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strtoull(buf, NULL, 10);
}

static void kill_stuck(struct serpens_router_instance *in)
{
	if (syscall(SYS_pidfd_send_signal, in->pidfd, SIGKILL, NULL, 0) == 0) {
		in->watchdog_tsc = rte_rdtsc();
		__atomic_store_n(&in->watchdog_fired, 1, __ATOMIC_RELEASE);
	}
}

/* Reap instances whose process recorded a fatal signal (it runs no more of its loop; its
 * exit can take the kernel 10-300 ms for a DPDK process, so we do not wait for it), and kill
 * those stuck inside one batch longer than their budget (router.h). */
static void watchdog(struct serpens_router *r, uint64_t now)
{
	for (int i = 0, end = (int)r->ninst; i < end; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		uint32_t st = in->state;
		if (st != SERPENS_INST_ACTIVE && st != SERPENS_INST_DRAINING)
			continue;
		if (__atomic_load_n(&in->ctl->crash.signo, __ATOMIC_ACQUIRE)) {
			/* The record is the NF's to forge, and a handler may return: make sure the
			 * process runs no more (SIGKILL), and reap on the next pass, not this one. */
			if (!in->crash_seen_tsc) {
				in->crash_seen_tsc = now;
				if (in->pidfd >= 0)
					syscall(SYS_pidfd_send_signal, in->pidfd, SIGKILL, NULL, 0);
			} else {
				__atomic_store_n(&in->state, SERPENS_INST_DEAD, __ATOMIC_RELEASE);
				serpens_router_reap(r, i);
				notify(&r->sfcs[in->sfc]); /* its instance manager buries it */
			}
			continue;
		}
		if (!in->budget_cycles || in->pidfd < 0 || in->watchdog_fired)
			continue;
		/* Suspect: inside one batch past its budget, or (the backstop) holding packets and
		 * returning none for 10 budgets. Killed only if it stays suspect while burning a
		 * budget of CPU time: an instance (or router) the host or other processes kept
		 * off its CPU is late, not stuck, and the next pass clears it. */
		uint64_t began = __atomic_load_n(&in->ctl->batch_tsc, __ATOMIC_RELAXED);
		int long_batch = began && now > began && now - began > in->budget_cycles;
		int silent = in->returned != in->enqueued &&
			     now - in->last_return_tsc > 10 * in->budget_cycles;
		if (!long_batch && !silent) {
			in->suspect_cpu_ns = 0;
			continue;
		}
		uint64_t cpu = process_cpu_ns(in->pid); /* 0: gone, or unknown */
		if (!in->suspect_cpu_ns || (long_batch && in->suspect_batch != began)) {
			in->suspect_batch = began;
			in->suspect_cpu_ns = cpu;
		} else if (cpu > in->suspect_cpu_ns && cpu - in->suspect_cpu_ns >= in->budget_ns) {
			kill_stuck(in);
		}
	}
}

static uint32_t drain(struct serpens_router *r, uint64_t now)
{
	struct rte_mbuf *pkts[BURST];
	uint32_t total = 0;

	for (int i = 0, end = (int)r->ninst; i < end; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		uint32_t st = in->state;
		if (st == SERPENS_INST_EMPTY || st == SERPENS_INST_REAPED)
			continue;
		if (st == SERPENS_INST_DEAD) {
			serpens_router_reap(r, i);
			total++;
			continue;
		}
		struct serpens_router_sfc *s = &r->sfcs[in->sfc];
		if (in->waiting && now - in->oldest_tsc > r->wake_cycles)
			wake(in);
		/* A chained SFC's output waits in its ring while the next SFC has no room: the
		 * chain's tail always drains, so the chain always moves. */
		if (s->next >= 0 && !room_in(r, s->next)) {
			in->last_return_tsc = now; /* held up by us, not stuck */
			continue;
		}
		stage(r, SERPENS_STAGE_LOOP);
		uint32_t n = rte_ring_dequeue_burst(in->tx, (void **)pkts, BURST, NULL);
		/* The mbufs come back from the instance's core: fetch both header lines (length,
		 * verdict and metadata: forward() reads them) for the whole burst before it touches
		 * the first, for writing: once freed here, the port's next RX rewrites them (the
		 * mempool cache hands them out again at once), and it should find them ours. */
		for (uint32_t k = 0; k < n; k++) {
			rte_prefetch0_write(pkts[k]);
			rte_prefetch0_write((char *)pkts[k] + RTE_CACHE_LINE_SIZE);
		}
		stage(r, SERPENS_STAGE_DEQUEUE);
		if (n) {
			in->last_return_tsc = now;
			forward(r, s, pkts, n, now);
			in->returned += n;
			total += n;
			credit_shed(in);
		}
		/* A draining instance is done once every packet given to it came back (the router
		 * alone counts both, so this is exact: nothing queued, nothing in flight). */
		if (st == SERPENS_INST_DRAINING && !in->drained && in->returned == in->enqueued &&
		    in->npending == 0)
			__atomic_store_n(&in->drained, 1, __ATOMIC_RELEASE);
	}
	return total;
}

static void flush_due(struct serpens_router *r, uint64_t now, int idle)
{
	for (uint32_t i = 0; i < r->nports; i++) {
		struct serpens_router_port *p = &r->ports[i];
		if (p->nout && (idle || now - p->last_flush > r->drain_cycles)) {
			stage(r, SERPENS_STAGE_LOOP);
			flush(r, p);
		}
	}
}

int serpens_router_run(struct serpens_router *r)
{
	uint32_t idle = 0, sleep_us = SERPENS_IDLE_MIN_US, worked = 0;
	uint64_t prev = rte_rdtsc();
	uint64_t busy_since = 0, quantum = rte_get_tsc_hz() / 1000000 * SHARED_QUANTUM_US;

	for (uint32_t i = 0; i < r->nports; i++)
		r->ports[i].last_flush = rte_rdtsc();
	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		uint64_t now = rte_rdtsc();
		uint32_t work = 0;
		stage(r, SERPENS_STAGE_LOOP);
		if (worked) /* the previous iteration did work: its time was busy */
			r->busy_cycles += now - prev;
		prev = now;
		__atomic_store_n(&r->loops, r->loops + 1, __ATOMIC_RELEASE);
		if (__atomic_load_n(&r->requests, __ATOMIC_ACQUIRE)) {
			__atomic_store_n(&r->requests, 0, __ATOMIC_SEQ_CST);
			if (take_requests(r))
				r->requests = 1;
		}
		if (now >= r->next_watchdog) {
			r->next_watchdog = now + rte_get_tsc_hz() / 1000000 * WATCHDOG_US;
			watchdog(r, now);
			if (r->nheld)
				expire_held(r, now);
		}
		if (r->npending)
			work += flush_pending(r, now);
		if (r->nheld && !r->npending)
			work += release_held(r, now);
		if (!r->npending)
			work += receive(r, now);
		work += drain(r, now);
		flush_due(r, now, 0);
		worked = work != 0;
		if (work) {
			idle = 0;
			sleep_us = SERPENS_IDLE_MIN_US;
			/* busy for a quantum: a loop sharing this core (another node's router or a
			 * gateway, on one host) runs now, not when the scheduler preempts us
			 * milliseconds later (alone on the core, a yield returns at once) */
			if (!busy_since) {
				busy_since = now;
			} else if (now - busy_since > quantum) {
				/* this iteration's work is busy time, the yield is not */
				r->busy_cycles += rte_rdtsc() - prev;
				worked = 0;
				stage(r, SERPENS_STAGE_LOOP);
				sched_yield();
				stage(r, SERPENS_STAGE_IDLE);
				busy_since = 0;
			}
			continue;
		}
		busy_since = 0;
		flush_due(r, now, 1);
		stage(r, SERPENS_STAGE_LOOP);
		if (++idle < IDLE_POLLS || r->npending) {
			/* an instance sharing this core runs now, not at the end of our slice */
			sched_yield();
			stage(r, SERPENS_STAGE_IDLE);
			continue;
		}
		/* Idle: back off (router/pace.h serpens_idle_sleep), so an idle node costs almost
		 * nothing; a paced port's next arrival bounds the sleep. */
		uint64_t us = sleep_us;
		for (uint32_t i = 0; i < r->nports; i++)
			us = serpens_pace_sleep_us(&r->ports[i].pace, now, us);
		r->sleeps += serpens_idle_sleep(us, &sleep_us);
		stage(r, SERPENS_STAGE_IDLE);
	}
	flush_due(r, rte_rdtsc(), 1);
	return 0;
}

int serpens_router_lcore_main(void *arg)
{
	return serpens_router_run(arg);
}
