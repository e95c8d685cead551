/* The gateway's packet loop (see gateway.h). */
#include <sched.h>
#include <string.h>
#include <time.h>

#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_prefetch.h>

#include "gateway.h"

#define IDLE_POLLS 256
#define HOLD_PASSES 8 /* passes a port must hold the ingress back (and stall_cycles) to shed */
#define SHARED_QUANTUM_US 50 /* busy this long, the loop yields (router.c) */

static uint32_t coarse_now(uint64_t tsc)
{
	return (uint32_t)(tsc >> 16);
}

static int live_server(const struct serpens_gateway *g, const struct serpens_gw_sfc *s,
		       uint32_t server)
{
	return server < SERPENS_GW_MAX_SERVERS && (s->servers >> server & 1) &&
	       g->servers[server].used;
}

/* The Maglev table's choice for a flow key (NO_SERVER: none). */
static uint32_t maglev_pick(const struct serpens_gw_sfc *s, uint32_t key)
{
	uint32_t live = __atomic_load_n(&s->table_live, __ATOMIC_ACQUIRE) & 1;
	return s->table[live][serpens_gw_slot(key)];
}

static uint32_t flow_key(int sfc, uint32_t hash)
{
	return serpens_gw_flow_key(sfc, hash);
}

static struct serpens_gw_flow_bucket *flow_bucket(struct serpens_gateway *g, uint32_t key)
{
	return &g->flows[(key >> 1) % SERPENS_GW_FLOW_BUCKETS];
}

/* The server of a flow of SFC `sfc` (NO_SERVER: none serves it): its pin while that server
 * serves the SFC, else the Maglev choice, pinned unless the flow's bucket is full of live
 * flows. *move: the mark of a move releasing the flow (its entry's `move`, 0: none). */
static uint32_t server_for(struct serpens_gateway *g, int sfc, uint32_t hash, uint32_t now,
			   uint8_t *move)
{
	struct serpens_gw_sfc *s = &g->sfcs[sfc];
	uint32_t key = flow_key(sfc, hash);
	struct serpens_gw_flow_bucket *b = flow_bucket(g, key);
	uint32_t idle = (uint32_t)(g->idle_cycles >> 16);
	int way = -1, free_way = -1;

	for (int w = 0; w < SERPENS_GW_FLOW_WAYS; w++) {
		int expired = !b->key[w] || now - b->used[w] > idle;
		if (b->key[w] == key && !expired) {
			way = w;
			break;
		}
		if (expired && free_way < 0)
			free_way = w;
	}
	*move = 0;
	if (way >= 0 && live_server(g, s, b->server[way])) {
		b->used[way] = now;
		*move = b->move[way];
		return b->server[way];
	}
	uint32_t server = maglev_pick(s, key);
	if (!live_server(g, s, server))
		return SERPENS_GW_NO_SERVER;
	if (way >= 0) {
		s->moved_flows++; /* its server left the SFC */
	} else if (free_way >= 0) {
		way = free_way;
		s->new_flows++;
	} else {
		s->flow_full++;
		return server;
	}
	b->key[way] = key;
	b->server[way] = (uint8_t)server;
	b->sfc[way] = (uint8_t)sfc;
	b->move[way] = 0;
	b->used[way] = now;
	return server;
}

/* Drop what waits on port p from out[from] on (counted): nothing waits after. */
static void shed(struct serpens_gateway *g, struct serpens_gw_port *p, uint32_t from)
{
	rte_pktmbuf_free_bulk(p->out + from, p->nout - from);
	p->tx_failed += p->nout - from;
	g->tx_failed += p->nout - from;
	p->nout = 0;
}

/* Send what waits on port p; what its full TX queue leaves waits there (back-pressure:
 * gateway.h), unless the port sheds: then it is dropped, until the TX takes all it is given
 * again. Returns the frames sent. */
