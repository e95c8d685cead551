/*
 * State tables: fixed-size key/value hash tables in shared memory files (paper §III-B).
 *
 * Theory of operation. A table is one file `<state dir>/<namespace>/<name>.tbl` (tmpfs, or
 * hugetlbfs for 2 MiB pages) mapped MAP_SHARED by every instance of the NF and by the agent's
 * state manager; the file, not any process, owns the state, so it survives instances (scale to
 * zero), crashed pool processes and agent restarts. Nothing inside holds a pointer: slots are
 * found by index from the hash, so each process may map the file anywhere.
 *
 * Layout: a 4 KiB header, then a power-of-two array of slots {sig, key, value}, open
 * addressing with linear probing, load factor <= 3/4. `sig` publishes a slot: 0 empty, 1 being
 * written, 2 deleted, else the key's hash with the top bit set. A writer claims a slot by CAS,
 * fills key and value, then stores sig with release; readers load sig with acquire and never
 * lock. Per-flow entries have one writer (the instance that owns the flow); inserts into
 * global tables take the header's spinlock, so two instances never insert one key twice.
 * `count` is reserved before an insert, so a full table refuses (-ENOSPC) and never evicts.
 */
#ifndef SERPENS_STATE_TABLE_H
#define SERPENS_STATE_TABLE_H

#include <stddef.h>
#include <stdint.h>

#define SERPENS_TABLE_MAGIC 0x3142415453505253ull /* "SRPSTAB1" */
#define SERPENS_TABLE_NAME 64
#define SERPENS_TABLE_HDR 4096
#define SERPENS_TABLE_LOG 512 /* inserts remembered (a power of two) */

struct serpens_table_hdr {
	uint64_t magic;
	uint32_t version;
	volatile uint32_t ready;     /* set last by the creator */
	uint32_t flags;              /* SERPENS_PER_FLOW | ... as created */
	uint32_t key_size;
	uint32_t value_size;
	uint32_t capacity;           /* entries at most */
	uint32_t nslots;             /* power of two */
	uint32_t slot_size;          /* bytes: 8 + key (8-aligned) + value (8-aligned); from
				      * version 2, 33-63 of them padded to 64 */
	uint32_t key_off;            /* of the key inside a slot (8) */
	uint32_t value_off;          /* of the value inside a slot */
	uint64_t file_size;
	volatile uint64_t count;     /* live entries (reserved before insert) */
	volatile uint32_t insert_lock; /* global tables: serialises inserts */
	uint32_t pad;
	char name[SERPENS_TABLE_NAME];
	volatile uint64_t epoch;     /* release tables: bumped to ask instances for their shares */
	/* the agent's, for eventual tables exchanged between servers (agent/peer_state.py): this
	 * table's identity among them (0: not yet given), then, in a peer's `<table>@p<origin>`,
	 * the (epoch, sequence) of the last deltas applied; the runtime never touches them */
	uint8_t origin[16];
	uint64_t applied_epoch;
	uint64_t applied_seq;
	/* release tables, written by the runtime: the times an instance split a share off the
	 * pool (first use, or the next use after a trigger/timer gave its shares back) and the
	 * split moved nothing (the share stayed all zero: the node's pool is dry). Counted
	 * without reading the NF's values; the agent asks peers for a share when it grows. */
	volatile uint64_t dry;
	/* Inserts, and the slots of the last SERPENS_TABLE_LOG of them (inserted[seq % LOG]):
	 * a mover that read the table's keys once (agent/peer_moves.py Snapshot) finds the
	 * entries made since then without reading the whole table again. Hints only: a slot
	 * may hold another key by the time it is read. */
	volatile uint64_t inserts;
	volatile uint32_t inserted[SERPENS_TABLE_LOG];
};
_Static_assert(__builtin_offsetof(struct serpens_table_hdr, origin) == 144,
	       "agent/peer_state.py reads the origin at offset 144");
_Static_assert(__builtin_offsetof(struct serpens_table_hdr, dry) == 176,
	       "agent/peer_state.py reads the dry count at offset 176");
