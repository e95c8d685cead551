/* The router (see router.h). */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf_dyn.h>

#include "nf_api.h"
#include "router.h"

#define IDLE_POLLS 256          /* empty polls before the router starts sleeping */
#define MAX_SLEEP_US 4096 /* a wake-up costs ~30 us of CPU in a nested VM: <1% idle */

static uint32_t flow_hash(struct rte_mbuf *m)
{
	struct serpens_hdrs h;
	const uint8_t *f = rte_pktmbuf_mtod(m, const uint8_t *);
	uint32_t a, b, hash;

	if (serpens_parse(f, m->data_len, &h) == SERPENS_PARSE_NON_IP || !h.family) {
		hash = serpens_hash_crc(f, m->data_len < 14 ? m->data_len : 14, 7);
	} else {
		/* Symmetric: a flow and its reverse hash alike. */
		uint32_t n = h.family == 4 ? 4 : 16;
		a = serpens_hash_crc(h.flow.src, n, h.flow.sport);
		b = serpens_hash_crc(h.flow.dst, n, h.flow.dport);
		hash = (a ^ b) * 0x9E3779B1u + h.flow.proto;
	}
	return hash ? hash : 1;
}

static int usable(const struct serpens_router_instance *in)
{
	uint32_t st = in->state;
	return st == SERPENS_INST_ACTIVE || (st == SERPENS_INST_DRAINING && !in->drained);
}

static int least_loaded(struct serpens_router *r)
{
	int best = -1;
	uint32_t load = UINT32_MAX;
	for (int i = 0; i < SERPENS_ROUTER_MAX_INSTANCES; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		if (in->state != SERPENS_INST_ACTIVE)
			continue;
		uint32_t q = rte_ring_count(in->rx);
		if (q < load) {
			load = q;
			best = i;
		}
	}
	return best;
}

/* The instance for a flow: its pin if that instance still takes it, else a new pin. */
static int dispatch(struct serpens_router *r, uint32_t hash, uint16_t now)
{
	struct serpens_flow_bucket *b = &r->flows[hash % SERPENS_FLOW_BUCKETS];
	int way = -1, lru = -1;

	for (int w = 0; w < SERPENS_FLOW_WAYS; w++) {
		if (b->hash[w] == hash) {
			way = w;
			break;
		}
		/* a free way, else the least recently used one */
		if (lru < 0 || (b->hash[lru] != 0 &&
				(b->hash[w] == 0 ||
				 (uint16_t)(now - b->used[w]) > (uint16_t)(now - b->used[lru]))))
			lru = w;
	}
	if (way >= 0 && usable(&r->inst[b->inst[way]])) {
		b->used[way] = now;
		return b->inst[way];
	}
	int inst = least_loaded(r);
	if (inst < 0)
		return -1;
	if (way < 0) {
		way = lru;
		r->new_flows++;
	} else {
		r->moved_flows++;
	}
	b->hash[way] = hash;
	b->inst[way] = (uint16_t)inst;
	b->used[way] = now;
	return inst;
}

static void wake(struct serpens_router_instance *in)
{
	uint64_t one = 1;
	in->waiting = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (in->ctl->sleeping && write(in->efd, &one, sizeof(one)) == sizeof(one))
		in->wakeups++;
}

/* Enqueue for instance i; what its full ring does not take waits in `pending`, and the router
 * receives nothing more until it went in: the port's queue absorbs the burst (back-pressure),
 * and nothing is reordered or dropped here. */
static void enqueue(struct serpens_router *r, int i, struct rte_mbuf **pkts, uint32_t n, uint64_t now)
{
	struct serpens_router_instance *in = &r->inst[i];
	uint32_t q = rte_ring_enqueue_burst(in->rx, (void **)pkts, n, NULL);
	in->enqueued += q;
	if (q && in->waiting == 0)
		in->oldest_tsc = now;
	in->waiting += q;
	if (q < n) {
		memcpy(in->pending + in->npending, pkts + q, sizeof(pkts[0]) * (n - q));
		in->npending += n - q;
		r->npending += n - q;
		wake(in);
	} else if (in->waiting >= r->wake_batch) {
		wake(in);
	}
}

static uint32_t flush_pending(struct serpens_router *r, uint64_t now)
{
	uint32_t moved = 0;
	for (int i = 0; i < SERPENS_ROUTER_MAX_INSTANCES && r->npending; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		uint32_t n = in->npending;
		if (!n)
			continue;
		in->npending = 0;
		r->npending -= n;
		struct rte_mbuf *again[SERPENS_BURST];
		memcpy(again, in->pending, sizeof(again[0]) * n);
		enqueue(r, i, again, n, now);
		moved += n - in->npending;
	}
	return moved;
}

static int any_active(const struct serpens_router *r)
{
	for (int i = 0; i < SERPENS_ROUTER_MAX_INSTANCES; i++)
		if (r->inst[i].state == SERPENS_INST_ACTIVE)
			return 1;
	return 0;
}