static uint32_t flush(struct serpens_gateway *g, struct serpens_gw_port *p)
{
	uint16_t sent = rte_eth_tx_burst(p->id, 0, p->out, (uint16_t)p->nout);
	uint32_t left = p->nout - sent;
	p->tx += sent;
	g->tx += sent;
	if (!left) {
		p->nout = 0;
		p->shedding = 0;
	} else if (p->shedding) {
		shed(g, p, sent);
	} else {
		memmove(p->out, p->out + sent, left * sizeof(p->out[0]));
		p->nout = left;
	}
	return sent;
}

/* Queue m on port p; a burst is sent as soon as it is whole. A port whose queue is full
 * (held back longer than the loop lets it: gateway_poll) drops. */
static void transmit(struct serpens_gateway *g, struct serpens_gw_port *p, struct rte_mbuf *m)
{
	if (p->nout == SERPENS_GW_OUT) {
		rte_pktmbuf_free(m);
		p->tx_failed++;
		g->tx_failed++;
		return;
	}
	p->out[p->nout++] = m;
	if (p->nout == SERPENS_BURST || p->nout == SERPENS_GW_OUT)
		flush(g, p);
}

/* Could port p not take a whole burst more? Then it holds back what feeds it. */
static int holding(const struct serpens_gw_port *p)
{
	return p->nout > SERPENS_GW_OUT - SERPENS_BURST && !p->shedding;
}

/* May the loop read a burst from the outside (which could all go to one server)? Not while
 * an underlay port holds it back. */
static int room_for_burst(const struct serpens_gateway *g)
{
	for (uint32_t i = 0; i < g->nports; i++)
		if (g->ports[i].underlay && holding(&g->ports[i]))
			return 0;
	return 1;
}

/* At the end of a pass: how long port p has held back what feeds it, from the first pass it
 * did until nothing waits on it (a slow link that takes a little each pass never empties
 * its queue: its hold goes on). Past stall_cycles, and HOLD_PASSES passes holding (each
 * gives the core away: a pause of this loop's own CPU is no evidence against the link), it
 * sheds. */
static void check_hold(struct serpens_gateway *g, struct serpens_gw_port *p)
{
	if (!p->nout) {
		p->hold_since = 0;
		return;
	}
	if (!holding(p))
		return;
	if (!p->hold_since) {
		p->hold_since = g->now_tsc;
		p->hold_passes = 0;
		p->tx_stalls++;
	} else if (++p->hold_passes >= HOLD_PASSES &&
		   g->now_tsc - p->hold_since > g->stall_cycles) {
		p->shedding = 1;
		p->hold_since = 0;
		shed(g, p, 0);
	}
}

uint32_t serpens_gateway_waiting(const struct serpens_gateway *g)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < g->nports; i++)
		n += g->ports[i].nout;
	return n;
}

/* Encapsulate frame m of SFC `sfc` for server `server` and send it there. */
static void to_server(struct serpens_gateway *g, int sfc, uint32_t server, struct rte_mbuf *m,
		      uint32_t hash)
{
	struct serpens_gw_sfc *s = &g->sfcs[sfc];
	if (!live_server(g, s, server)) { /* left the route while its packets were held */
		s->no_server++;
		rte_pktmbuf_free(m);
		return;
	}
	struct serpens_gw_server *sv = &g->servers[server];
	int rc = serpens_vxlan_encap(m, &g->underlay, sv->ip, sv->mac, s->tag, s->vni, hash);
	if (rc != SERPENS_ENCAP_OK) {
		if (rc == SERPENS_ENCAP_OVER_MTU)
			s->over_mtu++;
		else
			s->no_room++;
		rte_pktmbuf_free(m);
		return;
	}
	s->tx++;
	sv->tx++;
	transmit(g, &g->ports[sv->port], m);
}

static struct serpens_gw_move *moving_flow(struct serpens_gateway *g, int sfc, uint32_t server,
					   uint32_t key, uint8_t mark);
static void hold(struct serpens_gateway *g, struct serpens_gw_move *mv, struct rte_mbuf *m,
		 uint32_t hash);

