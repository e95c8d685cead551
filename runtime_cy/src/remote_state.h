/*
 * Remote state: the state API served by a Redis server, as general FaaS platforms keep state
 * (Fission-style; paper §II-B3, §V-B). It exists for the state benchmark's baselines, so that
 * the very same NF binaries run with their state in Redis instead of in the state manager.
 *
 * Theory of operation: per batch, get_state_bulk costs one pipelined round trip (MGET), and
 * every write of the batch (put_state, and values the NF changed in place, found by comparing
 * with a pristine copy) is queued and sent ahead of the next round trip, so a batch costs one
 * round trip in the steady state. A single get_state that the batch has not fetched yet costs
 * its own round trip, as does state_fetch_add (INCRBY). Value pointers handed to the NF are valid
 * until the end of the batch. No consistency beyond Redis' own: this is the baseline's design.
 */
#ifndef SERPENS_REMOTE_STATE_H
#define SERPENS_REMOTE_STATE_H

#include <stdint.h>

struct serpens_remote_table {
	uint32_t flags;
	uint32_t key_size;
	uint32_t value_size;
	uint32_t prefix_len;
	char prefix[96]; /* "<nf>/<table>/" */
};

/* Connect this process to Redis at 127.0.0.1:port (once; later calls reuse the connection). */
int serpens_remote_connect(uint16_t port);
int serpens_remote_enabled(void);

int serpens_remote_table_init(struct serpens_remote_table *t, const char *nf, const char *name,
			      uint32_t flags, uint32_t key_size, uint32_t value_size);

void *serpens_remote_get(struct serpens_remote_table *t, const void *key);
uint32_t serpens_remote_get_bulk(struct serpens_remote_table *t, const void *const *keys,
				 uint32_t n, void **values);
int serpens_remote_put(struct serpens_remote_table *t, const void *key, const void *value,
		       void **stored);
int serpens_remote_delete(struct serpens_remote_table *t, const void *key);
int serpens_remote_fetch_add(struct serpens_remote_table *t, const void *key, uint64_t delta,
			     uint64_t *before);

/* End of a batch: queue the writes of values the NF changed, forget the batch's values. */
void serpens_remote_batch_end(void);
/* Send the queued writes now and wait for their replies (before sleeping, at stop). */
int serpens_remote_flush(void);

#endif
