/*
 * The chainer: runs a whole SFC inside one instance as function calls over a batch with a label
 * array (paper §III-C, Fig. 6). An SFC is compiled (serpens.runtime_cy.sfc) into a flat,
 * topologically ordered list of steps; a packet's label is the index of its next step, and
 * labels only move forward, so one pass over the steps per batch runs every branch.
 */
#ifndef SERPENS_CHAINER_H
#define SERPENS_CHAINER_H

#include "nf_api.h"
#include "observe.h"
#include "pool_ctl.h"

struct serpens_chain {
	uint16_t nsteps;
	uint16_t pad;
	uint32_t bad_labels; /* since the last serpens_chain_run: packets with an invalid label */
	uint64_t next_merge_ns; /* when eventual tables are next merged (UINT64_MAX: none) */
	uint32_t has_release;   /* some NF has a release table: answer its pool's requests */
	volatile int32_t *cur_step; /* the control block's: which NF runs, for crash reports */
	struct serpens_step step[SERPENS_MAX_STEPS];
	struct serpens_nf_env nf[SERPENS_MAX_STEPS];
};

/* Wire the steps of `cmd` to the NF ops found at each image's entry (already mapped or
 * loaded: `entries[image]` is its nf_entry), hand each NF the context table `api` (its state
 * backend's, state_backend.h), call every init() in order, and on a failure call fini() of
 * those already initialised. Returns 0 or a negative error with `err` filled. */
int serpens_chain_init(struct serpens_chain *c, const struct serpens_cmd *cmd,
		       const struct serpens_api *api,
		       const struct serpens_nf_ops *(*const entries[])(void),
		       struct serpens_pool_ctl *ctl, char *err, size_t errlen);

/* Run the SFC over b (b->n, data, len, pkt set; labels 0 = the first step, or DROP for
 * packets the runtime refused). Leaves every label OUT or DROP. */
void serpens_chain_run(struct serpens_chain *c, struct serpens_batch *b);
/* The same, calling the observer's hooks around each step (capture and trace: observe.h; ob
 * may be NULL) and, if timed, adding each NF call's TSC cycles and packets to its counters
 * (timed_cycles, timed_pkts: pool_ctl.h nf_cycles_on). */
void serpens_chain_run_observed(struct serpens_chain *c, struct serpens_batch *b,
				struct serpens_observer *ob, int timed);

void serpens_chain_fini(struct serpens_chain *c);

/* Merge the NFs' eventual-table replicas that are due (all, if force). */
void serpens_chain_merge(struct serpens_chain *c, uint64_t now_ns, int force);

/* Release tables: give shares back to their pools (all, or those asked for). */
void serpens_chain_release(struct serpens_chain *c, int answer_only);
/* Release pools between servers (nf_api.h serpens_nf_env_exchange) for every NF. */
int serpens_chain_exchange(struct serpens_chain *c, int split, const char *only, char *err,
			   size_t errlen);

#endif
