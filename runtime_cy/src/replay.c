/* Offline replay (see replay.h). */
#include <errno.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>

#include "replay.h"
#include "serpens/nf.h"

/* Transmit everything, retrying a full queue; returns how many the port refused for good. */
static uint64_t send_all(uint16_t port, struct rte_mbuf **pkts, uint16_t n)
{
	uint16_t sent = 0;
	for (int tries = 0; sent < n && tries < 1000; tries++) {
		sent += rte_eth_tx_burst(port, 0, pkts + sent, n - sent);
		if (sent < n)
			rte_pause();
	}
	if (sent < n)
		rte_pktmbuf_free_bulk(pkts + sent, n - sent);
	return n - sent;
}

int serpens_replay(uint16_t in_port, uint16_t out_port, struct rte_ring *rx, struct rte_ring *tx,
		   struct serpens_pool_ctl *ctl, int efd, int label_off,
		   struct serpens_replay_stats *st)
{
	struct rte_mbuf *burst[SERPENS_BURST], *out[SERPENS_BURST], *drop[SERPENS_BURST];
	uint64_t inflight = 0, idle_polls = 0;
	int input_done = 0;

	st->rx = st->out = st->dropped = st->tx_failed = 0;
	while (!input_done || inflight) {
		if (!input_done) {
			uint16_t n = rte_eth_rx_burst(in_port, 0, burst, SERPENS_BURST);
			/* net_pcap returns 0 once the capture is read; a few empty polls confirm it. */
			if (n == 0 && ++idle_polls > 64)
				input_done = 1;
			if (n) {
				idle_polls = 0;
				uint32_t q = 0;
				while (q < n) {
					q += rte_ring_enqueue_burst(rx, (void **)burst + q, n - q, NULL);
					if (q < n) {
						serpens_pool_wake(ctl, efd);
						rte_pause();
					}
				}
				st->rx += n;
				inflight += n;
				serpens_pool_wake(ctl, efd);
			}
		}
		uint32_t n = rte_ring_dequeue_burst(tx, (void **)burst, SERPENS_BURST, NULL);
		if (n == 0) {
			if (input_done)
				serpens_pool_wake(ctl, efd);
			rte_pause();
			continue;
		}
		uint16_t nout = 0, ndrop = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (*RTE_MBUF_DYNFIELD(burst[i], label_off, uint16_t *) == SERPENS_LABEL_OUT)
				out[nout++] = burst[i];
			else
				drop[ndrop++] = burst[i];
		}
		st->tx_failed += send_all(out_port, out, nout);
		rte_pktmbuf_free_bulk(drop, ndrop);
		st->out += nout;
		st->dropped += ndrop;
		inflight -= n;
	}
	return 0;
}
