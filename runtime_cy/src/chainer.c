/*
 * Chainer (see chainer.h). Per batch and step: gather the packets labelled for the step into
 * b->idx, preset their label to the step's default output, call the NF once, then check the
 * labels it set. Cost: a few vector compares of the 32 labels per step (label_mask), a pass
 * over the step's packets, and the NF itself. The packets checked after the NF are those
 * gathered before it (a mask of our own, not b->idx, which the NF could overwrite).
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <rte_cycles.h>

#include "chainer.h"
#include "pkt.h"

static int check_steps(const struct serpens_cmd *cmd, char *err, size_t errlen)
{
	if (cmd->nsteps > SERPENS_MAX_STEPS) {
		snprintf(err, errlen, "an SFC has at most %d steps, got %u", SERPENS_MAX_STEPS, cmd->nsteps);
		return -22;
	}
	for (uint16_t s = 0; s < cmd->nsteps; s++) {
		const struct serpens_step *st = &cmd->steps[s];
		if (st->nports == 0 || st->nports > SERPENS_MAX_PORTS) {
			snprintf(err, errlen, "step %u: 1..%d ports, got %u", s, SERPENS_MAX_PORTS, st->nports);
			return -22;
		}
		for (uint16_t p = 0; p < st->nports; p++) {
			serpens_label_t l = st->next[p];
			if (l != SERPENS_LABEL_OUT && l != SERPENS_LABEL_DROP && (l <= s || l >= cmd->nsteps)) {
				snprintf(err, errlen, "step %u port %u: label %u does not lead forward", s, p, l);
				return -22;
			}
		}
		if (st->kind == SERPENS_STEP_NF && st->image >= cmd->nimages) {
			snprintf(err, errlen, "step %u: image %u of %u", s, st->image, cmd->nimages);
			return -22;
		}
		if (st->kind != SERPENS_STEP_NF && st->kind != SERPENS_STEP_HASH) {
			snprintf(err, errlen, "step %u: unknown kind %u", s, st->kind);
			return -22;
		}
		if ((uint64_t)st->config_off + st->config_len > cmd->config_len) {
			snprintf(err, errlen, "step %u: configuration out of bounds", s);
			return -22;
		}
	}
	return 0;
}

int serpens_chain_init(struct serpens_chain *c, const struct serpens_cmd *cmd,
		       const struct serpens_api *api,
		       const struct serpens_nf_ops *(*const entries[])(void),
		       struct serpens_pool_ctl *ctl, char *err, size_t errlen)
{
	int rc = check_steps(cmd, err, errlen);
	if (rc)
		return rc;
	/* Clear only what this SFC uses: an NF env is ~2.5 KB and starts are timed in microseconds. */
	memset(c, 0, offsetof(struct serpens_chain, step));
	memset(c->nf, 0, sizeof(c->nf[0]) * cmd->nsteps);
	c->nsteps = cmd->nsteps;
	c->cur_step = &ctl->cur_step;
	memcpy(c->step, cmd->steps, sizeof(cmd->steps[0]) * cmd->nsteps);

	for (uint16_t s = 0; s < c->nsteps; s++) {
		struct serpens_step *st = &c->step[s];
		struct serpens_nf_env *nf = &c->nf[s];
		st->name[sizeof(st->name) - 1] = 0;
		memset(&ctl->nf[s], 0, sizeof(ctl->nf[s]));
		nf->counters = &ctl->nf[s];
		nf->name = st->name;
		nf->log_tokens = 20;
		nf->ctx.api = api;
		nf->ctx.counters = ctl->nf[s].values;
		nf->ctx.instance_id = cmd->instance_id;
		nf->ctx.step = s;
		nf->ctx.nports = st->nports;
		memcpy(nf->ctx.next, st->next, sizeof(st->next));
		if (st->kind != SERPENS_STEP_NF)
			continue;

		const struct serpens_nf_ops *ops = entries[st->image]();
		if (!ops || ops->abi_major != SERPENS_ABI_MAJOR || !ops->process ||
		    ops->size < offsetof(struct serpens_nf_ops, fini) + sizeof(ops->fini)) {
			snprintf(err, errlen, "step %u (%s): nf_entry() gave no ops of ABI %d "
				 "(built for %u.%u; rebuild it against this serpens/nf.h)", s,
				 st->name, SERPENS_ABI_MAJOR, ops ? ops->abi_major : 0,
				 ops ? ops->abi_minor : 0);
			rc = -71; /* EPROTO */
		} else if (ops->abi_minor > SERPENS_ABI_MINOR) {
			/* built against a newer header: it may read batch fields this runtime
			 * does not have */
			snprintf(err, errlen, "step %u (%s): built for NF ABI %u.%u, this runtime "
				 "has %d.%d", s, st->name, ops->abi_major, ops->abi_minor,
				 SERPENS_ABI_MAJOR, SERPENS_ABI_MINOR);
			rc = -71;
		} else if (ops->init) {
			nf->ops = ops; /* split/merge may run inside init */
			nf->in_init = 1;
			*c->cur_step = s;
			rc = ops->init(&nf->ctx, cmd->config + st->config_off, st->config_len);
			*c->cur_step = -1;
			nf->in_init = 0;
			if (rc) {
				/* A failed create_table is why init() failed (whatever code the NF
				 * chose to return): say so, with its errno (-ENOSPC: state full). */
				snprintf(err, errlen, "step %u (%s): init() returned %d%s%s", s, st->name,
					 rc, nf->table_error[0] ? ": " : "", nf->table_error);
				rc = nf->table_rc ? nf->table_rc : rc < 0 ? rc : -rc;
			}
		}
		if (rc) {
			nf->ops = NULL;
			serpens_nf_env_close_tables(nf);
			c->nsteps = s; /* fini only what was initialised */
			serpens_chain_fini(c);
			return rc;
		}
		nf->ops = ops;
		nf->keeps_hdrs = ops->abi_minor >= 3 &&
				 ops->size >= offsetof(struct serpens_nf_ops, hdrs) + sizeof(ops->hdrs) &&
				 (ops->hdrs & SERPENS_HDRS_KEPT);
		c->has_release |= nf->nrelease != 0;
		nf->counters->ops =
			(ops->size >= offsetof(struct serpens_nf_ops, merge) + sizeof(void *) &&
			 ops->merge ? SERPENS_NF_HAS_MERGE : 0) |
			(ops->size >= offsetof(struct serpens_nf_ops, split) + sizeof(void *) &&
			 ops->split ? SERPENS_NF_HAS_SPLIT : 0);
	}
	return 0;
}