static uint32_t receive(struct serpens_router *r, uint64_t now)
{
	struct rte_mbuf *pkts[SERPENS_BURST], *per[SERPENS_ROUTER_MAX_INSTANCES][SERPENS_BURST];
	uint32_t count[SERPENS_ROUTER_MAX_INSTANCES] = {0};
	uint16_t coarse = (uint16_t)(now >> 24);

	uint16_t n;

	/* No instance (scaled to zero): hold one burst, ask for an instance and read nothing
	 * more, so the rest waits in the port's queue; the instance manager starts one in
	 * microseconds (paper §III-A) and the held burst goes first. */
	if (r->nheld == 0)
		r->nheld = rte_eth_rx_burst(r->in_port, 0, r->held, SERPENS_BURST);
	if (r->nheld == 0)
		return 0;
	if (!any_active(r)) {
		if (!r->wants_instance) {
			uint64_t one = 1;
			__atomic_store_n(&r->wants_instance, 1, __ATOMIC_RELEASE);
			/* once per episode: the instance manager sleeps on it, it does not poll */
			if (r->notify_fd >= 0 && write(r->notify_fd, &one, sizeof(one)) < 0)
				r->notify_fd = -1;
		}
		return 0;
	}
	n = (uint16_t)r->nheld;
	memcpy(pkts, r->held, sizeof(pkts[0]) * n);
	r->nheld = 0;

	for (uint16_t k = 0; k < n; k++) {
		int i = dispatch(r, flow_hash(pkts[k]), coarse);
		if (i < 0) {
			rte_pktmbuf_free(pkts[k]);
			r->no_instance++;
			continue;
		}
		per[i][count[i]++] = pkts[k];
	}
	for (int i = 0; i < SERPENS_ROUTER_MAX_INSTANCES; i++)
		if (count[i])
			enqueue(r, i, per[i], count[i], now);
	r->rx += n;
	return n;
}

static void flush(struct serpens_router *r, struct rte_mbuf **out, uint32_t *nout)
{
	uint16_t sent = 0;
	for (int tries = 0; sent < *nout && tries < 64; tries++)
		sent += rte_eth_tx_burst(r->out_port, 0, out + sent, (uint16_t)(*nout - sent));
	if (sent < *nout) {
		rte_pktmbuf_free_bulk(out + sent, *nout - sent);
		r->tx_failed += *nout - sent;
	}
	r->tx += sent;
	*nout = 0;
}

static uint32_t drain(struct serpens_router *r, int label_off, struct rte_mbuf **out,
		      uint32_t *nout, uint64_t now)
{
	struct rte_mbuf *pkts[SERPENS_BURST], *drop[SERPENS_BURST];
	uint32_t total = 0;

	for (int i = 0; i < SERPENS_ROUTER_MAX_INSTANCES; i++) {
		struct serpens_router_instance *in = &r->inst[i];
		if (in->state == SERPENS_INST_EMPTY)
			continue;
		if (in->waiting && now - in->oldest_tsc > r->wake_cycles)
			wake(in);
		uint32_t n = rte_ring_dequeue_burst(in->tx, (void **)pkts, SERPENS_BURST, NULL);
		uint32_t ndrop = 0;
		for (uint32_t k = 0; k < n; k++) {
			if (*RTE_MBUF_DYNFIELD(pkts[k], label_off, uint16_t *) == SERPENS_LABEL_OUT) {
				out[(*nout)++] = pkts[k];
				if (*nout == SERPENS_BURST)
					flush(r, out, nout);
			} else {
				drop[ndrop++] = pkts[k];
			}
		}
		rte_pktmbuf_free_bulk(drop, ndrop);
		r->dropped += ndrop;
		in->returned += n;
		total += n;
		/* A draining instance is done once every packet given to it came back (the router
		 * alone counts both, so this is exact: nothing queued, nothing in flight). */
		if (in->state == SERPENS_INST_DRAINING && !in->drained && in->returned == in->enqueued &&
		    in->npending == 0)
			__atomic_store_n(&in->drained, 1, __ATOMIC_RELEASE);
	}
	return total;
}

int serpens_router_run(struct serpens_router *r, int label_off)
{
	struct rte_mbuf *out[SERPENS_BURST];
	uint32_t nout = 0, idle = 0, sleep_us = 1;
	uint64_t last_flush = rte_rdtsc();

	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		uint64_t now = rte_rdtsc();
		uint32_t work = r->npending ? flush_pending(r, now) : receive(r, now);
		work += drain(r, label_off, out, &nout, now);
		if (nout && now - last_flush > r->drain_cycles) {
			flush(r, out, &nout);
			last_flush = now;
		}
		if (work) {
			idle = 0;
			sleep_us = 1;
			continue;
		}
		if (nout)
			flush(r, out, &nout);
		if (++idle < IDLE_POLLS) {
			rte_pause();
			continue;
		}
		/* Idle: back off (doubling up to MAX_SLEEP_US), so an idle node costs almost nothing. */
		struct timespec ts = {0, (long)sleep_us * 1000};
		nanosleep(&ts, NULL);
		r->sleeps++;
		if (sleep_us < MAX_SLEEP_US)
			sleep_us *= 2;
	}
	if (nout)
		flush(r, out, &nout);
	return 0;
}

int serpens_router_lcore_main(void *arg)
{
	struct serpens_router *r = arg;
	return serpens_router_run(r, r->label_off);
}