/* Frames from the outside: classify, pick the server, encapsulate, to its underlay port. */
static void from_outside(struct serpens_gateway *g, uint32_t port, struct rte_mbuf **pkts,
			 uint32_t n, uint32_t now)
{
	const uint32_t live = serpens_rules_live(&g->rules_live);
	const struct serpens_match_tables t = {g->rules[live], g->nrules[live], g->default_sfc,
					       g->tag_sfc};

	int sfcs[SERPENS_BURST];
	uint32_t hashes[SERPENS_BURST], kept = 0;

	/* Two passes: classify the burst and prefetch each packet's flow bucket, then look the
	 * flows up: with many flows the table is far larger than the caches, and its misses
	 * were the largest cost of a packet here (perf), now overlapped across the burst. */
	for (uint32_t k = 0; k < n; k++) {
		struct rte_mbuf *m = pkts[k];
		uint32_t hash;
		int sfc = serpens_classify(&t, port, rte_pktmbuf_mtod(m, const uint8_t *),
					   m->data_len, &hash);
		if (sfc < 0 || sfc >= SERPENS_GW_MAX_SFCS || !g->sfcs[sfc].used) {
			g->ports[port].unmatched++;
			g->unmatched++;
			rte_pktmbuf_free(m);
			continue;
		}
		const struct serpens_gw_flow_bucket *b = flow_bucket(g, flow_key(sfc, hash));
		rte_prefetch0(b);
		rte_prefetch0((const char *)(b + 1) - 1); /* a bucket may straddle two lines */
		pkts[kept] = m;
		sfcs[kept] = sfc;
		hashes[kept++] = hash;
	}
	for (uint32_t k = 0; k < kept; k++) {
		struct rte_mbuf *m = pkts[k];
		int sfc = sfcs[k];
		uint32_t hash = hashes[k];
		struct serpens_gw_sfc *s = &g->sfcs[sfc];
		s->rx++;
		uint8_t mark;
		uint32_t server = server_for(g, sfc, hash, now, &mark);
		if (server == SERPENS_GW_NO_SERVER) {
			s->no_server++;
			rte_pktmbuf_free(m);
			continue;
		}
		if (g->moving) {
			struct serpens_gw_move *mv = moving_flow(g, sfc, server, flow_key(sfc, hash),
								 mark);
			if (mv) {
				hold(g, mv, m, hash);
				continue;
			}
		}
		to_server(g, sfc, server, m, hash);
	}
}

/* ---- moves (gateway.h "Moving flows") ---------------------------------------------------- */

/* Does move `mv` take the flow of `key` in SFC `sfc` now pinned to `server`? */
static int in_move(const struct serpens_gw_move *mv, int sfc, uint32_t server, uint32_t key)
{
	if (mv->sfc != (uint32_t)sfc || server != mv->source)
		return 0;
	uint32_t slot = serpens_gw_slot(key);
	return mv->all || (mv->slots[slot / 64] >> (slot % 64) & 1);
}

/* The move holding this flow's packets (NULL: none): a move of its SFC holding its slot, the
 * flow going to the move's source; or releasing it (its entry's mark: 1 + the move). */
static struct serpens_gw_move *moving_flow(struct serpens_gateway *g, int sfc, uint32_t server,
					   uint32_t key, uint8_t mark)
{
	for (int i = 0; i < SERPENS_GW_MAX_MOVES; i++) {
		struct serpens_gw_move *mv = &g->moves[i];
		uint32_t st = __atomic_load_n(&mv->state, __ATOMIC_ACQUIRE);
		if (st == SERPENS_GW_MOVE_DRAINING ? mark == i + 1 :
		    (st == SERPENS_GW_MOVE_HOLD || st == SERPENS_GW_MOVE_COMMIT ||
		     st == SERPENS_GW_MOVE_ABORT) && in_move(mv, sfc, server, key))
			return mv;
	}
	return NULL;
}