static void select_by_hash(struct serpens_chain *c, uint16_t s, struct serpens_batch *b)
{
	const struct serpens_ctx *ctx = &c->nf[s].ctx;
	for (uint32_t k = 0; k < b->count; k++) {
		uint32_t i = b->idx[k];
		uint32_t r = b->parse[i], port = 0;
		if (r == SERPENS_PARSE_STALE) { /* parsed once for the whole SFC (nf.h) */
			b->parse[i] = (uint8_t)(r = (uint32_t)serpens_parse(b->data[i], b->len[i],
									     &b->hdrs[i]));
			b->flow_hashed &= ~(1u << i);
		}
		if (r == SERPENS_PARSE_OK || r == SERPENS_PARSE_FRAGMENT) {
			/* Fragments carry no ports: hash addresses only, for every packet of the flow
			 * to agree whatever its fragmentation. */
			struct serpens_flow key = b->hdrs[i].flow;
			key.sport = key.dport = 0;
			port = serpens_hash_crc(&key, sizeof(key), 0) % ctx->nports;
		}
		b->labels[i] = ctx->next[port];
	}
}

/* Labels tested 8 at a time (a burst's 32 labels are four 16-byte loads), into a mask with
 * bit i for label i; the caller masks off labels past the batch's n. */
_Static_assert(SERPENS_BURST == 32, "the label masks are 32 bits");

