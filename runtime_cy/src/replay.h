/*
 * Offline replay: the router's job for one SFC instance over a capture (net_pcap ports).
 * Reads every frame from `in_port` until the capture ends, hands them in order to the
 * instance's RX ring (waking it as the router does), transmits OUT packets on `out_port` in
 * order and frees the rest, until everything sent came back.
 */
#ifndef SERPENS_REPLAY_H
#define SERPENS_REPLAY_H

#include <stdint.h>

#include <rte_ring.h>

#include "pool_ctl.h"

struct serpens_replay_stats {
	uint64_t rx, out, dropped, tx_failed;
};

int serpens_replay(uint16_t in_port, uint16_t out_port, struct rte_ring *rx, struct rte_ring *tx,
		   struct serpens_pool_ctl *ctl, int efd, int label_off,
		   struct serpens_replay_stats *st);

#endif
