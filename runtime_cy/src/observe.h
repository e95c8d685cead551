/*
 * Capture and trace inside a pool process (pool_ctl.h "Capture and trace"). While the agent
 * has an observation armed, the runtime runs each burst through serpens_chain_run_observed(),
 * which calls these hooks around every step; while not, it pays one load and one predictable
 * branch per burst and the plain chainer has no hook at all (chainer.c builds both from one
 * body). Records are reserved during the burst and published once at its end.
 */
#ifndef SERPENS_OBSERVE_H
#define SERPENS_OBSERVE_H

#include <stdint.h>

#include "pool_ctl.h"
#include "serpens/nf.h"

struct serpens_observer {
	struct serpens_obs *o;
	uint32_t gen, flags, at, snaplen;
	int32_t step;
	uint64_t head;  /* reserved up to here; published by serpens_obs_end() */
	uint64_t limit; /* the consumer's tail + the ring's size */
	uint32_t traced; /* bit i: packet i of the burst is traced */
	uint32_t npending; /* at=in records waiting for the verdict of their step */
	uint32_t trace_id[SERPENS_BURST];
	struct serpens_obs_rec *pending[SERPENS_BURST];
	uint8_t pending_i[SERPENS_BURST];
	uint8_t why[SERPENS_BURST]; /* drops: serpens_drop_why, and the step that dropped it */
	int8_t by[SERPENS_BURST];
};

/* Settings of arming `gen` (loaded after it); picks the packets to trace. */
void serpens_obs_begin(struct serpens_observer *ob, struct serpens_obs *o, uint32_t gen,
		       const struct serpens_batch *b);
/* Around the call of step s over b->idx[0..count); after it, `mine` (bit i: packet i) names
 * the same packets, as the chainer gathered them (the NF could overwrite b->idx, b->count
 * and b->n), `cycles` is the call's TSC time (0 when not tracing) and bit i of `bad` marks
 * packets whose label the chainer refused. */
void serpens_obs_before(struct serpens_observer *ob, uint16_t s, const struct serpens_batch *b);
void serpens_obs_after(struct serpens_observer *ob, uint16_t s, const struct serpens_batch *b,
		       uint32_t mine, uint64_t cycles, uint32_t bad);
/* The burst's final verdicts for its n packets (b->data and len refreshed from the mbufs):
 * the SFC's own capture point, then publish every record of the burst. */
void serpens_obs_end(struct serpens_observer *ob, const struct serpens_batch *b, uint32_t n);

/* The router's drops (router.c): copies of packets it is about to free for reason `why`, into
 * the ring of the SFC's drop capture if one is armed. Its callers are the rare drop paths,
 * behind serpens_obs_dropping()'s NULL test. */
struct rte_mbuf;
void serpens_obs_router_drops(struct serpens_obs *o, struct rte_mbuf *const *m, uint32_t n,
			      uint8_t why);

static inline void serpens_obs_dropping(struct serpens_obs *o, struct rte_mbuf *const *m,
					uint32_t n, uint8_t why)
{
	if (__builtin_expect(o != NULL, 0) && n)
		serpens_obs_router_drops(o, m, n, why);
}

#endif