static inline __attribute__((always_inline)) uint32_t
label_mask(const serpens_label_t *labels, __m128i (*test)(__m128i, __m128i), __m128i arg)
{
	uint32_t mask = 0;
	for (uint32_t q = 0; q < SERPENS_BURST / 16; q++) {
		__m128i lo = test(_mm_loadu_si128((const __m128i *)(labels + 16 * q)), arg);
		__m128i hi = test(_mm_loadu_si128((const __m128i *)(labels + 16 * q + 8)), arg);
		mask |= (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(lo, hi)) << (16 * q);
	}
	return mask;
}

static inline __m128i equal_to(__m128i v, __m128i x) { return _mm_cmpeq_epi16(v, x); }

/* not_forward's argument for step s: s + 1 in the low half-words, nsteps - 1 in the next. */
static inline __m128i forward_of(uint16_t s, uint16_t nsteps)
{
	return _mm_set_epi16(0, 0, 0, 0, (short)(nsteps - 1), (short)(nsteps - 1), (short)(s + 1),
			     (short)(s + 1));
}

/* Labels that do not lead forward from a step: neither OUT nor DROP (the top two values) nor
 * a later step (in [s + 1, nsteps - 1], unsigned: for the last step that range is empty). */
static inline __m128i not_forward(__m128i v, __m128i arg)
{
	__m128i first = _mm_shuffle_epi32(arg, 0x00), last = _mm_shuffle_epi32(arg, 0x55);
	__m128i later = _mm_and_si128(_mm_cmpeq_epi16(_mm_max_epu16(v, first), v),
				      _mm_cmpeq_epi16(_mm_min_epu16(v, last), v));
	__m128i leaves = _mm_cmpeq_epi16(
		_mm_max_epu16(v, _mm_set1_epi16((short)SERPENS_LABEL_OUT)), v);
	return _mm_andnot_si128(_mm_or_si128(later, leaves), _mm_set1_epi16(-1));
}

/* One body, two functions: with ob == NULL and timed == 0 (constants) the compiler drops every
 * hook, so the chainer of unobserved bursts is exactly the one without capture, trace or
 * per-NF cycle counts. */
