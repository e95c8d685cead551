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
	return s->table[live][(key * 0x9E3779B1u >> 7) % SERPENS_GW_MAGLEV];
}

/* The server of a flow of SFC `sfc` (NO_SERVER: none serves it): its pin while that server
 * serves the SFC, else the Maglev choice, pinned unless the flow's bucket is full of live
 * flows. */
static uint32_t flow_key(int sfc, uint32_t hash)
{
	return (hash + (uint32_t)sfc * 0x85EBCA6Bu) | 1;
}

static struct serpens_gw_flow_bucket *flow_bucket(struct serpens_gateway *g, uint32_t key)
{
	return &g->flows[(key >> 1) % SERPENS_GW_FLOW_BUCKETS];
}

static uint32_t server_for(struct serpens_gateway *g, int sfc, uint32_t hash, uint32_t now)
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
	if (way >= 0 && live_server(g, s, b->server[way])) {
		b->used[way] = now;
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
	b->used[way] = now;
	return server;
}

static void flush(struct serpens_gateway *g, struct serpens_gw_port *p)
{
	uint16_t sent = 0;
	for (int tries = 0; sent < p->nout && tries < 64; tries++)
		sent += rte_eth_tx_burst(p->id, 0, p->out + sent, (uint16_t)(p->nout - sent));
	if (sent < p->nout) {
		rte_pktmbuf_free_bulk(p->out + sent, p->nout - sent);
		p->tx_failed += p->nout - sent;
		g->tx_failed += p->nout - sent;
	}
	p->tx += sent;
	g->tx += sent;
	p->nout = 0;
}

static void transmit(struct serpens_gateway *g, struct serpens_gw_port *p, struct rte_mbuf *m)
{
	p->out[p->nout++] = m;
	if (p->nout == SERPENS_BURST)
		flush(g, p);
}

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
		uint32_t server = server_for(g, sfc, hash, now);
		if (server == SERPENS_GW_NO_SERVER) {
			s->no_server++;
			rte_pktmbuf_free(m);
			continue;
		}
		struct serpens_gw_server *sv = &g->servers[server];
		int rc = serpens_vxlan_encap(m, &g->underlay, sv->ip, sv->mac, s->tag, s->vni, hash);
		if (rc != SERPENS_ENCAP_OK) {
			if (rc == SERPENS_ENCAP_OVER_MTU)
				s->over_mtu++;
			else
				s->no_room++;
			rte_pktmbuf_free(m);
			continue;
		}
		s->tx++;
		sv->tx++;
		transmit(g, &g->ports[sv->port], m);
	}
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
	/* the underlay ports every time: what servers return must not wait behind the outside */
	uint16_t n;
	for (uint32_t i = 0; i < g->nports; i++) {
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
	for (uint32_t tries = 0; tries < g->nports; tries++) {
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
	for (uint32_t i = 0; i < g->nports; i++)
		if (g->ports[i].nout)
			flush(g, &g->ports[i]);
	return work;
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
		if (++idle < IDLE_POLLS) {
			sched_yield();
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
