/* Capture and trace records (observe.h). Runs only for bursts of an armed observation. */
#include <string.h>

#include <rte_cycles.h>
#include <rte_mbuf.h>

#include "observe.h"

#define RING_MASK (SERPENS_OBS_RING - 1)

/* Room for a record of `size` bytes (a multiple of 8), never wrapping: a PAD record fills the
 * end of the ring first if needed. NULL (and one more lost) when the consumer is behind. */
static struct serpens_obs_rec *reserve(struct serpens_observer *ob, uint32_t size)
{
	uint32_t pos = ob->head & RING_MASK;
	uint32_t to_end = SERPENS_OBS_RING - pos;
	uint64_t pad = size > to_end ? to_end : 0;

	if (ob->head + pad + size > ob->limit) {
		ob->o->lost++;
		return NULL;
	}
	if (pad) {
		struct serpens_obs_rec *p = (struct serpens_obs_rec *)(ob->o->ring + pos);
		p->size = to_end;
		p->kind = SERPENS_REC_PAD;
		ob->head += pad;
		pos = 0;
	}
	ob->head += size;
	return (struct serpens_obs_rec *)(ob->o->ring + pos);
}

static struct serpens_obs_rec *record(struct serpens_observer *ob, uint16_t kind, int16_t step,
				      const struct serpens_batch *b, uint32_t i, uint32_t snap)
{
	uint32_t caplen = snap ? (b->len[i] < snap ? b->len[i] : snap) : 0;
	struct serpens_obs_rec *r = reserve(ob, (sizeof(*r) + caplen + 7) & ~7u);
	if (!r)
		return NULL;
	memset(r, 0, sizeof(*r));
	r->size = (sizeof(*r) + caplen + 7) & ~7u;
	r->kind = kind;
	r->step = step;
	r->gen = ob->gen;
	r->label = b->labels[i];
	r->at = ob->at;
	r->orig_len = b->len[i];
	r->caplen = caplen;
	r->tsc = rte_rdtsc();
	memcpy(r + 1, b->data[i], caplen);
	return r;
}

static void capture(struct serpens_observer *ob, int16_t step, const struct serpens_batch *b,
		    uint32_t i)
{
	struct serpens_obs_rec *r = record(ob, SERPENS_REC_PKT, step, b, i, ob->snaplen);
	if (!r)
		return;
	r->why = b->labels[i] == SERPENS_LABEL_DROP ? ob->why[i] : SERPENS_WHY_NONE;
	if (ob->at == SERPENS_AT_IN) { /* its verdict is known only after the step */
		ob->pending[ob->npending] = r;
		ob->pending_i[ob->npending++] = (uint8_t)i;
	} else if (ob->step < 0 && r->why) {
		r->step = ob->by[i]; /* the SFC's drops name the step that dropped them */
	}
}

static void settle_pending(struct serpens_observer *ob, const struct serpens_batch *b)
{
	for (uint32_t k = 0; k < ob->npending; k++) {
		uint32_t i = ob->pending_i[k];
		ob->pending[k]->label = b->labels[i];
		ob->pending[k]->why = b->labels[i] == SERPENS_LABEL_DROP ? ob->why[i] : 0;
	}
	ob->npending = 0;
}

void serpens_obs_begin(struct serpens_observer *ob, struct serpens_obs *o, uint32_t gen,
		       const struct serpens_batch *b)
{
	ob->o = o;
	ob->gen = gen;
	ob->flags = o->flags;
	ob->step = o->step;
	ob->at = o->at;
	ob->snaplen = o->snaplen;
	ob->head = o->head;
	ob->limit = __atomic_load_n(&o->tail, __ATOMIC_ACQUIRE) + SERPENS_OBS_RING;
	ob->traced = 0;
	ob->npending = 0;
	for (uint32_t i = 0; i < b->n; i++) { /* the runtime refuses chained mbufs up front */
		ob->why[i] = b->labels[i] == SERPENS_LABEL_DROP ? SERPENS_WHY_SEGMENTS : 0;
		ob->by[i] = -1;
	}
	if (ob->flags & SERPENS_OBS_TRACE) {
		if (o->traced_gen != gen) {
			o->traced_gen = gen;
			o->traced = 0;
		}
		for (uint32_t i = 0; i < b->n && o->traced < o->trace_max; i++) {
			struct serpens_obs_rec *r = record(ob, SERPENS_REC_TRACE_PKT, -1, b, i,
							   ob->snaplen);
			if (!r)
				break;
			r->pkt = ob->trace_id[i] = o->traced++;
			ob->traced |= 1u << i;
		}
	}
	if ((ob->flags & SERPENS_OBS_CAPTURE) && ob->step < 0 && ob->at == SERPENS_AT_IN)
		for (uint32_t i = 0; i < b->n; i++)
			capture(ob, -1, b, i);
}

