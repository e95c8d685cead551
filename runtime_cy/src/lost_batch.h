/*
 * The packets an instance held when its process died. The runtime sets inflight_n before it
 * dequeues a whole batch into inflight[] and hands the batch to its TX ring in order
 * (runtime.c), so the packets taken from the RX ring but never given to the TX ring are the
 * last (RX consumer count - TX producer count) entries of inflight[]. Whoever owns the rings
 * (the router, or a test harness) frees them once the process is gone, before dequeuing
 * anything more from the RX ring. A SIGKILL inside the dequeue itself (after the copy, before
 * the consumer count moved) leaks that batch rather than risk freeing a packet twice.
 */
#ifndef SERPENS_LOST_BATCH_H
#define SERPENS_LOST_BATCH_H

#include <rte_mbuf.h>
#include <rte_ring.h>

#include "pool_ctl.h"

/* Free the lost packets; returns how many. */
static inline uint32_t serpens_free_lost_batch(struct serpens_pool_ctl *ctl, struct rte_ring *rx,
					       const struct rte_ring *tx)
{
	uint32_t lost = rx->cons.tail - tx->prod.tail;
	uint32_t batch = ctl->inflight_n;

	if (!lost || batch > SERPENS_BURST || lost > batch)
		return 0;
	rte_pktmbuf_free_bulk((struct rte_mbuf **)ctl->inflight + (batch - lost), lost);
	ctl->inflight_n = 0;
	return lost;
}

#endif