static void hold(struct serpens_gateway *g, struct serpens_gw_move *mv, struct rte_mbuf *m,
		 uint32_t hash)
{
	struct serpens_gw_sfc *s = &g->sfcs[mv->sfc];
	if (mv->tail - mv->head == SERPENS_GW_HOLD) {
		mv->held_dropped++;
		s->held_dropped++;
		rte_pktmbuf_free(m);
		return;
	}
	m->hash.rss = hash;
	mv->ring[mv->tail++ & (SERPENS_GW_HOLD - 1)] = m;
	mv->held++;
	s->held++;
	/* A packet joining a release's queue (its flow's order) is owed a departure on top of
	 * the pace: the backlog shrinks at the pace whatever the flows' rate now. Paced from
	 * the rate they had while held, a release whose flows came faster since (a hold the
	 * host stopped for a while saw few) never emptied. */
	if (__atomic_load_n(&mv->state, __ATOMIC_RELAXED) == SERPENS_GW_MOVE_DRAINING &&
	    mv->release_clock > mv->release_gap)
		mv->release_clock -= mv->release_gap;
}

/* Mark move `i`'s flows (1 + i) and pin them to `to`: one pass over the flow table;
 * returns how many. */
static uint64_t mark_flows(struct serpens_gateway *g, int i, uint32_t to)
{
	struct serpens_gw_move *mv = &g->moves[i];
	uint64_t n = 0;
	for (uint32_t bi = 0; bi < SERPENS_GW_FLOW_BUCKETS; bi++) {
		struct serpens_gw_flow_bucket *b = &g->flows[bi];
		for (int w = 0; w < SERPENS_GW_FLOW_WAYS; w++) {
			if (b->key[w] && in_move(mv, b->sfc[w], b->server[w], b->key[w])) {
				b->server[w] = (uint8_t)to;
				b->move[w] = (uint8_t)(i + 1);
				n++;
			}
		}
	}
	return n;
}

/* Unmark move `i`'s flows (it sent everything it held). */
static void unmark_flows(struct serpens_gateway *g, int i)
{
	for (uint32_t bi = 0; bi < SERPENS_GW_FLOW_BUCKETS; bi++) {
		struct serpens_gw_flow_bucket *b = &g->flows[bi];
		for (int w = 0; w < SERPENS_GW_FLOW_WAYS; w++)
			if (b->move[w] == i + 1)
				b->move[w] = 0;
	}
}

/* May the move's next held packet leave now (its pace: gateway.h)? Counts it if so. */
static int release_due(struct serpens_gw_move *mv, uint64_t tsc)
{
	if (!mv->release_gap)
		return 1;
	uint64_t now = tsc << 8, burst = SERPENS_BURST * mv->release_gap;
	if (!mv->release_clock) /* the start: a small hold (a wave's) leaves at once */
		mv->release_clock = now - SERPENS_GW_RELEASE_CREDIT * mv->release_gap;
	else if (mv->release_clock + burst < now) /* idle credit is capped at one burst */
		mv->release_clock = now - burst;
	if (mv->release_clock > now)
		return 0;
	mv->release_clock += mv->release_gap;
	return 1;
}

/* Releases asked for: re-pin, then send part of what is held (before any newer packet). */
static uint32_t release_moves(struct serpens_gateway *g, uint64_t tsc)
{
	uint32_t sent = 0;
	for (int i = 0; i < SERPENS_GW_MAX_MOVES; i++) {
		struct serpens_gw_move *mv = &g->moves[i];
		uint32_t st = __atomic_load_n(&mv->state, __ATOMIC_ACQUIRE);
		if (st == SERPENS_GW_MOVE_COMMIT || st == SERPENS_GW_MOVE_ABORT) {
			mv->to = st == SERPENS_GW_MOVE_COMMIT ? mv->target : mv->source;
			uint64_t n = mark_flows(g, i, mv->to);
			mv->repinned = st == SERPENS_GW_MOVE_COMMIT ? n : 0;
			mv->release_clock = 0;
			__atomic_store_n(&mv->state, SERPENS_GW_MOVE_DRAINING, __ATOMIC_RELEASE);
			st = SERPENS_GW_MOVE_DRAINING;
		}
		if (st != SERPENS_GW_MOVE_DRAINING)
			continue;
		const struct serpens_gw_port *to = &g->ports[g->servers[mv->to].port];
		for (int k = 0; k < SERPENS_GW_RELEASE_BURST && mv->head != mv->tail &&
				to->nout < SERPENS_GW_OUT && release_due(mv, tsc); k++) {
			struct rte_mbuf *m = mv->ring[mv->head++ & (SERPENS_GW_HOLD - 1)];
			to_server(g, (int)mv->sfc, mv->to, m, m->hash.rss);
			sent++;
		}
		if (mv->head == mv->tail) {
			unmark_flows(g, i);
			g->sfcs[mv->sfc].moves++;
			__atomic_store_n(&mv->state, SERPENS_GW_MOVE_DONE, __ATOMIC_RELEASE);
		}
	}
	return sent;
}

