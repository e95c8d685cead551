/*
 * Traffic for the gateway (benchmarks, `serpensctl bench multinode`): one loop on the gateway's
 * core plays the outside world around the gateway's own packet loop (serpens_gateway_poll).
 * Each pass: frames that arrived by now (paced as the router's and the gateway's input ports,
 * router/pace.h: an NIC's RX ring of `depth` arrivals, those beyond it lost, `missed`;
 * unpaced: as many as the ingress ring takes) are written into fresh mbufs, each stamped in its
 * payload with its arrival time and a sequence number, and put on the ring the gateway's
 * ingress port reads; then one gateway poll; then what the gateway sent out of its egress
 * port (the frames back from the servers) is taken from that port's TX ring, its stamp read
 * into the latency log, and freed. The stamp travels in the packet, so latency is measured
 * from the arrival at the gateway to the departure after the SFC on another server (another
 * process: one TSC on one host). Idle passes yield the core, then sleep (bounded by the next
 * arrival), as the router does.
 */
#ifndef SERPENS_GWDRIVE_H
#define SERPENS_GWDRIVE_H

#include <stdint.h>

#include <rte_mempool.h>
#include <rte_ring.h>

#include "gateway.h"
#include "pace.h"
#include "router.h"

struct serpens_gwdrive {
	volatile uint32_t stop;
	struct serpens_gateway *g;
	struct rte_ring *in;          /* the gateway's ingress port reads this */
	struct rte_ring *out;         /* the gateway's egress port writes this */
	struct rte_mempool *mp;
	const uint8_t *frames;        /* nframes frames back to back, len[i] bytes each */
	const uint16_t *len;
	const uint32_t *off;          /* where frame i starts */
	uint32_t nframes;
	uint32_t stamp_off;           /* byte offset of the stamp (u64 arrival TSC, u32 seq) */
	struct serpens_pace pace;     /* control: serpens_pace_set */
	/* latency log (control): log, log_cap, then log_on */
	volatile uint32_t log_on;
	struct serpens_lat_rec *log;
	uint64_t log_cap;
	volatile uint64_t log_n;
	/* driver thread */
	uint32_t next_frame, seq;
	volatile uint64_t sent, received, sleeps;
};

/* Run until d->stop (rte_eal_remote_launch: arg is the driver); returns 0. */
int serpens_gwdrive_lcore_main(void *arg);

/* Cycles per VXLAN encapsulation of `frame` (len bytes) over `iters` passes of a burst:
 * the encapsulation alone, mbufs reset between passes. 0 if mbufs ran out. */
double serpens_encap_cycles(struct rte_mempool *mp, const uint8_t *frame, uint16_t len,
			    uint32_t iters);

#endif
