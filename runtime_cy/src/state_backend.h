/*
 * Where an instance's NF state lives: a state backend, chosen once when the instance starts
 * (serpens_cmd.state_backend), never per state operation.
 *
 * The engine has one backend, SERPENS_STATE_LOCAL: the state manager's tables in shared
 * memory (state_table.h, nf_api.c). The benchmarks' baselines register others from their own
 * sources (bench/native/: state in Redis, Fission- and SNF-style), built into the same
 * extension. A backend is the NF context table its NFs are handed (serpens_api_v1 with the
 * state entries replaced) plus hooks the runtime calls around batches: the local backend's
 * state calls are the engine's own functions, with no test of which backend runs.
 */
#ifndef SERPENS_STATE_BACKEND_H
#define SERPENS_STATE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "serpens/nf.h"

#define SERPENS_STATE_LOCAL 0
#define SERPENS_STATE_BACKENDS 4 /* ids 0..3 */
#define SERPENS_STATE_ARG 108    /* serpens_cmd.state_arg: e.g. a Unix socket's path */

struct serpens_state_backend {
	const char *name;
	const struct serpens_api *api; /* what the NFs call */
	/* When an instance starts (NULL: nothing to do). `arg` is the command's state_arg;
	 * `failed` (failed_len bytes, in the control block) is where the backend writes why it
	 * stopped serving state later on (a lost connection), for whoever reads the results.
	 * Returns 0, or a negative errno with err filled. */
	int (*attach)(const char *arg, char *failed, size_t failed_len, char *err, size_t errlen);
	/* After each batch (NULL: nothing). */
	void (*batch_end)(void);
	/* Make every write so far visible to others: before the instance sleeps, when it answers
	 * a merge request, after fini (NULL: nothing). */
	void (*flush)(void);
};

/* Make backend `id` available (at load time, before any instance starts); 0 or -EINVAL. */
int serpens_state_backend_register(uint32_t id, const struct serpens_state_backend *b);
/* The backend of id `id`, or NULL if this build has none. */
const struct serpens_state_backend *serpens_state_backend_get(uint32_t id);

#endif