static int tag_is(const struct serpens_gw_sfc *s, uint32_t tag, uint32_t vni)
{
	return s->used && s->tag == tag && s->vni == vni;
}

/* The SFC whose VXLAN tag and VNI these are (-1: none: another tenant's tag is unknown). The
 * last one found is tried first: frames of one SFC come back in runs. */
static int sfc_of_tag(struct serpens_gateway *g, uint32_t tag, uint32_t vni)
{
	if (tag_is(&g->sfcs[g->last_tag_sfc], tag, vni))
		return g->last_tag_sfc;
	for (int i = 0; i < SERPENS_GW_MAX_SFCS; i++)
		if (tag_is(&g->sfcs[i], tag, vni))
			return g->last_tag_sfc = i;
	return -1;
}

/* Frames from underlay port `port`: VXLAN back from the servers out of the egress port, ARP
 * answered there, the rest counted by reason. */
static void from_underlay(struct serpens_gateway *g, uint32_t port, struct rte_mbuf **pkts,
			  uint32_t n)
{
	struct serpens_gw_port *under = &g->ports[port];
	struct serpens_gw_port *egress = &g->ports[g->egress_port];

	for (uint32_t k = 0; k < n; k++) {
		struct rte_mbuf *m = pkts[k];
		uint32_t tag = 0, vni = 0;
		int sfc;
		switch (serpens_underlay_rx(m, &g->underlay, &tag, &vni)) {
		case SERPENS_UNDERLAY_VXLAN:
			sfc = sfc_of_tag(g, tag, vni);
			if (sfc < 0) {
				g->unknown_tag++;
				break;
			}
			g->sfcs[sfc].back++;
			transmit(g, egress, m);
			continue;
		case SERPENS_UNDERLAY_ARP:
			g->arp_replies++;
			transmit(g, under, m);
			continue;
		case SERPENS_UNDERLAY_BAD_OUTER:
			g->bad_outer++;
			break;
		case SERPENS_UNDERLAY_OVER_MTU:
			g->over_mtu++;
			break;
		default:
			g->not_ours++;
			break;
		}
		rte_pktmbuf_free(m);
	}
}

