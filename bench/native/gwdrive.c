/* Traffic for the gateway (see gwdrive.h). */
#include <sched.h>
#include <string.h>
#include <time.h>

#include <rte_cycles.h>
#include <rte_mbuf.h>

#include "gwdrive.h"

#define IDLE_POLLS 256
#define SHARED_QUANTUM_US 50
#define MAX_GEN 64  /* arrivals written per pass: catching up after a preemption */

static uint32_t generate(struct serpens_gwdrive *d, uint64_t now)
{
	struct rte_mbuf *m[MAX_GEN];
	uint32_t room = rte_ring_free_count(d->in);
	uint32_t n = serpens_pace_quota(&d->pace, now, room < MAX_GEN ? room : MAX_GEN);
	if (!n || rte_pktmbuf_alloc_bulk(d->mp, m, n))
		return 0;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t f = d->next_frame;
		d->next_frame = f + 1 == d->nframes ? 0 : f + 1;
		uint8_t *p = rte_pktmbuf_mtod(m[k], uint8_t *);
		memcpy(p, d->frames + d->off[f], d->len[f]);
		m[k]->data_len = m[k]->pkt_len = d->len[f];
		uint64_t at = serpens_pace_arrival(&d->pace, k, now);
		uint32_t seq = d->seq++;
		memcpy(p + d->stamp_off, &at, sizeof(at));
		memcpy(p + d->stamp_off + sizeof(at), &seq, sizeof(seq));
	}
	serpens_pace_received(&d->pace, n);
	/* room was checked and this thread is the ring's only producer */
	rte_ring_enqueue_burst(d->in, (void **)m, n, NULL);
	d->sent += n;
	return n;
}

static uint32_t take_output(struct serpens_gwdrive *d)
{
	struct rte_mbuf *m[SERPENS_BURST];
	uint32_t n = rte_ring_dequeue_burst(d->out, (void **)m, SERPENS_BURST, NULL);
	if (!n)
		return 0;
	uint64_t now = rte_rdtsc();
	if (__atomic_load_n(&d->log_on, __ATOMIC_ACQUIRE)) {
		for (uint32_t k = 0; k < n && d->log_n < d->log_cap; k++) {
			const uint8_t *p = rte_pktmbuf_mtod(m[k], const uint8_t *);
			struct serpens_lat_rec *r = &d->log[d->log_n];
			if (m[k]->data_len < d->stamp_off + 12)
				continue;
			memcpy(&r->rx_tsc, p + d->stamp_off, sizeof(r->rx_tsc));
			memcpy(&r->seq, p + d->stamp_off + 8, sizeof(r->seq));
			r->tx_tsc = now;
			r->flow = 0;
			__atomic_store_n(&d->log_n, d->log_n + 1, __ATOMIC_RELEASE);
		}
	}
	rte_pktmbuf_free_bulk(m, n);
	d->received += n;
	return n;
}

int serpens_gwdrive_lcore_main(void *arg)
{
	struct serpens_gwdrive *d = arg;
	uint32_t idle = 0, sleep_us = SERPENS_IDLE_MIN_US;
	uint64_t busy_since = 0, quantum = rte_get_tsc_hz() / 1000000 * SHARED_QUANTUM_US;

	while (!__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
		uint64_t now = rte_rdtsc();
		uint32_t work = generate(d, now);
		work += serpens_gateway_poll(d->g);
		work += take_output(d);
		if (work) {
			idle = 0;
			sleep_us = SERPENS_IDLE_MIN_US;
			/* busy for a quantum: the servers' routers sharing this core run now, not
			 * when the scheduler preempts us milliseconds later (as router.c) */
			if (!busy_since) {
				busy_since = now;
			} else if (now - busy_since > quantum) {
				sched_yield();
				busy_since = 0;
			}
			continue;
		}
		busy_since = 0;
		if (++idle < IDLE_POLLS || serpens_gateway_waiting(d->g)) {
			sched_yield(); /* the servers' routers share this core */
			continue;
		}
		uint64_t us = serpens_pace_sleep_us(&d->pace, now, sleep_us);
		d->sleeps += serpens_idle_sleep(us, &sleep_us);
	}
	return 0;
}

double serpens_encap_cycles(struct rte_mempool *mp, const uint8_t *frame, uint16_t len,
			    uint32_t iters)
{
	static const uint8_t mac[6] = {2, 0, 0, 0, 0xee, 0x11};
	struct serpens_underlay u = {.ip = 0x0100a8c0, .mac = {2, 0, 0, 0, 0xee, 1}, .mtu = 1500};
	struct rte_mbuf *m[SERPENS_BURST];
	uint32_t ok = 0;

	if (rte_pktmbuf_alloc_bulk(mp, m, SERPENS_BURST))
		return 0;
	for (uint32_t k = 0; k < SERPENS_BURST; k++) {
		memcpy(rte_pktmbuf_mtod(m[k], uint8_t *), frame, len);
		m[k]->data_len = m[k]->pkt_len = len;
	}
	uint64_t t0 = rte_rdtsc();
	for (uint32_t i = 0; i < iters; i++) {
		for (uint32_t k = 0; k < SERPENS_BURST; k++) {
			ok += serpens_vxlan_encap(m[k], &u, 0x0b00a8c0, mac, 7, 0, k * 0x9E3779B1u) ==
			      SERPENS_ENCAP_OK;
			/* undo: the inner frame is where it was */
			rte_pktmbuf_adj(m[k], SERPENS_VXLAN_OVERHEAD);
		}
	}
	uint64_t t1 = rte_rdtsc();
	rte_pktmbuf_free_bulk(m, SERPENS_BURST);
	return ok == iters * SERPENS_BURST ? (double)(t1 - t0) / ok : 0;
}
