/*
 * Traffic driver for benchmarks: plays a router that keeps an instance's RX ring full and
 * recycles what comes back on its TX ring, rewriting each mbuf with the next frame of a fixed
 * set (so NFs that rewrite packets, like NAT, always see fresh traffic). Runs in the primary
 * on its own core; no allocation in the loop.
 */
#ifndef SERPENS_DRIVER_H
#define SERPENS_DRIVER_H

#include <stdint.h>

#include <rte_mempool.h>
#include <rte_ring.h>

#include "pool_ctl.h"

struct serpens_drive_result {
	uint64_t packets;   /* came back from the instance (any verdict) */
	uint64_t out;       /* ... with verdict OUT */
	uint64_t ns;        /* measuring time */
};

/* Drive for `seconds` (after `warmup` seconds not counted) with `inflight` mbufs in the loop.
 * rewrite: reload each returning mbuf with the next frame (for NFs that change packets);
 * without it an mbuf keeps its frame and is only re-queued. 
 * frames: nframes frames of len[i] bytes, packed back to back. ctl/efd: wake the instance
 * when it sleeps. Returns 0 or -errno (mempool too small). */
int serpens_drive(struct rte_ring *rx, struct rte_ring *tx, struct rte_mempool *mp,
		  const uint8_t *frames, const uint16_t *len, uint32_t nframes, uint32_t inflight,
		  double warmup, double seconds, int rewrite, struct serpens_pool_ctl *ctl, int efd,
		  int label_off, struct serpens_drive_result *res);

#endif