void serpens_obs_before(struct serpens_observer *ob, uint16_t s, const struct serpens_batch *b)
{
	if ((ob->flags & SERPENS_OBS_CAPTURE) && ob->step == s && ob->at == SERPENS_AT_IN)
		for (uint32_t k = 0; k < b->count; k++)
			capture(ob, s, b, b->idx[k]);
}

void serpens_obs_after(struct serpens_observer *ob, uint16_t s, const struct serpens_batch *b,
		       uint32_t mine, uint64_t cycles, uint32_t bad)
{
	for (uint32_t m = mine; m; m &= m - 1) {
		uint32_t i = (uint32_t)__builtin_ctz(m);
		if (b->labels[i] == SERPENS_LABEL_DROP) {
			ob->why[i] = bad >> i & 1 ? SERPENS_WHY_BAD_LABEL : SERPENS_WHY_VERDICT;
			ob->by[i] = (int8_t)s;
		}
	}
	if (ob->step == s && (ob->flags & SERPENS_OBS_CAPTURE)) {
		if (ob->at == SERPENS_AT_IN) {
			settle_pending(ob, b);
		} else {
			uint16_t want_drop = ob->at == SERPENS_AT_DROP;
			for (uint32_t m = mine; m; m &= m - 1) {
				uint32_t i = (uint32_t)__builtin_ctz(m);
				if ((b->labels[i] == SERPENS_LABEL_DROP) == want_drop)
					capture(ob, s, b, i);
			}
		}
	}
	for (uint32_t m = mine & ob->traced; m; m &= m - 1) {
		uint32_t i = (uint32_t)__builtin_ctz(m);
		struct serpens_obs_rec *r = record(ob, SERPENS_REC_TRACE_STEP, s, b, i, 0);
		if (!r)
			continue;
		r->pkt = ob->trace_id[i];
		r->why = b->labels[i] == SERPENS_LABEL_DROP ? ob->why[i] : 0;
		r->tsc = cycles;
		r->batch = (uint32_t)__builtin_popcount(mine);
	}
}

void serpens_obs_end(struct serpens_observer *ob, const struct serpens_batch *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (b->labels[i] == SERPENS_LABEL_DROP && ob->why[i] == SERPENS_WHY_NONE)
			ob->why[i] = SERPENS_WHY_BAD_MBUF; /* the runtime's check after the chain */
	if ((ob->flags & SERPENS_OBS_CAPTURE) && ob->step < 0) {
		if (ob->at == SERPENS_AT_IN) {
			settle_pending(ob, b);
		} else {
			uint16_t want_drop = ob->at == SERPENS_AT_DROP;
			for (uint32_t i = 0; i < n; i++)
				if ((b->labels[i] == SERPENS_LABEL_DROP) == want_drop)
					capture(ob, -1, b, i);
		}
	}
	settle_pending(ob, b); /* (a step that saw none of its packets again: nothing left) */
	__atomic_store_n(&ob->o->head, ob->head, __ATOMIC_RELEASE);
}

void serpens_obs_router_drops(struct serpens_obs *o, struct rte_mbuf *const *m, uint32_t n,
			      uint8_t why)
{
	uint32_t gen = __atomic_load_n(&o->on, __ATOMIC_ACQUIRE);
	if (!gen || !(o->flags & SERPENS_OBS_CAPTURE) || o->at != SERPENS_AT_DROP)
		return;
	struct serpens_observer ob = {.o = o, .gen = gen, .at = o->at, .snaplen = o->snaplen,
				      .step = -1, .head = o->head,
				      .limit = __atomic_load_n(&o->tail, __ATOMIC_ACQUIRE) +
					       SERPENS_OBS_RING};
	struct serpens_batch b; /* one packet at a time through record() */
	b.labels[0] = SERPENS_LABEL_DROP;
	for (uint32_t k = 0; k < n; k++) {
		b.data[0] = rte_pktmbuf_mtod(m[k], uint8_t *);
		b.len[0] = rte_pktmbuf_data_len(m[k]);
		struct serpens_obs_rec *r = record(&ob, SERPENS_REC_PKT, -1, &b, 0, ob.snaplen);
		if (r)
			r->why = why;
	}
	__atomic_store_n(&o->head, ob.head, __ATOMIC_RELEASE);
}
