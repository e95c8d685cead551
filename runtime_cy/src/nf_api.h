/*
 * The runtime's side of the NF context table (serpens/nf.h `struct serpens_api`).
 */
#ifndef SERPENS_NF_API_H
#define SERPENS_NF_API_H

#include <stddef.h>
#include <stdint.h>

#include "pool_ctl.h"
#include "state_table.h"
#include "serpens/nf.h"

/* Calibrate the TSC-based clock against CLOCK_MONOTONIC; call once per process. */
void serpens_clock_init(void);
uint64_t serpens_now_ns(void);
uint64_t serpens_cycles_to_ns(uint64_t cycles);

/* An NF's environment in the runtime, one per step: the bookkeeping behind its serpens_ctx
 * (found with container_of). */
struct serpens_nf_env {
	struct serpens_ctx ctx;
	const struct serpens_nf_ops *ops;
	struct serpens_nf_counters *counters; /* in the shared control block */
	const char *name;
	uint32_t keeps_hdrs; /* ops->hdrs has SERPENS_HDRS_KEPT: its packets' parsed headers stay */
	/* log rate limiter: token bucket in lines, refilled at 10/s up to 20 */
	uint64_t log_last_ns;
	uint32_t log_tokens;
	uint32_t log_suppressed;
	/* state tables this NF opened (create_table), closed after fini() */
	uint32_t in_init; /* tables without SERPENS_WRITE take writes only in init() */
	uint32_t ntables;
	struct serpens_table tables[SERPENS_MAX_TABLES];
	/* eventual tables: this instance's replica (hdr NULL otherwise) and merge schedule */
	struct serpens_table replicas[SERPENS_MAX_TABLES];
	uint64_t merge_period_ns[SERPENS_MAX_TABLES];
	uint64_t next_merge_ns;
	/* release tables: the pool epoch whose requests this instance has answered */
	uint64_t seen_epoch[SERPENS_MAX_TABLES];
	uint32_t nrelease;
	char table_names[SERPENS_MAX_TABLES][SERPENS_TABLE_NAME];
	/* why the last create_table failed (a full state filesystem...), for init()'s error */
	int32_t table_rc;
	char table_error[160];
	/* a state backend other than the local one keeps its own per-NF data here (NULL when
	 * the NF is set up; state_backend.h) */
	void *backend_priv;
};

static inline struct serpens_nf_env *serpens_env_of(struct serpens_ctx *ctx)
{
	return (struct serpens_nf_env *)((char *)ctx - offsetof(struct serpens_nf_env, ctx));
}

/* For state backends that keep some of an NF's tables elsewhere: the id of its table `name`,
 * a new id (no local table behind it) if it has none; SERPENS_ENOMEM when it has
 * SERPENS_MAX_TABLES. */
int serpens_nf_env_table_id(struct serpens_nf_env *s, const char *name);

#define SERPENS_MERGE_PERIOD_NS 100000000ull /* eventual tables merge every 100 ms */

/* Where state tables live (DataplaneConfig.state_dir); set once per process. */
void serpens_state_set_dir(const char *dir);
void serpens_nf_env_close_tables(struct serpens_nf_env *s);
/* Merge the replicas of eventual tables into the shared tables when due (or now, if force);
 * returns when the next merge is due (UINT64_MAX: no eventual table). */
uint64_t serpens_nf_env_merge(struct serpens_nf_env *s, uint64_t now_ns, int force);
/* Release tables: give every share back to its pool, or (answer_only) only those whose pool
 * asked for them since last time. Called per burst (answer_only), before sleep and at stop. */
void serpens_nf_env_release(struct serpens_nf_env *s, int answer_only);
/* Release pools between servers: fold the shares other servers returned (`<table>@in<k>`)
 * into the pools and, if `split`, split a share of every pool (or only of the pool `only`
 * names, "<namespace>/<table>"; NULL or "" for all) off into `<table>@out` (NF's ops). 0, or
 * a negative code with `err` set. */
#define SERPENS_RETURN_SLOTS 8
int serpens_nf_env_exchange(struct serpens_nf_env *s, int split, const char *only, char *err,
			    size_t errlen);

extern const struct serpens_api serpens_api_v1;

/* The batch the chainer runs now (NULL between batches): keys that are its packets' parsed
 * flows are hashed once per packet (nf.h serpens_batch.flow_hash). */
extern struct serpens_batch *serpens_nf_batch;
/* Sets serpens_nf_batch for a new batch (NULL: none). */
void serpens_nf_batch_begin(struct serpens_batch *b);

#endif