uint32_t serpens_gateway_poll(struct serpens_gateway *g)
{
	struct rte_mbuf *pkts[SERPENS_BURST];
	uint32_t work = 0;
	uint64_t tsc = rte_rdtsc();
	uint32_t now = coarse_now(tsc);

	__atomic_store_n(&g->loops, g->loops + 1, __ATOMIC_RELEASE);
	if (g->underlay_port < 0 || g->egress_port < 0)
		return 0;
	g->now_tsc = tsc;
	if (g->moving && room_for_burst(g))
		work += release_moves(g, tsc); /* held packets before the ports' newer ones */
	/* the underlay ports every time: what servers return must not wait behind the outside
	 * (only behind a full egress: back-pressure toward the servers) */
	const struct serpens_gw_port *egress = &g->ports[g->egress_port];
	uint16_t n;
	for (uint32_t i = 0; i < g->nports && !holding(egress); i++) {
		struct serpens_gw_port *under = &g->ports[i];
		if (!under->underlay)
			continue;
		n = rte_eth_rx_burst(under->id, 0, pkts, SERPENS_BURST);
		if (n) {
			under->rx += n;
			g->rx += n;
			from_underlay(g, i, pkts, n);
			work += n;
		}
	}
	for (uint32_t tries = 0; tries < g->nports && room_for_burst(g); tries++) {
		uint32_t port = g->next_port;
		g->next_port = port + 1 == g->nports ? 0 : port + 1;
		struct serpens_gw_port *p = &g->ports[port];
		if (!p->ingress || p->underlay)
			continue;
		uint32_t quota = serpens_pace_quota(&p->pace, tsc, SERPENS_BURST);
		if (!quota)
			continue;
		n = rte_eth_rx_burst(p->id, 0, pkts, (uint16_t)quota);
		serpens_pace_received(&p->pace, n);
		if (!n)
			continue;
		p->rx += n;
		g->rx += n;
		from_outside(g, port, pkts, n, now);
		work += n;
		break;
	}
	struct rte_mbuf *marker = __atomic_load_n(&g->marker, __ATOMIC_ACQUIRE);
	if (marker) {
		/* after every frame this loop and the ones before it sent: once nothing waits on
		 * its port, straight to the TX queue (never dropped: a full one, it waits) */
		struct serpens_gw_port *mp = &g->ports[g->marker_port];
		if (mp->nout)
			flush(g, mp);
		if (!mp->nout && rte_eth_tx_burst(mp->id, 0, &marker, 1) == 1) {
			mp->tx++;
			g->tx++;
			__atomic_store_n(&g->marker, NULL, __ATOMIC_RELEASE);
			work++;
		}
	}
	uint32_t flushed = 0;
	for (uint32_t i = 0; i < g->nports; i++) {
		if (g->ports[i].nout)
			flushed += flush(g, &g->ports[i]);
		check_hold(g, &g->ports[i]);
	}
	return work ? work : flushed; /* frames that waited and left are work too */
}

void serpens_gateway_release(struct serpens_gateway *g)
{
	for (uint32_t i = 0; i < g->nports; i++) {
		struct serpens_gw_port *p = &g->ports[i];
		rte_pktmbuf_free_bulk(p->out, p->nout);
		p->nout = 0;
		p->hold_since = 0;
	}
	for (int i = 0; i < SERPENS_GW_MAX_MOVES; i++) {
		struct serpens_gw_move *mv = &g->moves[i];
		while (mv->head != mv->tail)
			rte_pktmbuf_free(mv->ring[mv->head++ & (SERPENS_GW_HOLD - 1)]);
	}
	struct rte_mbuf *marker = __atomic_exchange_n(&g->marker, NULL, __ATOMIC_ACQ_REL);
	rte_pktmbuf_free(marker);
}

int serpens_gateway_lcore_main(void *arg)
{
	return serpens_gateway_run(arg);
}

int serpens_gateway_run(struct serpens_gateway *g)
{
	uint32_t idle = 0, sleep_us = SERPENS_IDLE_MIN_US;
	uint64_t busy_since = 0, quantum = rte_get_tsc_hz() / 1000000 * SHARED_QUANTUM_US;

	while (!__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
		if (serpens_gateway_poll(g)) {
			idle = 0;
			sleep_us = SERPENS_IDLE_MIN_US;
			/* busy for a quantum: a loop sharing this core (a router, on one host) runs
			 * now, not when the scheduler preempts us milliseconds later */
			uint64_t now = rte_rdtsc();
			if (!busy_since) {
				busy_since = now;
			} else if (now - busy_since > quantum) {
				sched_yield();
				busy_since = 0;
			}
			continue;
		}
		busy_since = 0;
		if (++idle < IDLE_POLLS || serpens_gateway_waiting(g)) {
			sched_yield(); /* (frames wait for a full TX queue: its reader runs now) */
			continue;
		}
		/* idle: back off, so an idle gateway costs almost nothing; a paced port's next
		 * arrival bounds the sleep (one due sooner than a sleep can be timed: spin) */
		uint64_t us = sleep_us, now = rte_rdtsc();
		for (uint32_t i = 0; i < g->nports; i++)
			us = serpens_pace_sleep_us(&g->ports[i].pace, now, us);
		g->sleeps += serpens_idle_sleep(us, &sleep_us);
	}
	return 0;
}
