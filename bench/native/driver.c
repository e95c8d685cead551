/* Benchmark traffic driver (see driver.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>

#include "driver.h"
#include "nf_api.h"

struct frame_set {
	const uint8_t *frames;
	const uint16_t *len;
	uint32_t n, next;
	uint64_t *offsets;
};

static void load_frame(struct rte_mbuf *m, struct frame_set *fs)
{
	uint32_t i = fs->next;
	fs->next = i + 1 == fs->n ? 0 : i + 1;
	rte_pktmbuf_reset(m);
	memcpy(rte_pktmbuf_mtod(m, void *), fs->frames + fs->offsets[i], fs->len[i]);
	m->data_len = m->pkt_len = fs->len[i];
}

static void wake(struct serpens_pool_ctl *ctl, int efd)
{
	if (ctl) /* (NULL: a ring loop with no process behind it) */
		serpens_pool_wake(ctl, efd);
}

int serpens_drive(struct rte_ring *rx, struct rte_ring *tx, struct rte_mempool *mp,
		  const uint8_t *frames, const uint16_t *len, uint32_t nframes, uint32_t inflight,
		  double warmup, double seconds, int rewrite, struct serpens_pool_ctl *ctl, int efd,
		  int label_off, struct serpens_drive_result *res)
{
	static uint64_t offsets[1 << 20];
	struct rte_mbuf *burst[SERPENS_BURST];
	struct frame_set fs = {frames, len, nframes, 0, offsets};
	uint64_t hz = rte_get_tsc_hz(), off = 0;
	uint32_t loaned = 0;

	if (nframes == 0 || nframes > (1u << 20))
		return -EINVAL;
	for (uint32_t i = 0; i < nframes; i++) {
		offsets[i] = off;
		off += len[i];
	}
	memset(res, 0, sizeof(*res));
	/* Fill the loop. */
	while (loaned < inflight) {
		uint32_t n = inflight - loaned < SERPENS_BURST ? inflight - loaned : SERPENS_BURST;
		if (rte_pktmbuf_alloc_bulk(mp, burst, n))
			break;
		for (uint32_t i = 0; i < n; i++)
			load_frame(burst[i], &fs);
		uint32_t q = rte_ring_enqueue_burst(rx, (void **)burst, n, NULL);
		if (q < n)
			rte_pktmbuf_free_bulk(burst + q, n - q);
		loaned += q;
		if (q < n)
			break;
	}
	wake(ctl, efd);

	uint64_t start = rte_rdtsc(), measure_from = start + (uint64_t)(warmup * hz);
	uint64_t end = measure_from + (uint64_t)(seconds * hz), t_first = 0;
	int measuring = 0;
	for (;;) {
		uint64_t now = rte_rdtsc();
		if (!measuring && now >= measure_from) {
			measuring = 1;
			t_first = now;
			res->packets = res->out = 0;
		}
		if (now >= end)
			break;
		uint32_t n = rte_ring_dequeue_burst(tx, (void **)burst, SERPENS_BURST, NULL);
		if (n == 0) {
			wake(ctl, efd);
			rte_pause();
			continue;
		}
		res->packets += n;
		for (uint32_t i = 0; i < n; i++) {
			res->out += *RTE_MBUF_DYNFIELD(burst[i], label_off, uint16_t *) ==
				    SERPENS_LABEL_OUT;
			if (rewrite)
				load_frame(burst[i], &fs);
		}
		uint32_t q = rte_ring_enqueue_burst(rx, (void **)burst, n, NULL);
		if (q < n) { /* cannot happen: the loop never holds more than the ring */
			rte_pktmbuf_free_bulk(burst + q, n - q);
			loaned -= n - q;
		}
	}
	res->ns = serpens_cycles_to_ns(rte_rdtsc() - t_first);

	/* Collect every mbuf back before returning (no leak, nothing left in the instance). */
	uint64_t give_up = rte_rdtsc() + 5 * hz;
	while (loaned && rte_rdtsc() < give_up) {
		uint32_t n = rte_ring_dequeue_burst(tx, (void **)burst, SERPENS_BURST, NULL);
		if (n) {
			rte_pktmbuf_free_bulk(burst, n);
			loaned -= n;
		} else {
			wake(ctl, efd);
			rte_pause();
		}
	}
	return loaned ? -ETIMEDOUT : 0;
}