static inline __attribute__((always_inline)) void
chain_run(struct serpens_chain *c, struct serpens_batch *b, struct serpens_observer *ob,
	  int timed)
{
	if (c->nsteps == 0) { /* the empty SFC forwards everything */
		for (uint32_t i = 0; i < b->n; i++)
			if (b->labels[i] == 0)
				b->labels[i] = SERPENS_LABEL_OUT;
		return;
	}
	uint32_t in_batch = b->n >= 32 ? ~0u : (1u << b->n) - 1;
	for (uint16_t s = 0; s < c->nsteps; s++) {
		struct serpens_nf_env *nf = &c->nf[s];
		serpens_label_t dflt = nf->ctx.next[0];
		uint32_t mine = label_mask(b->labels, equal_to, _mm_set1_epi16((short)s)) & in_batch;
		uint32_t count = 0;

		if (mine == 0)
			continue;
		if (mine == in_batch) {
			/* every packet of the batch (a chain where nothing was dropped yet): idx is
			 * 0..n-1, every label the default */
			static const uint8_t identity[SERPENS_BURST] = {
				0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
				20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
			memcpy(b->idx, identity, sizeof(identity));
			__m128i d = _mm_set1_epi16((short)dflt);
			for (uint32_t q = 0; q < SERPENS_BURST / 8; q++)
				_mm_storeu_si128((__m128i *)(b->labels + 8 * q), d);
			count = (uint32_t)__builtin_popcount(mine); /* (not b->n: NFs may write it) */
		} else {
			for (uint32_t m = mine; m; m &= m - 1) {
				uint32_t i = (uint32_t)__builtin_ctz(m);
				b->idx[count++] = (uint8_t)i;
				b->labels[i] = dflt;
			}
		}
		b->count = count;
		if (ob)
			serpens_obs_before(ob, s, b);
		if (c->step[s].kind == SERPENS_STEP_HASH) {
			select_by_hash(c, s, b);
			if (ob)
				serpens_obs_after(ob, s, b, mine, 0, 0);
			continue;
		}
		nf->counters->in_pkts += count;
		uint64_t t0 = timed || (ob && ob->traced) ? rte_rdtsc() : 0;
		*c->cur_step = s;
		nf->ops->process(&nf->ctx, b);
		*c->cur_step = -1;
		uint64_t cycles = t0 ? rte_rdtsc() - t0 : 0;
		uint32_t bad = 0;
		if (timed) {
			nf->counters->timed_cycles += cycles;
			nf->counters->timed_pkts += count;
		}
		if (!nf->keeps_hdrs) /* it may have rewritten headers without saying so (nf.h) */
			for (uint32_t m = mine; m; m &= m - 1)
				b->parse[__builtin_ctz(m)] = SERPENS_PARSE_STALE;

		/* An NF may only send a packet forward, out, or to the drop. */
		uint32_t wrong = label_mask(b->labels, not_forward,
					    forward_of(s, c->nsteps)) & mine;
		for (uint32_t m = wrong; m; m &= m - 1) {
			uint32_t i = (uint32_t)__builtin_ctz(m);
			b->labels[i] = SERPENS_LABEL_DROP;
			c->bad_labels++;
			if (ob)
				bad |= 1u << i;
		}
		nf->counters->dropped += (uint64_t)__builtin_popcount(
			label_mask(b->labels, equal_to, _mm_set1_epi16((short)SERPENS_LABEL_DROP)) &
			mine);
		if (ob)
			serpens_obs_after(ob, s, b, mine, cycles, bad);
	}
}

void serpens_chain_run(struct serpens_chain *c, struct serpens_batch *b)
{
	chain_run(c, b, NULL, 0);
}

void serpens_chain_run_observed(struct serpens_chain *c, struct serpens_batch *b,
				struct serpens_observer *ob, int timed)
{
	chain_run(c, b, ob, timed);
}

void serpens_chain_fini(struct serpens_chain *c)
{
	for (uint16_t s = c->nsteps; s-- > 0;) {
		const struct serpens_nf_ops *ops = c->nf[s].ops;
		*c->cur_step = s; /* fini, and the merges closing the tables run NF code */
		if (ops && ops->fini)
			ops->fini(&c->nf[s].ctx);
		serpens_nf_env_close_tables(&c->nf[s]);
		*c->cur_step = -1;
		c->nf[s].ops = NULL;
	}
	c->nsteps = 0;
}

void serpens_chain_merge(struct serpens_chain *c, uint64_t now_ns, int force)
{
	uint64_t next = UINT64_MAX;
	for (uint16_t s = 0; s < c->nsteps; s++) {
		if (c->step[s].kind != SERPENS_STEP_NF)
			continue;
		*c->cur_step = s;
		uint64_t due = serpens_nf_env_merge(&c->nf[s], now_ns, force);
		*c->cur_step = -1;
		next = due < next ? due : next;
	}
	c->next_merge_ns = next;
}

void serpens_chain_release(struct serpens_chain *c, int answer_only)
{
	for (uint16_t s = 0; s < c->nsteps; s++)
		if (c->nf[s].nrelease) {
			*c->cur_step = s;
			serpens_nf_env_release(&c->nf[s], answer_only);
			*c->cur_step = -1;
		}
}

int serpens_chain_exchange(struct serpens_chain *c, int split, const char *only, char *err,
			   size_t errlen)
{
	int rc = 0;
	for (uint16_t s = 0; s < c->nsteps && rc == 0; s++)
		if (c->nf[s].nrelease) {
			*c->cur_step = s;
			rc = serpens_nf_env_exchange(&c->nf[s], split, only, err, errlen);
			*c->cur_step = -1;
		}
	return rc;
}