_Static_assert(sizeof(struct serpens_table_hdr) <= SERPENS_TABLE_HDR, "header fits its page");

/* A process's view of a table. */
struct serpens_table {
	struct serpens_table_hdr *hdr;
	uint8_t *slots;
	uint32_t mask;
	uint32_t slot_size;
	uint32_t key_size;
	uint32_t value_off;
	uint32_t flags;
	uint64_t map_size;
};

/* Open `<dir>/<ns>/<name>.tbl`, creating it (and the folders) when absent. flags == 0 opens
 * an existing table whatever its parameters (the agent's state manager). Returns 0 or -errno;
 * -EEXIST when the existing table has other flags or sizes, -ENOSPC when the filesystem has
 * no room for it (nothing is left behind: a table is made aside, its pages reserved, and
 * renamed in whole), -EIO for a file that is not a whole table (truncated, corrupt). */
int serpens_table_open(struct serpens_table *t, const char *dir, const char *ns,
		       const char *name, uint32_t flags, uint32_t key_size, uint32_t value_size,
		       uint32_t capacity, char *err, size_t errlen);
void serpens_table_close(struct serpens_table *t);

/* Check flags as the API defines them: 0 or SERPENS_EINVAL. */
int serpens_table_flags_valid(uint32_t flags);

void *serpens_table_get(const struct serpens_table *t, const void *key);
/* n <= SERPENS_BURST lookups with their memory misses overlapped: hash all and prefetch
 * their slots, then look each up where it was prefetched. get_bulk is hash_bulk,
 * prefetch_bulk, then probe_bulk; callers with hashes at hand (a packet's flow, hashed once
 * per SFC) or several tables' lookups (get_state_multi) use the stages. A key's hash depends
 * on its bytes and size only, not on the table. */
uint32_t serpens_table_get_bulk(const struct serpens_table *t, const void *const *keys,
				uint32_t n, void **values);
void serpens_table_hash_bulk(const struct serpens_table *t, const void *const *keys, uint32_t n,
			     uint32_t *hashes);
void serpens_table_prefetch_bulk(const struct serpens_table *t, const uint32_t *hashes,
				 uint32_t n);
uint32_t serpens_table_probe_bulk(const struct serpens_table *t, const void *const *keys,
				  uint32_t n, const uint32_t *hashes, void **values);
int serpens_table_put(struct serpens_table *t, const void *key, const void *value, void **stored);
int serpens_table_delete(struct serpens_table *t, const void *key);
/* The value for key, inserted as zeros first when absent (under the insert lock). */
int serpens_table_get_or_zero(struct serpens_table *t, const void *key, void **value);

/* The insert lock, for callers that update several entries as one step (release pools).
 * While holding it use the _locked variants only. */
void serpens_table_lock(struct serpens_table *t);
void serpens_table_unlock(struct serpens_table *t);
int serpens_table_get_or_zero_locked(struct serpens_table *t, const void *key, void **value);
/* Remove an entry whatever the table's flags (the runtime's own replicas). */
int serpens_table_remove(struct serpens_table *t, const void *key);
int serpens_table_fetch_add(struct serpens_table *t, const void *key, uint64_t delta,
			    uint64_t *before);

/* Iterate live entries: returns the next slot index >= *pos holding one (and its key/value),
 * or -1 at the end. For the state manager's readers (counters, snapshots). */
/* The inserts counter (hdr->inserts), and the key of the slot insert number `seq` went into
 * when that slot holds a live entry (1; 0: empty, being written, or forgotten): a hint, the
 * slot may hold another key by now (state_table.h's header). */
uint64_t serpens_table_inserts(const struct serpens_table *t);
/* Map every page of the table into this process now, writable (MADV_POPULATE_WRITE, data
 * untouched): a mover that will touch entries all over it takes no page fault per entry
 * while flows wait. 0 or -errno. */
int serpens_table_populate(const struct serpens_table *t);
int serpens_table_logged(const struct serpens_table *t, uint64_t seq, const void **key);
int64_t serpens_table_next(const struct serpens_table *t, uint64_t *pos, const void **key,
			   const void **value);

#endif
